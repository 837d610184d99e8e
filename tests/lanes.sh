#!/usr/bin/env bash
# `make test-slow`: the vllm tier alone, then the integration and e2e tiers in two lanes side by side. Each tier is
# its own pytest session (its own local Ray). One tier alone keeps this 2-core machine about three quarters busy
# (most of a slow test is processes starting and importing one at a time), so a second lane runs in what the first
# leaves idle. The vllm tier runs alone: a vLLM CPU engine pins its worker to one core and its engine process polls
# another, and beside another lane its modules took 2.4 times as long (test_serve_vllm_cpu 535 s against 222).
#   alone (this console):                 vllm
#   then lane 1 (this console):           integration, then the e2e test that needs no finished default run
#                                         (docs/bring-your-own-pairs.md's path), so the lanes end together
#   beside it, lane 2 (its own log file): the rest of e2e, printed here once both lanes end; `tail -f` it to watch
# Every tier runs even when another fails; the exit status is 1 when any failed. LANES=1 runs the three tiers one
# after the other in this console instead.
# Usage: tests/lanes.sh LANE2_LOG PYTEST_COMMAND...
set -u
lane2_log=$1
shift
pytest=("$@")

# the e2e tests lane 1 takes (pytest -k): measured in the CI of 2026-12-07, lane 2 (e2e) took 2,099 s and lane 1
# (integration) 1,866; this one took 198 of lane 2's and builds its own models
LANE1_E2E="bring_your_own_pairs"

# run_lane TIER...: a pytest session a tier, one after the other; a tier is a marker expression, or
# "MARKERS::KEYWORDS" for the tests of those markers whose names match the keywords (pytest -k)
run_lane() {
  local failed=0
  for tier in "$@"; do
    local markers=${tier%%::*} select=()
    [ "$markers" != "$tier" ] && select=(-k "${tier#*::}")
    echo "== pytest -m \"$markers\" ${select[*]}"
    "${pytest[@]}" -m "$markers" "${select[@]}" --durations=10 || failed=1
  done
  return "$failed"
}

if [ "${LANES:-2}" = 1 ]; then
  run_lane "vllm" "integration and not vllm and not e2e" "e2e and not vllm"
  exit
fi
run_lane "vllm"
vllm_status=$?
# Side by side, each process computes on one thread. torch's OpenMP threads spin while they wait for each other,
# and a process of two threads beside another on two cores spends most of its time spinning: a tiny-model forward
# pass took 1.78 s in each of two processes at once against 0.28 s alone, and 0.38-0.49 s with one thread each.
export OMP_NUM_THREADS=1
echo "== lane 2 (e2e) runs beside this one; its output: $lane2_log"
set -m  # lane 2 in a process group of its own, so that Ctrl-C here can stop it too (a background job ignores it)
run_lane "e2e and not vllm::not ($LANE1_E2E)" > "$lane2_log" 2>&1 &
lane2=$!
set +m
trap 'kill -TERM -- "-$lane2" 2>/dev/null; exit 130' INT TERM
run_lane "integration and not vllm and not e2e" "e2e and not vllm::$LANE1_E2E"
lane1_status=$?
wait "$lane2"
lane2_status=$?
echo "== lane 2 (e2e), from $lane2_log"
cat "$lane2_log"
[ "$vllm_status" -eq 0 ] && [ "$lane1_status" -eq 0 ] && [ "$lane2_status" -eq 0 ]
