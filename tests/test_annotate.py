"""Annotation on a real local Ray with the tiny model: both reading modes, every document accounted
for, failures recorded, and a real kill-and-resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from dashboard_check import dashboard_queries, series, unmatched

from politune.annotate import annotate_documents
from politune.config import build_config
from politune.contracts.annotator.hf_engine import HFAnnotator
from politune.contracts.annotator.parse import ParseError, parse_scores
from politune.corpus.generate import generate_corpus
from politune.ingest import ingest_corpus
from politune.world.tiny import build_tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from politune.config import TinyModelConfig

    return build_tiny_model(TinyModelConfig(), tmp_path_factory.mktemp("tiny") / "model")


def run_config(root: Path, model: Path, n: int, **annotate) -> object:
    corpus = root / "corpus"
    if not corpus.exists():
        generate_corpus(n, corpus, seed=4)
    return build_config({
        "run_id": "a", "storage_root": str(root / "runs"), "tiny_model": {"out": str(model)},
        "sources": [
            {"name": "truthsocial", "paths": [str(corpus / "truthsocial")], "shape": "truthsocial"},
            {"name": "politosphere", "paths": [str(corpus / "politosphere")], "shape": "politosphere"},
        ],
        "annotate": {"batch_size": 8, "rows_per_file": 64, **annotate},
    })


def read_annotations(cfg) -> list[dict]:
    return pq.read_table(f"{cfg.run_uri}/annotations").to_pylist()


def test_logprob_mode_scores_every_document_once(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    cfg = run_config(tmp_path, tiny_model, 300, mode="logprob")
    ingest = ingest_corpus(cfg)
    result = annotate_documents(cfg)
    rows = read_annotations(cfg)
    assert result.documents == ingest.totals["kept"] == len(rows)
    assert len({r["doc_id"] for r in rows}) == len(rows)
    assert result.statuses == {"ok": len(rows), "parse_error": 0, "engine_error": 0}
    for r in rows[:20]:
        for scale in ("ideology", "relevance", "quality"):
            assert 0 <= r[scale] <= 10 and r[f"{scale}_argmax"] in range(11)
        assert r["prompt_version"] == "annotate-v1/logprob" and r["annotator"] == "tiny"
    assert len({round(r["ideology"], 6) for r in rows}) > 1  # scores differ between posts
    assert len(list(Path(cfg.run_uri, "annotations").glob("*.parquet"))) > 1  # written block by block

    again = annotate_documents(cfg)  # a finished run is not annotated twice
    assert again.annotated_now == 0 and len(read_annotations(cfg)) == len(rows)


def test_metrics_reach_the_ray_metrics_endpoint(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    """In generate mode (the one that emits every annotate metric, generated tokens too); the Grafana dashboard's
    annotation panels query what this run emitted."""
    import urllib.request

    cfg = run_config(tmp_path, tiny_model, 16, mode="generate")
    ingest_corpus(cfg)
    annotate_documents(cfg)
    port = ray_local.nodes()[0]["MetricsExportPort"]
    deadline, text = time.time() + 90, ""
    wanted = ("politune_annotate_posts", "politune_annotate_batch_seconds", "politune_annotate_tokens_out")
    while time.time() < deadline:  # Ray exports custom metrics every few seconds
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        if all(name in text for name in wanted):
            break
        time.sleep(3)
    lines = [line for line in text.splitlines() if line.startswith("ray_politune_annotate_posts")
             or line.startswith("politune_annotate_posts")]
    assert any('status="' in line and 'model="tiny"' in line and 'run="a"' in line for line in lines), lines[:5]
    assert "politune_annotate_tokens_in" in text
    assert not unmatched(dashboard_queries("ray_politune_annotate_"), series(text))


def test_a_watched_stage_shows_its_live_counts(ray_local, tiny_model: Path, tmp_path: Path, monkeypatch) -> None:
    """The annotator's counts reach the run's progress board, and the driver's watch prints them: in a job log
    (not a terminal) as `annotate: running N s · D documents (R/s)` lines."""
    import io
    import re

    from rich.console import Console

    from politune import stage_watch

    monkeypatch.setattr(stage_watch, "LOG_EVERY_S", 0.0)  # a line every poll whose counts moved
    cfg = run_config(tmp_path, tiny_model, 200, mode="logprob")
    ingest_corpus(cfg)
    log = io.StringIO()
    with stage_watch.StageWatch("annotate", cfg.run_id, Console(file=log, width=200)) as watch:
        result = annotate_documents(cfg)
        deadline = time.time() + 30  # the counts are sent without waiting: the board catches up in a poll or two
        while not watch.counts.startswith(f"{result.annotated_now:,} documents (") and time.time() < deadline:
            time.sleep(0.2)
    assert result.annotated_now > 0
    assert watch.counts.startswith(f"{result.annotated_now:,} documents ("), watch.counts
    lines = log.getvalue().splitlines()
    live = r"annotate:\s+running \d+ s · [\d,]+ documents \([\d.,]+/s\)"
    assert any(re.fullmatch(live, line) for line in lines), lines


def test_generate_mode_records_malformed_answers(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    cfg = run_config(tmp_path, tiny_model, 60, mode="generate", max_new_tokens=12)
    ingest_corpus(cfg)
    result = annotate_documents(cfg)
    rows = read_annotations(cfg)
    assert len(rows) == result.documents
    # the tiny model writes noise: every answer is kept, raw, as a parse error
    assert result.statuses["parse_error"] == len(rows)
    assert all(r["raw_output"] and r["ideology"] is None for r in rows)
    assert all(r["prompt_version"] == "annotate-v1/generate" for r in rows)


def test_a_changed_annotator_or_a_reingested_corpus_starts_over(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    """What annotations are kept from an earlier run: none when the annotator changed (here its mode), none when the
    corpus was ingested again with other documents. (One run checks both: each annotate call starts an actor pool.)"""
    cfg = run_config(tmp_path, tiny_model, 60, mode="logprob")
    ingest_corpus(cfg)
    annotate_documents(cfg)
    other = run_config(tmp_path, tiny_model, 60, mode="generate", max_new_tokens=4)
    result = annotate_documents(other)
    assert result.resumed_from == 0 and result.annotated_now == result.documents
    assert {r["prompt_version"] for r in read_annotations(other)} == {"annotate-v1/generate"}

    smaller = other.model_copy(update={"ingest": other.ingest.model_copy(update={"max_text_chars": 60})})
    ingest_corpus(smaller)  # other documents in the same run
    result = annotate_documents(smaller)
    assert result.resumed_from == 0 and result.annotated_now == result.documents


def test_kill_and_resume_gives_each_doc_id_exactly_once(ray_local, tiny_model: Path, tmp_path: Path) -> None:
    # about 12 files of 32 posts: the kill comes after 3, with most of the work left to resume
    cfg = run_config(tmp_path, tiny_model, 400, mode="logprob", batch_size=4, rows_per_file=32)
    ingest_corpus(cfg)
    out = Path(cfg.run_uri) / "annotations"
    code = ("import sys, yaml; from politune.config import build_config; from politune.annotate import "
            "annotate_documents; annotate_documents(build_config(yaml.safe_load(open(sys.argv[1]))))")
    config_file = tmp_path / "run.yaml"
    import yaml

    config_file.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    job = subprocess.Popen([sys.executable, "-c", code, str(config_file)], env=env, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(list(out.glob("*.parquet"))) < 3:
        assert job.poll() is None, "the annotation job ended before it could be killed"
        assert time.time() < deadline, "no annotation files appeared within 300 s"
        time.sleep(0.2)
    os.killpg(job.pid, signal.SIGKILL)  # the driver and the local Ray it started
    job.wait()

    result = annotate_documents(cfg)
    assert 0 < result.resumed_from < result.documents  # it continued, not restarted
    assert result.annotated_now == result.documents - result.resumed_from
    ids = [r["doc_id"] for r in read_annotations(cfg)]
    assert len(ids) == len(set(ids)) == result.documents


class FlakyAnnotator(HFAnnotator):
    """A real tiny-model annotator whose engine call fails the first `failures` times (a test double
    for a crashed engine, which cannot be provoked on demand)."""

    def __init__(self, *args, failures: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.failures = failures

    def annotate(self, texts):
        if self.failures:
            self.failures -= 1
            raise RuntimeError("engine crashed")
        return super().annotate(texts)


def test_failed_batches_are_retried_then_recorded(ray_local, tiny_model: Path) -> None:
    batch = {"doc_id": np.array(["a", "b"]), "text": np.array(["Tax the rich", "Back the blue"])}
    recovered = FlakyAnnotator(str(tiny_model), "tiny", "logprob", "t", max_retries=2, failures=2)(batch)
    assert recovered["status"] == ["ok", "ok"]
    failed = FlakyAnnotator(str(tiny_model), "tiny", "logprob", "t", max_retries=1, failures=5)(batch)
    assert failed["status"] == ["engine_error", "engine_error"]
    assert failed["raw_output"] == ["RuntimeError: engine crashed"] * 2
    assert failed["doc_id"] == ["a", "b"] and failed["ideology"] == [None, None]


@pytest.mark.parametrize("answer, scores", [
    ('{"ideology": 2, "relevance": 9, "quality": 7}', {"ideology": 2.0, "relevance": 9.0, "quality": 7.0}),
    ('Sure! {"ideology": 7.5, "relevance": 0, "quality": 10} hope that helps', None),
])
def test_parse_scores_accepts(answer: str, scores) -> None:
    parsed = parse_scores(answer)
    assert parsed == (scores or {"ideology": 7.5, "relevance": 0.0, "quality": 10.0})


@pytest.mark.parametrize("answer, message", [
    ("no json here", "no JSON object"),
    ('{"ideology": 2, "relevance": 9}', "quality: expected a number, got null"),
    ('{"ideology": 11, "relevance": 9, "quality": 1}', "ideology: 11 is outside 0..10"),
    ('{"ideology": "left", "relevance": 9, "quality": 1}', 'ideology: expected a number, got "left"'),
    ("{'ideology': 1}", "not valid JSON"),
])
def test_parse_scores_rejects(answer: str, message: str) -> None:
    with pytest.raises(ParseError, match=message):
        parse_scores(answer)


def test_a_small_run_is_cut_into_blocks_for_every_actor_of_the_pool(ray_local) -> None:
    """A block goes to one actor whole: 1,519 posts in one 2,000-row block kept one of two annotators idle
    (bench/scaling.py). Blocks are cut for the pool, at least a batch and at most rows_per_file each."""
    import ray.data

    from politune.engines.blocks import BLOCKS_PER_ACTOR, blocks_for_pool, rows_per_block

    assert rows_per_block(1519, 2, 16, 2000) == 190  # 8 blocks, 4 an actor
    assert rows_per_block(1_000_000, 8, 16, 2000) == 2000  # a real corpus keeps the file size
    assert rows_per_block(20, 4, 16, 2000) == 16  # never under a batch
    assert rows_per_block(0, 2, 16, 2000) == 2000  # count unknown: the file size
    cut = blocks_for_pool(ray.data.range(1519).repartition(1), 1519, 2, 16, 2000).materialize()
    assert cut.num_blocks() >= 2 * BLOCKS_PER_ACTOR and cut.count() == 1519
