"""bench/gpu.py in its CPU mode (`--device cpu --size tiny`), so the GPU script cannot rot: the same code that
measures the hf engines and LoRA-DPO on a GPU, on the tiny model, on the session's Ray (about a minute). Its
figures here say only that every path runs; the GPU's are in docs/benchmarks.md."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from conftest import REPO

from politune.plan import measured_mfus

pytestmark = pytest.mark.integration


def test_the_gpu_bench_runs_on_cpu_and_leaves_the_plans_mfus_assumed(ray_local, tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", REPO / "bench" / "gpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "gpu.json"
    figures = bench.main(["--device", "cpu", "--size", "tiny", "--json", str(out), "--sweep", "--profile", "--serve",
                          "--serve-concurrency", "1", "4"])
    assert json.loads(out.read_text()) == json.loads(json.dumps(figures))
    assert figures["dtype"] == "float32" and figures["ceiling_tflops"] > 0 and figures["parameters"] > 2e5
    annotate = figures["annotate"]
    assert annotate["posts"] == bench.WORK["tiny"]["posts"] and annotate["posts_per_s"] > 0
    assert 0 < annotate["share_of_ceiling"] < 1 and annotate["prompt_tokens"] > 3 * annotate["posts"]
    assert figures["synthesize"]["pairs"] == bench.WORK["tiny"]["pairs_posts"]
    served = figures["serve"]["rows"]  # every kind x model set x concurrency, every request answered
    assert {(r["kind"], r["set"], r["concurrency"]) for r in served} == {
        (k, m, c) for k in ("score", "generate") for m in ("one adapter", "mix of three") for c in (1, 4)}
    assert all(r["ok"] == r["requests"] and not r["failed"] and r["tokens_per_s"] > 0 for r in served)
    plain, ray = figures["train"]["plain_trl"], figures["train"]["ray_train"]
    for run in (plain, ray):
        assert run["steps"] == bench.WORK["tiny"]["steps"] and run["tokens"] > 0 and 0 < run["share_of_ceiling"] < 1
        assert len(run["losses"]) == run["steps"]
    assert figures["train"]["ray_over_plain"] == pytest.approx(ray["tokens_per_s"] / plain["tokens_per_s"])
    levers = figures["train"]["levers"]
    assert [r["lever"] for r in levers] == [name for name, _, _ in bench.LEVERS]
    for row, (_, multiple, _) in zip(levers, bench.LEVERS, strict=True):
        assert row["per_device_batch_size"] * row["gradient_accumulation_steps"] == 64  # the recipe's effective batch
        assert row["per_device_batch_size"] == 8 * multiple and row["steps"] == 1 and row["share_of_ceiling"] > 0
        assert (row["attn_implementation"], row["liger_kernels"]) == ("sdpa", False)  # no GPU kernels on a CPU
    profile = plain["profile"]
    assert 0 < profile["matmul_share"] < 1 and "aten::mm" in [k["name"] for k in profile["top"]]
    assert sum(k["share"] for k in profile["top"]) <= 1 + 1e-9
    assert measured_mfus(out).source("train") == "assumed"  # a CPU run is no GPU's measurement
