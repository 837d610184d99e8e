"""Selection of each side's posts: rules, reasons, counts that add up, near-duplicates."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from politune.config import SelectConfig, build_config
from politune.select import assign_sides, select_posts
from politune.select.near_duplicates import near_duplicate_mask
from politune.select.stage import label_truth
from politune.storage import Manifest, read_json


def posts(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["doc_id", "ideology", "relevance", "quality", "status", "source", "label"])


def test_thresholds_give_each_post_one_side_or_one_reason() -> None:
    df = posts([
        ("a", 1.0, 9.0, 9.0, "ok", "s", None),      # left
        ("b", 9.0, 9.0, 9.0, "ok", "s", None),      # right
        ("c", 5.0, 9.0, 9.0, "ok", "s", None),      # in between
        ("d", 2.0, 1.0, 9.0, "ok", "s", None),      # left, but off-topic
        ("e", 8.0, 9.0, 2.0, "ok", "s", None),      # right, but low quality
        ("f", None, None, None, "parse_error", "s", None),
    ])
    side, reason, _ = assign_sides(df, SelectConfig())
    assert side.tolist()[:2] == ["left", "right"] and side.isna().tolist()[2:] == [True] * 4
    assert reason.where(reason.notna(), None).tolist() == [
        None, None, "ideology on neither side", "left: relevance below 6", "right: quality below 5",
        "annotation status parse_error"]


def test_quantile_takes_each_sides_share() -> None:
    df = posts([(str(i), i / 10, 5.0, 5.0, "ok", "s", None) for i in range(100)])
    side, reason, bounds = assign_sides(df, SelectConfig(method="quantile", side_share=0.3))
    assert (side == "left").sum() == 30 and (side == "right").sum() == 30
    assert (reason == "ideology on neither side").sum() == 40
    assert bounds["left"]["ideology_max"] < bounds["right"]["ideology_min"]


def test_source_method_needs_and_uses_source_sides() -> None:
    with pytest.raises(ValueError, match="source_sides"):
        SelectConfig(method="source")
    df = posts([("a", None, None, None, "parse_error", "reddit", None), ("b", 1.0, 1, 1, "ok", "other", None)])
    side, reason, _ = assign_sides(df, SelectConfig(method="source", source_sides={"reddit": "left"}))
    assert side.tolist()[0] == "left" and reason.tolist()[1] == "source has no side in select.source_sides"


def test_near_duplicates_keep_the_first() -> None:
    texts = [
        "Call the Senate today and demand universal healthcare for nurses in Ohio right now",
        "Call the Senate today and demand universal healthcare for nurses in Ohio right now #MedicareForAll",
        "Made lasagna for dinner tonight and it turned out great with garlic bread on the side",
        "call the senate TODAY and demand universal healthcare for nurses in ohio right now!",
    ]
    assert near_duplicate_mask(texts, 0.8).tolist() == [False, True, False, True]
    assert near_duplicate_mask(texts, 1.0).tolist() == [False, False, False, True]


def write_run(root: Path, n: int) -> object:
    """A run directory with documents and annotations written directly (select needs no Ray)."""
    cfg = build_config({"run_id": "s", "storage_root": str(root), "sources": [{"name": "s", "paths": ["x"]}],
                        "select": {"method": "quantile", "side_share": 0.25, "near_duplicate_threshold": 0.8}})
    run = Path(cfg.run_uri)
    (run / "documents").mkdir(parents=True)
    (run / "annotations").mkdir()
    texts = [f"post number {i} about topic {i * 7 % 13} and idea {i * 11 % 17} with word{i}" for i in range(n)]
    texts[5] = texts[4] + " #Vote"  # a near duplicate of post 4
    pq.write_table(pa.table({"doc_id": [f"d{i:04d}" for i in range(n)], "source": ["s"] * n, "text": texts,
                             "label": ["left" if i < n / 2 else "right" for i in range(n)]}),
                   run / "documents" / "part-00000.parquet")
    pq.write_table(pa.table({"doc_id": [f"d{i:04d}" for i in range(n)],
                             "ideology": [10 * i / n for i in range(n)], "relevance": [5.0] * n,
                             "quality": [5.0] * n, "status": ["ok"] * (n - 3) + ["parse_error"] * 3}),
                   run / "annotations" / "part-00000.parquet")
    manifest = Manifest(cfg.run_uri)  # as ingest and annotate record them once whole
    for artifact in ("documents", "annotations"):
        manifest.record(artifact, path=str(run / artifact), config_hash="test", counts={"documents": n})
    return cfg


def test_select_posts_writes_balanced_sides_and_counts_every_post(tmp_path: Path) -> None:
    cfg = write_run(tmp_path, 200)
    result = select_posts(cfg)
    assert result.documents == 200
    assert sum(result.kept.values()) + sum(result.dropped.values()) == 200
    assert result.kept["left"] == result.kept["right"] > 0
    assert result.dropped["annotation status parse_error"] == 3
    assert result.dropped["left: near duplicate"] == 1
    table = pq.read_table(f"{cfg.run_uri}/selected").to_pylist()
    assert {r["side"] for r in table} == {"left", "right"}
    assert all(r["text"] for r in table) and "d0005" not in {r["doc_id"] for r in table}
    assert all(r["label"] == "left" for r in table if r["side"] == "left")
    manifest = read_json(f"{cfg.run_uri}/manifest.json")["artifacts"]["selected"]
    assert manifest["counts"]["kept"] == result.kept and manifest["counts"]["dropped"] == result.dropped
    assert manifest["counts"]["truth"] == result.truth and result.truth["annotated_on_side"] == 1.0


def test_label_truth_scores_the_annotator_and_the_selection_against_the_corpus_labels() -> None:
    df = posts([
        ("a", 1.0, 9.0, 9.0, "ok", "s", "left"),       # left, scored left
        ("b", 9.0, 9.0, 9.0, "ok", "s", "left"),       # left, scored right: selected right, wrongly
        ("c", 8.0, 9.0, 9.0, "ok", "s", "right"),      # right, scored right
        ("d", 6.0, 9.0, 9.0, "ok", "s", "right"),      # right, scored right, not selected
        ("e", 2.0, 9.0, 9.0, "ok", "s", "neutral"),    # not a side: not counted
        ("f", None, None, None, "parse_error", "s", "left"),  # no score: not counted
    ])
    selected = df[df["doc_id"].isin(["a", "b", "c"])].assign(side=["left", "right", "right"])
    truth = label_truth(df, selected)
    assert truth == {"labelled": 4, "annotated_on_side": 0.75, "selected_on_side": {"left": 1.0, "right": 0.5}}
    assert label_truth(df.assign(label=None), selected) is None  # a real corpus has no labels


def test_max_per_side_caps_the_strongest(tmp_path: Path) -> None:
    cfg = write_run(tmp_path, 200).model_copy(update={"select": SelectConfig(method="quantile", max_per_side=10)})
    result = select_posts(cfg)
    assert result.kept == {"left": 10, "right": 10}
    left = [r for r in pq.read_table(f"{cfg.run_uri}/selected").to_pylist() if r["side"] == "left"]
    assert [r["doc_id"] for r in left] == sorted(r["doc_id"] for r in left)  # the most left-leaning first
    assert left[0]["doc_id"] == "d0000"


def test_source_method_takes_a_reddit_posts_side_from_its_subreddit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="subreddit_sides"):
        SelectConfig(method="source")
    df = posts([("a", 5.0, 5, 5, "ok", "reddit", None), ("b", 5.0, 5, 5, "ok", "reddit", None),
                 ("c", 5.0, 5, 5, "ok", "reddit", None), ("d", 5.0, 5, 5, "ok", "truthsocial", None)])
    df["subreddit"] = ["politics", "Conservative", "cooking", None]
    sel = SelectConfig(method="source", subreddit_sides={"politics": "left", "Conservative": "right"},
                       source_sides={"truthsocial": "right"})
    side, reason, _ = assign_sides(df, sel)
    assert [s if isinstance(s, str) else None for s in side] == ["left", "right", None, "right"]
    assert reason.tolist()[2] == "neither the subreddit nor the source has a side in select"

    # and from the run: the subreddit read from the documents' meta, as ingest keeps it
    cfg = write_run(tmp_path, 40)
    run = Path(cfg.run_uri)
    docs = pq.read_table(run / "documents" / "part-00000.parquet")
    subreddits = ["politics" if i % 2 else "Conservative" for i in range(len(docs))]
    docs = docs.append_column("meta", pa.array([json.dumps({"subreddit": s}) for s in subreddits]))
    pq.write_table(docs, run / "documents" / "part-00000.parquet")
    raw = {**cfg.model_dump(mode="json"), "select": {"method": "source", "balance": False,
                                                      "near_duplicate_threshold": None,
                                                      "subreddit_sides": {"politics": "left", "Conservative": "right"}}}
    result = select_posts(build_config(raw))
    selected = pq.read_table(f"{cfg.run_uri}/selected").to_pylist()
    assert result.kept == {"left": 20, "right": 20}
    assert all(s["side"] == ("left" if int(s["doc_id"][1:]) % 2 else "right") for s in selected)
