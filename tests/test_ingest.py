"""Ingest on a real local Ray, from local files and from a real S3 endpoint (moto on 127.0.0.1).

Expected counts are worked out here independently of the ingest code: by reading the files with
plain json / csv / pyarrow and applying the rules docs/ingest.md states.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import boto3
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from politune.config import build_config
from politune.corpus.generate import generate_corpus
from politune.ingest import ingest_corpus
from politune.ingest import stage as ingest_stage
from politune.ingest.stage import read_task_count
from politune.storage import read_json, resolve

pytestmark = pytest.mark.integration

MAX_CHARS = 1000

# The file of bad rows: (line, expected field, expected reason fragment); None marks a kept row.
BAD_LINES: list[tuple[bytes, tuple[str, str] | None]] = [
    (b'{"id": 1, "text": "Good one"}', None),
    (b"", ("(line)", "blank line")),
    (b"not json", ("(line)", "not valid JSON")),
    (b"[1, 2]", ("(line)", "expected a JSON object, got list")),
    (b'{"id": 2}', ("text", "missing")),
    (b'{"id": 3, "text": 5}', ("text", "expected a string, got int")),
    (b'{"id": 4, "text": "   "}', ("text", "empty or only whitespace")),
    (b'{"id": 5, "text": "' + b"x" * 1500 + b'"}', ("text", "1,500 characters, over the limit of 1,000")),
    (b'{"id": 6, "text": "  good   ONE "}', None),  # an exact duplicate of line 1 once normalised
    (b'{"id": 9, "text": "caf\xe9"}', ("(line)", "not valid UTF-8")),
    (b'{"id": 7, "text": "fine", "created_at": "not a date"}', ("created_at", "not an ISO 8601 time")),
    (b'{"id": 8, "text": "unique two", "created_at": 1700000000}', None),
    (b'{"id": 10, "text": null}', ("text", "is null")),
]


def norm(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    """Files of every format, and the counts ingest must arrive at."""
    root = tmp_path_factory.mktemp("corpus")
    jsonl = generate_corpus(500, root / "jsonl", seed=11, fmt="jsonl", rows_per_file=40)
    gz = generate_corpus(500, root / "gz", seed=12, fmt="jsonl.gz", rows_per_file=1000)
    parquet = generate_corpus(500, root / "parquet", seed=13, fmt="parquet", rows_per_file=150)
    (root / "bad").mkdir()
    (root / "bad" / "rows.jsonl").write_bytes(b"\n".join(line for line, _ in BAD_LINES) + b"\n")
    (root / "csv").mkdir()
    with open(root / "csv" / "posts.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uid", "message", "when"])
        writer.writerow(["c1", "A post, with a comma", "1700000000"])
        writer.writerow(["c2", "too", "many", "fields"])
        writer.writerow(["c3", "", "1700000000"])
        writer.writerow(["c4", "Another post\nover two lines", "2023-11-14T22:13:20Z"])

    sources = [
        {"name": "ts_jsonl", "paths": [str(root / "jsonl" / "truthsocial")], "shape": "truthsocial"},
        {"name": "rd_gz", "paths": [str(root / "gz" / "politosphere")], "shape": "politosphere"},
        {"name": "ts_parquet", "paths": [str(root / "parquet" / "truthsocial")], "shape": "truthsocial"},
        {"name": "bad", "paths": [str(root / "bad" / "rows.jsonl")], "shape": "generic"},
        {"name": "csv", "paths": [str(root / "csv")], "shape": "generic",
         "fields": {"text": "message", "id": "uid", "created_at": "when", "author": None, "label": None}},
    ]

    # Independent expectations.
    texts: list[str] = []  # every valid text over all sources, to count distinct ones
    expected = {}

    def generated(name: str, records: list[dict], text_key: str) -> None:
        bad = 0
        for r in records:
            t = r[text_key]
            if text_key == "content":
                t = t.removeprefix("<p>").removesuffix("</p>")
            if not t.strip() or t == "[deleted]":
                bad += 1
            else:
                texts.append(t)
        expected[name] = {"read": len(records), "quarantined": bad}

    generated("ts_jsonl", [json.loads(line) for f in jsonl["files"]["truthsocial"] for line in open(f)], "content")
    generated("rd_gz", [json.loads(line) for f in gz["files"]["politosphere"] for line in gzip.open(f, "rt")],
              "body")
    generated("ts_parquet", [r for f in parquet["files"]["truthsocial"] for r in pq.read_table(f).to_pylist()],
              "content")
    expected["bad"] = {"read": len(BAD_LINES), "quarantined": sum(1 for _, e in BAD_LINES if e)}
    texts += [json.loads(line)["text"] for line, e in BAD_LINES if e is None]
    expected["csv"] = {"read": 4, "quarantined": 2}
    texts += ["A post, with a comma", "Another post\nover two lines"]
    return {"root": root, "sources": sources, "expected": expected, "distinct": len({norm(t) for t in texts}),
            "valid": len(texts)}


def make_config(sources: list[dict], storage_root: str, **ingest) -> object:
    return build_config({
        "run_id": "t", "storage_root": storage_root, "sources": sources,
        "ingest": {"max_text_chars": MAX_CHARS, "dedup_bucket_mb": 0.05, **ingest},
    })


def read_documents(uri: str):
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs).sort_by("doc_id")


def check_counts(result, corpus: dict) -> None:
    for name, exp in corpus["expected"].items():
        got = result.counts[name]
        assert got["read"] == exp["read"], name
        assert got["quarantined"] == exp["quarantined"], name
        assert got["read"] == got["kept"] + got["duplicates"] + got["quarantined"], name
    totals = result.totals
    assert totals["kept"] == corpus["distinct"]
    assert totals["duplicates"] == corpus["valid"] - corpus["distinct"]


def test_every_format_from_local_paths(ray_local, corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tasks: list[tuple[int, int]] = []  # (files, read tasks): files share tasks here, so a task reads several

    def counted(sizes: list[int], cpus: int, task_mb: float) -> int:
        tasks.append((len(sizes), read_task_count(sizes, cpus, task_mb)))
        return tasks[-1][1]

    monkeypatch.setattr(ingest_stage, "read_task_count", counted)
    cfg = make_config(corpus["sources"], str(tmp_path / "runs"))
    result = ingest_corpus(cfg)
    [(files, read_tasks)] = tasks
    assert files > read_tasks == 8  # 2 CPUs in the test's Ray: 4 tasks a CPU, so some files share a task
    assert result.num_buckets > 1  # dedup ran over several buckets, and still found every copy
    check_counts(result, corpus)

    docs = read_documents(result.documents_uri)
    assert docs.column_names == ["doc_id", "source", "text", "created_at", "author", "meta", "label"]
    assert len(docs) == corpus["distinct"]
    assert len(set(docs["doc_id"].to_pylist())) == len(docs)
    assert len({norm(t) for t in docs["text"].to_pylist()}) == len(docs)
    # of two copies, the first by (source, file, row) is kept: line 1, not line 9
    bad_docs = {r["text"]: r for r in docs.to_pylist() if r["source"] == "bad"}
    assert set(bad_docs) == {"Good one", "unique two"}
    assert bad_docs["unique two"]["created_at"] == "2023-11-14T22:13:20Z"
    assert {r["text"] for r in docs.to_pylist() if r["source"] == "csv"} == {
        "A post, with a comma", "Another post\nover two lines"}
    assert {r["label"] for r in docs.to_pylist() if r["source"] == "ts_jsonl"} <= {
        "left", "right", "neutral", "off_topic"}

    manifest = read_json(f"{cfg.run_uri}/manifest.json")
    assert manifest["artifacts"]["documents"]["counts"]["per_source"] == result.counts
    assert set(manifest["artifacts"]["documents"]["inputs"]) == {s["name"] for s in corpus["sources"]}


def test_files_are_grouped_into_read_tasks_of_about_read_task_mb() -> None:
    mb = 2**20
    assert read_task_count([2 * mb] * 40, cpus=2, task_mb=32) == 8  # 80 MB is 3 tasks by size: 4 a CPU instead
    assert read_task_count([2 * mb] * 40, cpus=1, task_mb=32) == 4
    assert read_task_count([2 * mb] * 400, cpus=2, task_mb=32) == 25  # 800 MB in tasks of 32
    assert read_task_count([100 * mb] * 10, cpus=2, task_mb=32) == 10  # a file larger than a task is one alone
    assert read_task_count([mb] * 3, cpus=2, task_mb=32) == 3  # never more tasks than files
    assert read_task_count([0], cpus=4, task_mb=32) == 1


def test_bad_rows_are_quarantined_with_file_row_field_and_reason(ray_local, corpus, tmp_path: Path) -> None:
    cfg = make_config([s for s in corpus["sources"] if s["name"] in ("bad", "csv")], str(tmp_path / "runs"))
    result = ingest_corpus(cfg)
    fs, path = resolve(result.quarantine_uri)
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    bad = [(r["row"], r["field"], r["reason"], r["file"]) for r in rows if r["source"] == "bad"]
    expected = [(i, e[0], e[1]) for i, (_, e) in enumerate(BAD_LINES, start=1) if e]
    assert [(row, field) for row, field, _, _ in bad] == [(row, field) for row, field, _ in expected]
    for (_, _, reason, file), (_, _, fragment) in zip(bad, expected, strict=True):
        assert fragment in reason and file.endswith("rows.jsonl")
    assert next(r for r in rows if r["source"] == "bad" and r["row"] == 3)["raw"] == "not json"
    csv_rows = [(r["row"], r["field"], r["reason"]) for r in rows if r["source"] == "csv"]
    assert csv_rows == [(2, "(row)", "expected 3 fields, got 4"), (3, "message", "empty or only whitespace")]


def test_rerun_writes_the_same_output_not_twice_as_much(ray_local, corpus, tmp_path: Path) -> None:
    cfg = make_config(corpus["sources"][:3], str(tmp_path / "runs"))
    first = ingest_corpus(cfg)
    files_first = sorted(p.name for p in Path(first.documents_uri).iterdir())
    docs_first = read_documents(first.documents_uri)
    second = ingest_corpus(cfg)
    assert second.counts == first.counts
    assert sorted(p.name for p in Path(second.documents_uri).iterdir()) == files_first
    assert read_documents(second.documents_uri).equals(docs_first)
    assert not (Path(cfg.run_uri) / "_staging").exists()


def test_every_format_from_s3(ray_local, corpus, s3_bucket: str, tmp_path: Path) -> None:
    s3 = boto3.client("s3")
    root: Path = corpus["root"]
    for path in root.rglob("*"):
        if path.is_file():
            s3.upload_file(str(path), s3_bucket, f"corpus/{path.relative_to(root)}")
    sources = json.loads(json.dumps(corpus["sources"]).replace(str(root), f"s3://{s3_bucket}/corpus"))
    cfg = make_config(sources, f"s3://{s3_bucket}/runs")
    result = ingest_corpus(cfg)
    check_counts(result, corpus)
    assert result.documents_uri.startswith("s3://")

    local = ingest_corpus(make_config(corpus["sources"], str(tmp_path / "runs")))
    assert read_documents(result.documents_uri)["doc_id"].equals(read_documents(local.documents_uri)["doc_id"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=s3_bucket, Prefix="runs/t/")["Contents"]]
    assert "runs/t/manifest.json" in keys and any(k.startswith("runs/t/quarantine/") for k in keys)
    assert not any("_staging" in k for k in keys)
    fs, _ = resolve(result.documents_uri)
    assert isinstance(fs, pafs.S3FileSystem)


def test_missing_path_names_the_source(ray_local, tmp_path: Path) -> None:
    cfg = make_config([{"name": "gone", "paths": [str(tmp_path / "nothing")]}], str(tmp_path / "runs"))
    with pytest.raises(FileNotFoundError, match=r"source 'gone': .*nothing does not exist"):
        ingest_corpus(cfg)


def test_dedup_off_keeps_every_copy(ray_local, corpus, tmp_path: Path) -> None:
    cfg = make_config([s for s in corpus["sources"] if s["name"] == "bad"], str(tmp_path / "runs"), dedup=False)
    result = ingest_corpus(cfg)
    assert result.counts["bad"]["kept"] == 3 and result.counts["bad"]["duplicates"] == 0


def test_compression_is_told_from_the_first_bytes(ray_local, tmp_path: Path) -> None:
    """bz2 and zstd as the Reddit corpora ship them (no .jsonl in the name; Pushshift's 2**31-byte zstd window,
    which zstd's default decoder limit and Arrow's codec refuse), and gzip behind a plain .jsonl name."""
    import bz2

    import zstandard

    def lines(prefix: str, n: int) -> bytes:
        return "".join(json.dumps({"id": f"{prefix}{i}", "body": f"{prefix} comment {i} &amp; more",
                                   "created_utc": str(1432068778 + i), "subreddit": "politics", "language": "en"})
                       + "\n" for i in range(n)).encode()

    folder = tmp_path / "reddit"
    folder.mkdir()
    (folder / "comments_2019-05.bz2").write_bytes(bz2.compress(lines("bz", 30)))
    long_window = zstandard.ZstdCompressionParameters.from_level(3, window_log=31)
    with open(folder / "RC_2019-05.zst", "wb") as f, zstandard.ZstdCompressor(
            compression_params=long_window).stream_writer(f) as writer:
        writer.write(lines("zst", 40))
    assert zstandard.get_frame_parameters((folder / "RC_2019-05.zst").read_bytes()).window_size == 2**31
    (folder / "mislabelled.jsonl").write_bytes(gzip.compress(lines("gzipped", 10)))
    cut = bz2.compress(lines("cutbz", 2000))
    (folder / "cut.jsonl.bz2").write_bytes(cut[: len(cut) // 2])

    cfg = make_config([{"name": "r", "paths": [str(folder)], "shape": "politosphere"}], str(tmp_path / "runs"))
    result = ingest_corpus(cfg)
    texts = read_documents(result.documents_uri)["text"].to_pylist()
    for prefix, n in (("bz", 30), ("zst", 40), ("gzipped", 10)):
        assert sorted(t for t in texts if t.startswith(f"{prefix} ")) == sorted(f"{prefix} comment {i} & more"
                                                                                 for i in range(n)), prefix
    kept_from_cut = sum(t.startswith("cutbz ") for t in texts)
    assert 0 <= kept_from_cut < 2000
    quarantined = pq.read_table(resolve(result.quarantine_uri)[1]).to_pylist()
    assert [(Path(r["file"]).name, r["row"], r["field"]) for r in quarantined] == [
        ("cut.jsonl.bz2", kept_from_cut + 1, "(file)")]
    # (bz2 decompresses in blocks of up to 900 kB: a file cut inside its first block yields no row)
    assert "EOFError: Compressed file ended before the end-of-stream marker" in quarantined[0]["reason"]
    c = result.counts["r"]
    assert c["read"] == c["kept"] + c["duplicates"] + c["quarantined"] == 80 + kept_from_cut + 1


def test_reblogs_are_counted_as_reposts_of_their_original(ray_local, tmp_path: Path) -> None:
    """Mastodon-API statuses as JSON lines, plain and in every compression: a reblog (empty content, the original
    under `reblog`) is a re-post of its original, not a document and not an empty text."""
    import bz2

    import zstandard

    compressions = {"statuses.jsonl": lambda b: b, "statuses.jsonl.gz": gzip.compress, "statuses.bz2": bz2.compress,
                    "statuses.zst": zstandard.ZstdCompressor().compress}
    (tmp_path / "api").mkdir()
    for name, compress in compressions.items():
        statuses = [{"id": f"{name}{i}", "content": f"<p>{name} status {i}</p>", "account": {"username": "u"},
                     "reblog": None} for i in range(6)]
        statuses += [{"id": f"{name}r{i}", "content": "", "account": {"username": "v"}, "reblog": statuses[i]}
                     for i in (0, 0, 3)]
        (tmp_path / "api" / name).write_bytes(compress("".join(json.dumps(s) + "\n" for s in statuses).encode()))
    result = ingest_corpus(make_config([{"name": "ts", "paths": [str(tmp_path / "api")], "shape": "truthsocial"}],
                                       str(tmp_path / "runs")))
    c = result.counts["ts"]
    assert (c["read"], c["kept"], c["duplicates"], c["reposts"], c["quarantined"]) == (36, 24, 0, 12, 0)
    docs = {d["text"]: d["doc_id"] for d in read_documents(result.documents_uri).to_pylist()}
    reposts = pq.read_table(resolve(f"{result.documents_uri.rsplit('/', 1)[0]}/reposts")[1]).to_pylist()
    assert [(Path(r["file"]).name, r["row"], r["original_doc_id"]) for r in reposts] == [
        (name, row, docs[f"{name} status {i}"]) for name in sorted(compressions) for row, i in ((7, 0), (8, 0), (9, 3))]


TRUTHS_HEADER = ["id", "timestamp", "time_scraped", "is_retruth", "is_reply", "author", "like_count", "retruth_count",
                 "reply_count", "text", "external_id", "url", "truth_retruthed"]


def truth(id_: int, text: str, is_retruth: str = "f", is_reply: str = "f", retruthed: str = "-1") -> str:
    return "\t".join([str(id_), f"2022-03-0{id_ % 9 + 1} 10:00:00", "2022-11-01 00:00:00", is_retruth, is_reply,
                      str(400 + id_), "3", "1", "0", text, f"ext{id_}", f"https://truthsocial.com/{id_}", retruthed])


@pytest.mark.parametrize("compress", ["none", "gzip", "bz2", "zstd"])
def test_the_truth_social_datasets_tsv(ray_local, tmp_path: Path, compress: str) -> None:
    """truths.tsv as published: no quoting, t / f flags, retruths, replies, and texts whose line breaks split rows."""
    import bz2

    import zstandard

    lines = ["\t".join(TRUTHS_HEADER),
             truth(1, "Back the blue"),  # line 2
             truth(2, "Secure the border"),  # line 3
             truth(3, "", is_retruth="t", retruthed="1"),  # a retruth of 1: a repost, not a document
             truth(4, "Agreed, totally", is_reply="t"),  # a reply: kept, marked
             truth(6, "A post over\ntwo lines"),  # lines 6-7: re-joined
             truth(7, "Ends with a number\n2024\t2022-01-01 was a date"),  # line 9 looks like a row of its own
             ]
    text = "\n".join(lines) + "\n"
    raw = text.encode()
    data = {"none": raw, "gzip": gzip.compress(raw), "bz2": bz2.compress(raw),
            "zstd": zstandard.ZstdCompressor().compress(raw)}[compress]
    (tmp_path / "ts").mkdir()
    name = {"none": "truths.tsv", "gzip": "truths.tsv.gz", "bz2": "truths.tsv.bz2", "zstd": "truths.tsv.zst"}[compress]
    (tmp_path / "ts" / name).write_bytes(data)

    result = ingest_corpus(make_config([{"name": "ts", "paths": [str(tmp_path / "ts")], "shape": "truthsocial_tsv"}],
                                       str(tmp_path / "runs")))
    c = result.counts["ts"]
    assert (c["kept"], c["duplicates"], c["reposts"], c["quarantined"], c["rejoined"]) == (4, 0, 1, 2, 1)
    assert c["reasons"] == {"(row): wrong number of fields": 2}
    assert c["read"] == c["kept"] + c["duplicates"] + c["reposts"] + c["quarantined"]
    docs = {d["text"]: d for d in read_documents(result.documents_uri).to_pylist()}
    assert set(docs) == {"Back the blue", "Secure the border", "Agreed, totally", "A post over\ntwo lines"}
    assert json.loads(docs["Agreed, totally"]["meta"])["is_reply"] is True
    assert json.loads(docs["A post over\ntwo lines"]["meta"])["_rejoined_lines"] == 2
    assert docs["Back the blue"]["author"] == "401" and docs["Back the blue"]["created_at"] == "2022-03-02T10:00:00Z"
    quarantined = pq.read_table(resolve(result.quarantine_uri)[1]).to_pylist()
    assert [(r["row"], r["reason"]) for r in quarantined] == [
        (8, "expected 13 tab-separated fields, got 10 (line 8)"),
        (9, "expected 13 tab-separated fields, got 5 (line 9)")]
    reposts = pq.read_table(resolve(f"{result.documents_uri.rsplit('/', 1)[0]}/reposts")[1]).to_pylist()
    assert [(r["row"], r["original_doc_id"]) for r in reposts] == [(4, docs["Back the blue"]["doc_id"])]


ZSTD_MEMORY_PROBE = """
import sys
from politune.ingest.readers import Position, decompressed
def rss_mb():
    return next(int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS"))
before, peak, lines = rss_mb(), 0, 0
with open(sys.argv[1], "rb", buffering=0) as raw:
    for _ in decompressed(raw, sys.argv[1], Position()):
        lines += 1
        if lines % 10_000 == 0:
            peak = max(peak, rss_mb() - before)
print(lines, peak)
"""


def test_a_long_window_zstd_file_streams_in_memory_bounded_by_its_window(tmp_path: Path) -> None:
    """Pushshift's frames declare a 2**31-byte window. The decoder keeps at most one window of history, so
    reading holds what was decompressed up to that window, never the file whole: with a 4 MiB window, 64 MiB of
    lines cost a few MiB; with 2**31, up to the 64 MiB read (docs/benchmarks.md states it for real sizes)."""
    import subprocess
    import sys

    import zstandard

    line = json.dumps({"id": "x", "body": "a comment " * 20}) + "\n"
    n = 64 * 2**20 // len(line)
    peak_mb = {}
    for window_log in (22, 31):
        path = tmp_path / f"RC_w{window_log}.zst"
        params = zstandard.ZstdCompressionParameters.from_level(1, window_log=window_log)
        with open(path, "wb") as f, zstandard.ZstdCompressor(compression_params=params).stream_writer(f) as w:
            for _ in range(n // 1000):
                w.write(line.encode() * 1000)
        assert zstandard.get_frame_parameters(path.read_bytes()[:18]).window_size == 2**window_log
        out = subprocess.run([sys.executable, "-c", ZSTD_MEMORY_PROBE, str(path)], capture_output=True, text=True,
                             check=True).stdout.split()
        assert int(out[0]) == n // 1000 * 1000
        peak_mb[window_log] = int(out[1])
    assert peak_mb[22] < 24, peak_mb  # a 4 MiB window: the stream, not the file
    assert peak_mb[31] < 64 + 24, peak_mb  # a 2 GiB window: at most what was read, not the window allocated
