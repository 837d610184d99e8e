import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq

from politune.corpus.generate import generate_corpus, iter_posts

TRUTH_KEYS = {"id", "created_at", "content", "account", "label"}
REDDIT_KEYS = {"id", "subreddit", "author", "body", "created_utc", "label"}


def test_native_shapes_and_labels() -> None:
    seen = {"truthsocial": 0, "politosphere": 0}
    sides = {"truthsocial": {"left": 0, "right": 0}, "politosphere": {"left": 0, "right": 0}}
    for source, record in iter_posts(4000, seed=0):
        seen[source] += 1
        assert record["label"] in {"left", "right", "neutral", "off_topic"}
        if source == "truthsocial":
            assert TRUTH_KEYS <= record.keys() and isinstance(record["account"]["username"], str)
            assert record["created_at"].endswith("Z")
        else:
            assert REDDIT_KEYS <= record.keys() and isinstance(record["created_utc"], int)
        if record["label"] in ("left", "right"):
            sides[source][record["label"]] += 1
    assert seen["truthsocial"] > 1000 and seen["politosphere"] > 1000
    # as in the paper's data: Truth Social leans right, the Politosphere left
    assert sides["truthsocial"]["right"] > 3 * sides["truthsocial"]["left"]
    assert sides["politosphere"]["left"] > 3 * sides["politosphere"]["right"]


def test_same_seed_same_corpus_other_seed_other_corpus() -> None:
    a = list(iter_posts(300, seed=5))
    assert a == list(iter_posts(300, seed=5))
    assert a != list(iter_posts(300, seed=6))


def test_formats_hold_the_same_records(tmp_path: Path) -> None:
    plain = generate_corpus(1200, tmp_path / "j", seed=1, fmt="jsonl", rows_per_file=250)
    gz = generate_corpus(1200, tmp_path / "g", seed=1, fmt="jsonl.gz", rows_per_file=250)
    parquet = generate_corpus(1200, tmp_path / "p", seed=1, fmt="parquet", rows_per_file=250)
    for source in ("truthsocial", "politosphere"):
        rows = [json.loads(line) for f in plain["files"][source] for line in open(f)]
        gz_rows = [json.loads(line) for f in gz["files"][source] for line in gzip.open(f, "rt")]
        pq_rows = [r for f in parquet["files"][source] for r in pq.read_table(f).to_pylist()]
        assert rows == gz_rows == pq_rows
        assert len(plain["files"][source]) == -(-len(rows) // 250)  # files roll over every 250 rows
    assert sum(sum(v.values()) for v in plain["labels"].values()) == 1200


def test_rerun_with_fewer_posts_leaves_no_stale_files(tmp_path: Path) -> None:
    generate_corpus(1000, tmp_path, rows_per_file=100)
    small = generate_corpus(100, tmp_path, rows_per_file=100)
    on_disk = sorted(str(p) for p in tmp_path.glob("*/part-*"))
    assert on_disk == sorted(f for files in small["files"].values() for f in files)
