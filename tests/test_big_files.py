"""One big file, many readers (politune/ingest/pieces.py): a file cut into pieces reads as the whole file does, row
for row, whatever the format; and a generated big file with known bad rows and duplicates is accounted for exactly
when ingest reads it in pieces side by side."""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
from test_ingest import TRUTHS_HEADER, truth

from politune.config import build_config
from politune.corpus.generate import write_big_jsonl
from politune.ingest import ingest_corpus
from politune.ingest import stage as ingest_stage
from politune.ingest.pieces import plan_pieces
from politune.ingest.readers import TSV_RECORD_START, CorpusDatasource, CorpusFile
from politune.ingest.schema import QUARANTINE_PART
from politune.storage import resolve

FIELDS = {"text": "message", "id": "uid", "created_at": "when", "author": None, "label": None}


def jsonl_file(path: Path, rng: random.Random) -> None:
    lines = []
    for i in range(400):
        kind = rng.random()
        if kind < 0.05:
            lines.append("{broken")
        elif kind < 0.08:
            lines.append("")
        else:
            lines.append(json.dumps({"uid": f"j{i}", "message": f"post {i} " + "word " * rng.randrange(30),
                                     "when": "1700000000"}))
    path.write_text("\n".join(lines) + "\n")


def csv_file(path: Path, rng: random.Random) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["uid", "message", "when"])
    for i in range(400):
        text = f"post {i} " + "word " * rng.randrange(30)
        if rng.random() < 0.2:
            text += '\nover "two" lines\n\nor four'  # line breaks and doubled quotes inside a quoted field
        writer.writerow([f"c{i}", text, "1700000000"] if rng.random() > 0.05 else [f"c{i}", text])
    path.write_text(buffer.getvalue())


def tsv_file(path: Path, rng: random.Random) -> None:
    lines = ["\t".join(TRUTHS_HEADER)]
    for i in range(1, 400):
        text = f"truth {i} " + "word " * rng.randrange(30)
        if rng.random() < 0.2:
            text += "\nits second line\nand a third"  # unquoted: the lines are re-joined
        lines.append(truth(i, text) if rng.random() > 0.05 else f"{i}\t2022-01-01 broken")
    path.write_text("\n".join(lines) + "\n")


def parquet_file(path: Path, rng: random.Random) -> None:
    rows = [{"uid": f"p{i}", "message": f"post {i} " + "word " * rng.randrange(30) if i % 17 else "",
             "when": "1700000000"} for i in range(400)]
    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=25)


@pytest.mark.parametrize(("fmt", "write", "shape"), [
    ("jsonl", jsonl_file, "generic"), ("csv", csv_file, "generic"), ("tsv", tsv_file, "truthsocial_tsv"),
    ("parquet", parquet_file, "generic")])
def test_a_file_read_in_pieces_gives_the_rows_the_whole_file_gives(tmp_path: Path, fmt: str, write, shape: str) -> None:
    path = tmp_path / f"posts.{fmt}"
    write(path, random.Random(0))
    source = {"name": "s", "paths": [str(path)], "shape": shape}
    if shape == "generic":
        source["fields"] = FIELDS
    cfg = build_config({"run_id": "p", "storage_root": str(tmp_path / "runs"), "sources": [source]})
    fs = pafs.LocalFileSystem()
    file = CorpusFile(str(path), path.stat().st_size, fmt, "s")
    pieces = plan_pieces(fs, file.path, file.size, fmt, 1024, TSV_RECORD_START if shape != "generic" else None)
    assert len(pieces) > 5 and pieces[0].start == 0
    if fmt != "parquet":  # byte ranges that tile the file
        assert [p.start for p in pieces[1:]] == [p.end for p in pieces[:-1]] and pieces[-1].end is None

    def read(pieces_or_none) -> list[tuple]:
        datasource = CorpusDatasource(cfg.sources, [file], fs, 10_000, 4, 50, pieces=pieces_or_none)
        # each read task called here, in this process: the same code a Ray worker runs
        tables = [t for task in datasource.get_read_tasks(len(datasource.pieces)) for t in task()]
        rows = pa.concat_tables(tables).to_pylist()
        return sorted((r["row"], r["part"], r["field"] or "", r["reason"] or "", r["text_hash"] or "") for r in rows)

    whole, in_pieces = read(None), read(pieces)
    assert in_pieces == whole  # every row once, with its row number in the file and the same verdict
    assert len({r[0] for r in whole}) == len(whole)
    assert any(part == QUARANTINE_PART for _, part, *_ in whole) and any(part.startswith("b") for _, part, *_ in whole)


