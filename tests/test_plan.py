"""`politune plan`: the estimate follows from its stated rules, agrees with docs/plan.md's worked estimate, scales
with the corpus, and gives way to a previous run's measured throughput."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO
from typer.testing import CliRunner

from politune.cli import app
from politune.config import build_config, resolve_config
from politune.plan import GPUS, MFU_DECODE, MFU_PREFILL, measured_mfus, model_params, plan_study

runner = CliRunner()
S3_PRESET_SETS = ["storage_root=/nonexistent/runs"]  # the presets' S3 root is not reachable from here


def gpu_preset(name: str = "llama3-8b"):
    return resolve_config(None, name, S3_PRESET_SETS)


def by_stage(plans) -> dict:
    return {p.stage: p for p in plans}


def test_gpu_hours_follow_from_tokens_flops_and_mfu() -> None:
    plans, notes = plan_study(gpu_preset(), 1_000_000, GPUS["h100"])
    assert notes == []
    a = by_stage(plans)["annotate"]
    peak = 989e12
    expected = 2 * 70.6e9 * (a.tokens_in / (peak * MFU_PREFILL) + a.tokens_out / (peak * MFU_DECODE)) / 3600
    assert a.gpu_hours == pytest.approx(expected)
    assert a.tokens_out == 3_000_000  # one answer token a scale a post
    assert a.gpus == 8 and a.wall_hours == pytest.approx(a.gpu_hours / 8)
    t = by_stage(plans)["train"]
    assert t.gpu_hours == pytest.approx(6 * 8.03e9 * t.tokens_in / (peak * MFU_PREFILL) / 3600)


def test_the_plan_scales_with_the_corpus_and_the_gpu() -> None:
    small = by_stage(plan_study(gpu_preset(), 100_000, GPUS["h100"])[0])
    large = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["h100"])[0])
    slower = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["a100"])[0])
    for stage in ("annotate", "synthesize", "train"):
        assert large[stage].gpu_hours == pytest.approx(10 * small[stage].gpu_hours)
        assert slower[stage].gpu_hours == pytest.approx(large[stage].gpu_hours * 989 / 312)


def test_mixtures_and_adapter_scales_are_more_adapters_to_train_and_models_to_ask() -> None:
    plain = by_stage(plan_study(gpu_preset(), 100_000, GPUS["h100"])[0])
    more = by_stage(plan_study(resolve_config(None, "llama3-8b", [
        *S3_PRESET_SETS, "train.mixtures=[{name: r50l50, left: 0.5, right: 0.5}]",
        "evaluate.adapter_scales=[0.5, 1.0, 1.5]"]), 100_000, GPUS["h100"])[0])
    assert more["train"].tokens_in == pytest.approx(1.5 * plain["train"].tokens_in)  # 3 adapters, not 2
    assert "3 adapter(s)" in more["train"].note
    # the preset evaluates checkpoints too (about 4 an adapter): base + 3 adapters x (itself, 4 checkpoints, 2
    # copies; 1.0 is the adapter) = 22 models, against base + 2 x 5 = 11
    assert more["evaluate"].tokens_in == pytest.approx(22 / 11 * plain["evaluate"].tokens_in)


def test_the_capability_pass_is_counted_a_request_a_document_and_choice_a_model() -> None:
    """politune_sides: 64 propositions x 2 choices, 32 with limit 16; 11 models on the 8B preset."""
    plain = by_stage(plan_study(gpu_preset(), 100_000, GPUS["h100"])[0])
    asked = by_stage(plan_study(resolve_config(None, "llama3-8b", [
        *S3_PRESET_SETS, "evaluate.capability.tasks=[politune_sides]", "evaluate.capability.limit=16"]),
        100_000, GPUS["h100"])[0])
    assert "capability: 352 log-likelihood requests (32 a model, politune_sides)" in asked["evaluate"].note
    assert asked["evaluate"].tokens_in > plain["evaluate"].tokens_in
    unknown = by_stage(plan_study(resolve_config(None, "llama3-8b", [
        *S3_PRESET_SETS, "evaluate.capability.tasks=[no_such_task]"]), 100_000, GPUS["h100"])[0])
    assert "capability pass not counted: evaluate.capability.tasks: no_such_task not known" in unknown["evaluate"].note


def readme_worked_estimate() -> dict[str, tuple[float, str]]:
    """The rows of the `politune plan` example in docs/plan.md: stage -> (GPU-hours, wall)."""
    readme = (REPO / "docs" / "plan.md").read_text()
    block = readme[readme.index("$ politune plan --preset llama3-8b --posts 1000000"):]
    block = block[:block.index("```")]
    rows = re.findall(r"^│ (\w+) +│[^│]*│[^│]*│[^│]*│[^│]*│ +([\d.,]+) │ +([^│]+?) │", block, re.M)
    return {stage: (float(hours.replace(",", "")), wall) for stage, hours, wall in rows}


def test_the_readme_example_is_what_the_command_prints() -> None:
    shown = readme_worked_estimate()
    assert set(shown) == {"annotate", "synthesize", "train", "evaluate", "all"}
    result = runner.invoke(app, ["plan", "--preset", "llama3-8b", "--posts", "1000000", "--gpu", "h100",
                                 "--price", "2.5", "--set", S3_PRESET_SETS[0]], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    printed = {m[0]: (float(m[1].replace(",", "")), m[2]) for m in re.findall(
        r"^│ (\w+) +│[^│]*│[^│]*│[^│]*│[^│]*│ +([\d.,]+) │ +([^│]+?) │", result.output, re.M)}
    assert printed == shown
    # and the worked estimate by hand in docs/plan.md: 420 tokens a post, 37.0 + 0.8 GPU-hours, 4.7 h on 8 GPUs
    annotate = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["h100"])[0])["annotate"]
    assert annotate.tokens_in / 1e6 == pytest.approx(420, abs=5)
    assert shown["annotate"] == (37.8, "4.7 h")


def test_a_measured_throughput_replaces_the_estimate(tmp_path: Path) -> None:
    cfg = build_config({"base": "llama3-8b", "storage_root": str(tmp_path / "runs")})
    (tmp_path / "runs" / "llama3-8b").mkdir(parents=True)
    stages = {"annotate": {"started_at": "2026-11-30T10:00:00+00:00", "figures": {"documents_per_s": 250.0},
                           "models": {cfg.annotate.model: "commit:abc"}},
              "synthesize": {"started_at": "2026-11-30T11:00:00+00:00", "figures": {"pairs_per_s": 5.0},
                             "models": {"some/other-model": ""}}}  # another model: not this config's figure
    (tmp_path / "runs" / "llama3-8b" / "manifest.json").write_text(json.dumps({"artifacts": {}, "stages": stages}))
    plans = by_stage(plan_study(cfg, 1_000_000, GPUS["h100"])[0])
    a = plans["annotate"]
    assert a.basis == "measured: 250.0 documents/s on 2026-11-30"
    assert a.wall_hours == pytest.approx(1_000_000 / 250 / 3600) and a.gpu_hours == pytest.approx(a.wall_hours * 8)
    assert plans["synthesize"].basis == "estimate"


def test_an_unreachable_run_directory_leaves_the_estimate_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    from conftest import free_port

    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    cfg = resolve_config(None, "llama3-8b", ["storage_root=s3://politune-plan-test/runs"])
    plans, notes = plan_study(cfg, 1000, GPUS["h100"])
    assert all(p.basis == "estimate" for p in plans)
    assert len(notes) == 1 and "could not be read" in notes[0] and "every figure is an estimate" in notes[0]


def test_model_sizes() -> None:
    cfg = gpu_preset()
    assert model_params("meta-llama/Meta-Llama-3-70B-Instruct", cfg) == 70.6e9
    assert model_params("Qwen/Qwen2.5-14B-Instruct", cfg) == 14e9
    with pytest.raises(ValueError, match="cannot tell how many parameters some/model has"):
        model_params("some/model", cfg)


def test_bad_gpu_is_refused() -> None:
    result = runner.invoke(app, ["plan", "--gpu", "tpu"])
    assert result.exit_code == 2 and "--gpu tpu: expected one of h100, h200, a100, l40s, l4" in result.output


def test_the_benchmarked_ray_data_llm_ratio_scales_the_vllm_stages() -> None:
    plain = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["h100"])[0])
    scaled = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["h100"], ray_data_llm_ratio=0.8)[0])
    for stage in ("annotate", "synthesize"):  # vLLM through ray.data.llm in the GPU presets
        assert scaled[stage].gpu_hours == pytest.approx(plain[stage].gpu_hours / 0.8)
        assert scaled[stage].basis == "estimate / 0.8 (ray.data.llm ÷ vllm.LLM)"
    assert scaled["train"].gpu_hours == plain["train"].gpu_hours
    with pytest.raises(ValueError, match="expected a ratio above 0"):
        plan_study(gpu_preset(), 10, GPUS["h100"], ray_data_llm_ratio=0)


def bench_json(folder: Path, device: str, size: str = "8b") -> Path:
    """What bench/gpu.py writes, with the figures the plan reads (the notes' H200 measurements, rounded)."""
    path = folder / "gpu.json"
    path.write_text(json.dumps({"date": "2026-12-04", "device": device, "size": size, "ceiling_tflops": 795.0,
                                "annotate": {"tflops": 404.0}, "train": {"plain_trl": {"tflops": 105.0},
                                                                         "ray_train": {"tflops": 107.0}}}))
    return path


def test_bench_gpus_measured_mfus_replace_the_assumed_ones(tmp_path: Path) -> None:
    mfus = measured_mfus(bench_json(tmp_path, "NVIDIA H200"))
    assert mfus.prefill == pytest.approx(404 / 989) and mfus.train == pytest.approx(107 / 989)  # of the spec peak
    assert mfus.decode == MFU_DECODE and mfus.source("decode") == "assumed"
    assert mfus.source("train") == "measured by bench/gpu.py on NVIDIA H200, 2026-12-04"
    assumed = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["h100"])[0])
    measured = by_stage(plan_study(gpu_preset(), 1_000_000, GPUS["h100"], mfus=mfus)[0])
    assert measured["train"].gpu_hours == pytest.approx(assumed["train"].gpu_hours * MFU_PREFILL / mfus.train)
    # a CPU run of the bench (the test suite's), a smaller shape or no file: the assumed MFUs
    for path in (bench_json(tmp_path, "x86_64", "tiny"), bench_json(tmp_path, "NVIDIA H200", "tiny"),
                 tmp_path / "absent.json"):
        assert measured_mfus(path).source("train") == "assumed" and measured_mfus(path).train == MFU_PREFILL
    # an unknown GPU: a share of its own measured matmul ceiling
    assert measured_mfus(bench_json(tmp_path, "Some GPU")).prefill == pytest.approx(404 / 795)


def test_the_plan_says_which_mfus_are_measured(tmp_path: Path) -> None:
    sets = [arg for s in S3_PRESET_SETS for arg in ("--set", s)]
    measured = runner.invoke(app, ["plan", "--preset", "llama3-8b", *sets, "--bench-json",
                                   str(bench_json(tmp_path, "NVIDIA H200"))])
    assert measured.exit_code == 0, measured.output
    assert "MFU training (LoRA-DPO): 11% (measured by bench/gpu.py on NVIDIA H200, 2026-12-04)" in measured.output
    assert "MFU writing tokens: 15% (assumed)" in measured.output
    missing = runner.invoke(app, ["plan", "--preset", "llama3-8b", *sets, "--bench-json", str(tmp_path / "no.json")])
    assert missing.exit_code == 2 and "no such file (bench/gpu.py writes it)" in missing.output
