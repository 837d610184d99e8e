"""Writing preference pairs from selected posts on a real local Ray with the tiny model: every selected
post ends as a pair or as a counted drop. The tiny model writes noise, so most drops are expected."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from politune.annotate import annotate_documents
from politune.config import TinyModelConfig, build_config
from politune.corpus.generate import generate_corpus
from politune.ingest import ingest_corpus
from politune.select import select_posts
from politune.synthesize import synthesize_preferences
from politune.synthesize.formats import read_pairs
from politune.world.tiny import build_tiny_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def selected_run(ray_local, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synth")
    model = build_tiny_model(TinyModelConfig(), root / "tiny")
    generate_corpus(200, root / "corpus", seed=6)
    raw = {
        "run_id": "s", "storage_root": str(root / "runs"), "tiny_model": {"out": str(model)},
        "sources": [{"name": n, "paths": [str(root / "corpus" / n)], "shape": n}
                    for n in ("truthsocial", "politosphere")],
        "select": {"method": "quantile"},
        "synthesize": {"max_new_tokens": 12, "batch_size": 8, "consistency_margin": 0},
    }
    cfg = build_config(raw)
    ingest_corpus(cfg)
    annotate_documents(cfg)
    select_posts(cfg)
    return raw


def test_every_selected_post_ends_as_a_pair_or_a_counted_drop(selected_run: dict) -> None:
    cfg = build_config(selected_run)
    selected = pq.read_table(f"{cfg.run_uri}/selected").to_pylist()
    result = synthesize_preferences(cfg)
    out = Path(result.preferences_uri)
    dropped = pq.read_table(out / "dropped.parquet").to_pylist()
    kept = []
    for side in ("left", "right"):
        c = result.sides[side]
        assert c.read == sum(1 for p in selected if p["side"] == side)
        assert c.read == c.train + c.eval + sum(c.dropped.values())
        rows = pq.read_table(out / side / "train.parquet").to_pylist() + pq.read_table(
            out / side / "eval.parquet").to_pylist()
        assert all(r["synthesizer"] == "tiny" and r["prompt_version"] == "synthesize-v1" for r in rows)
        kept += rows
        back, bad = read_pairs(str(out / side / "train.jsonl"), side)
        assert bad == [] and len(back) == c.train
    # one row a post, kept or dropped
    assert sorted(r["doc_id"] for r in kept + dropped) == sorted(p["doc_id"] for p in selected)
    reasons = {d["reason"] for d in dropped}
    assert reasons <= {"empty", "refusal", "leaked_record", "truncated", "identical", "duplicate_prompt",
                       "engine_error", "inconsistent", "unscored"}
    # 12 new tokens cut most of the tiny model's noise off: the generator's own flag finds it
    assert result.sides["left"].dropped["truncated"] > 0
    assert all(d["detail"].startswith("ideology: chosen") for d in dropped if d["reason"] == "inconsistent")
    for c in result.sides.values():  # the check saw what the cleaner kept; it kept some and dropped some
        assert c.consistency_checked == c.train + c.eval + c.dropped["inconsistent"] + c.dropped["unscored"]


def test_chosen_can_be_the_post_itself(selected_run: dict) -> None:
    raw = {**selected_run, "synthesize": {**selected_run["synthesize"], "chosen_from": "post",
                                          "max_new_tokens": 24, "consistency_check": False, "clean": False}}
    cfg = build_config(raw)
    texts = {r["doc_id"]: r["text"] for r in pq.read_table(f"{cfg.run_uri}/selected").to_pylist()}
    result = synthesize_preferences(cfg)
    rows = pq.read_table(Path(result.preferences_uri) / "left" / "train.parquet").to_pylist()
    assert rows and all(r["chosen"] == texts[r["doc_id"]] for r in rows)
    assert result.sides["left"].train + result.sides["left"].eval == result.sides["left"].read