def test_compressed_and_small_files_stay_whole(tmp_path: Path) -> None:
    import gzip

    path = tmp_path / "posts.jsonl"
    jsonl_file(path, random.Random(1))
    packed = tmp_path / "posts.jsonl.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    fs = pafs.LocalFileSystem()
    size = packed.stat().st_size
    assert [(p.start, p.end) for p in plan_pieces(fs, str(packed), size, "jsonl", 256, None)] == [(0, None)]
    size = path.stat().st_size
    assert [(p.start, p.end) for p in plan_pieces(fs, str(path), size, "jsonl", size, None)] == [(0, None)]


@pytest.mark.integration
def test_a_big_file_is_read_by_many_tasks_and_every_row_accounted_for(ray_local, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "comments.jsonl"
    written = write_big_jsonl(path, 12 * 2**20)
    data = path.read_bytes()
    lines = data.count(b"\n")  # independent of ingest and of the generator's own count
    assert lines == written["lines"]
    bad_rows = [i for i, line in enumerate(data.split(b"\n")[:-1], start=1) if line.startswith(b"{not json")]

    planned = []
    cut = ingest_stage.cut_big_files
    monkeypatch.setattr(ingest_stage, "cut_big_files", lambda *a: planned.extend(cut(*a)) or planned)
    cfg = build_config({"run_id": "big", "storage_root": str(tmp_path / "runs"), "ray": {"num_cpus": 2},
                        "sources": [{"name": "reddit", "paths": [str(path)], "shape": "politosphere"}],
                        "ingest": {"read_task_mb": 1, "write_rows": 20_000}})
    result = ingest_corpus(cfg)
    assert len(planned) >= 12  # a piece of about 1 MiB each
    # the read tasks hand their rows to separate write tasks: fused, a task's writer would take all its rows at once
    log = Path(ray_local._private.worker._global_node.get_logs_dir_path()) / "ray-data" / "ray-data.log"
    [plan] = [line for line in log.read_text().splitlines() if "Execution plan" in line and "ReadCorpus" in line][-1:]
    assert "TaskPoolMapOperator[ReadCorpus] -> TaskPoolMapOperator[Write]" in plan, plan

    c = result.counts["reddit"]
    assert c["read"] == lines == c["kept"] + c["duplicates"] + c["reposts"] + c["quarantined"]
    assert c["quarantined"] == written["bad_lines"] + written["deleted"]
    assert c["duplicates"] == written["repeated"]
    quarantined = pq.read_table(resolve(result.quarantine_uri)[1]).to_pylist()
    # rows named by their line in the file, whichever piece they were read in
    assert sorted(r["row"] for r in quarantined if r["reason"].startswith("not valid JSON")) == bad_rows
    blank = [r["row"] for r in quarantined if r["reason"] == "blank line"]
    assert all(data.split(b"\n")[row - 1] == b"" for row in blank) and len(blank) == written["copies"]


@pytest.mark.integration
def test_a_big_file_on_s3_is_read_in_pieces_too(ray_local, s3_bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    path = tmp_path / "comments.jsonl"
    written = write_big_jsonl(path, 3 * 2**20)
    boto3.client("s3").upload_file(str(path), s3_bucket, "big/comments.jsonl")
    planned = []
    cut = ingest_stage.cut_big_files
    monkeypatch.setattr(ingest_stage, "cut_big_files", lambda *a: planned.extend(cut(*a)) or planned)
    cfg = build_config({"run_id": "big-s3", "storage_root": str(tmp_path / "runs"),
                        "sources": [{"name": "reddit", "paths": [f"s3://{s3_bucket}/big/comments.jsonl"],
                                     "shape": "politosphere"}],
                        "ingest": {"read_task_mb": 0.5}})
    c = ingest_corpus(cfg).counts["reddit"]
    assert len(planned) >= 6 and planned[1].start > 0  # byte ranges read from S3
    assert c["read"] == written["lines"] == c["kept"] + c["duplicates"] + c["quarantined"]
    assert (c["quarantined"], c["duplicates"]) == (written["bad_lines"] + written["deleted"], written["repeated"])
