"""Read corpus files (jsonl, jsonl.gz, CSV, Parquet; local or s3://) as a Ray Dataset of staging rows.

A file is streamed in batches, never loaded whole. Every record becomes exactly one staging row:
a Document with its dedup bucket, or a quarantined row with file, row, field and reason. Nothing a
file holds is skipped silently, blank lines included.
"""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data.datasource import FileBasedDatasource

from politune.config import SourceConfig
from politune.ingest.schema import QUARANTINE_PART, RAW_MAX_CHARS, STAGING_SCHEMA
from politune.ingest.shapes import BadRow, RecordMapper, text_hash
from politune.storage import resolve

EXTENSIONS = {
    ".jsonl": "jsonl", ".ndjson": "jsonl", ".jsonl.gz": "jsonl", ".ndjson.gz": "jsonl",
    ".csv": "csv", ".csv.gz": "csv", ".parquet": "parquet", ".pq": "parquet",
}
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are judged by max_text_chars, not csv


@dataclass(frozen=True)
class CorpusFile:
    path: str  # inside its filesystem (no scheme)
    size: int
    format: str  # jsonl | csv | parquet (gzip is detected from the name when the file is opened)
    source: str  # the config's source name


def file_format(path: str, declared: str) -> str | None:
    if declared != "auto":
        return "jsonl" if declared == "jsonl.gz" else declared
    name = path.lower()
    for ext, fmt in EXTENSIONS.items():
        if name.endswith(ext):
            return fmt
    return None


def list_source_files(source: SourceConfig) -> tuple[pafs.FileSystem, list[CorpusFile]]:
    """Every readable file under a source's paths; an error that names the source and path when
    a path does not exist or holds nothing readable."""
    filesystems, files = set(), []
    for uri in source.paths:
        fs, path = resolve(uri)
        filesystems.add(fs.type_name)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"source {source.name!r}: {uri} does not exist")
        if info.type == pafs.FileType.File:
            infos = [info]
        else:
            infos = [i for i in fs.get_file_info(pafs.FileSelector(path, recursive=True))
                     if i.type == pafs.FileType.File and not i.base_name.startswith((".", "_"))]
        for i in sorted(infos, key=lambda i: i.path):
            fmt = file_format(i.path, source.format)
            if fmt is None and info.type == pafs.FileType.File:
                raise ValueError(f"source {source.name!r}: cannot tell the format of {uri}; set "
                                 f"sources[].format to one of jsonl, jsonl.gz, csv, parquet")
            if fmt is not None:
                files.append(CorpusFile(i.path, i.size or 0, fmt, source.name))
        if not files:
            raise FileNotFoundError(f"source {source.name!r}: no jsonl, jsonl.gz, csv or parquet files under {uri}")
    if len(filesystems) > 1:
        raise ValueError(f"source {source.name!r}: all paths of one source must be on one filesystem "
                         "(split local and s3:// paths into two sources)")
    return fs, files


def iter_jsonl(f: Any) -> Iterator[tuple[int, dict[str, Any] | None, str, BadRow | None]]:
    for row, line in enumerate(io.BufferedReader(f), start=1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            yield row, None, line.decode("utf-8", "replace"), BadRow("(line)", f"not valid UTF-8 ({err.reason})")
            continue
        if not text.strip():
            yield row, None, text, BadRow("(line)", "blank line")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            yield row, None, text, BadRow("(line)", f"not valid JSON: {err.msg} at column {err.colno}")
            continue
        if not isinstance(record, dict):
            yield row, None, text, BadRow("(line)", f"expected a JSON object, got {type(record).__name__}")
            continue
        yield row, record, text, None


def iter_csv(f: Any) -> Iterator[tuple[int, dict[str, Any] | None, str, BadRow | None]]:
    reader = csv.reader(io.TextIOWrapper(io.BufferedReader(f), encoding="utf-8", errors="replace", newline=""))
    try:
        header = next(reader)
    except StopIteration:
        return
    row = 0
    while True:
        row += 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            yield row, None, "", BadRow("(row)", f"not valid CSV: {err}")
            continue
        raw = ",".join(fields)
        if len(fields) != len(header):
            yield row, None, raw, BadRow("(row)", f"expected {len(header)} fields, got {len(fields)}")
            continue
        yield row, dict(zip(header, fields, strict=True)), raw, None


def iter_parquet(f: Any, batch_rows: int) -> Iterator[tuple[int, dict[str, Any] | None, str, BadRow | None]]:
    row = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
        for record in batch.to_pylist():
            row += 1
            yield row, record, "", None


class CorpusDatasource(FileBasedDatasource):
    """Ray Data source over the files of one or more corpus sources on one filesystem: files in,
    staging rows out. One datasource for all of them (rather than a union of one per source) lets
    Ray Data fuse each file's read with its write, so a read task never waits on a full queue."""

    def __init__(self, sources: list[SourceConfig], files: list[CorpusFile], filesystem: pafs.FileSystem,
                 max_text_chars: int, num_buckets: int, batch_rows: int) -> None:
        super().__init__([f.path for f in files], filesystem=filesystem)
        self.files = {f.path: f for f in files}
        self.mappers = {s.name: RecordMapper(s, max_text_chars) for s in sources}
        self.num_buckets = num_buckets
        self.batch_rows = batch_rows

    def _open_input_source(self, filesystem: Any, path: str, **open_args: Any) -> pa.NativeFile:
        if self.files[path].format == "parquet":  # Parquet needs random access, not a stream
            return filesystem.open_input_file(path)
        return super()._open_input_source(filesystem, path, **open_args)

    def _read_stream(self, f: pa.NativeFile, path: str) -> Iterator[pa.Table]:
        fmt = self.files[path].format
        mapper = self.mappers[self.files[path].source]
        records = (iter_parquet(f, self.batch_rows) if fmt == "parquet"
                   else iter_csv(f) if fmt == "csv" else iter_jsonl(f))
        batch: list[dict[str, Any]] = []
        for row, record, raw, error in records:
            batch.append(self.stage(mapper, path, row, record, raw, error))
            if len(batch) >= self.batch_rows:
                yield pa.Table.from_pylist(batch, schema=STAGING_SCHEMA)
                batch = []
        if batch:
            yield pa.Table.from_pylist(batch, schema=STAGING_SCHEMA)

    def stage(self, mapper: RecordMapper, path: str, row: int, record: dict[str, Any] | None, raw: str,
              error: BadRow | None) -> dict[str, Any]:
        source = mapper.source.name
        if error is None:
            try:
                doc = mapper.to_document(record)
            except BadRow as bad:
                error = bad
        if error is not None:
            if not raw and record is not None:
                raw = json.dumps(record, ensure_ascii=False, default=str)
            return {"part": QUARANTINE_PART, "source": source, "file": path, "row": row,
                    "field": error.field, "reason": error.reason, "raw": raw.rstrip("\n")[:RAW_MAX_CHARS]}
        digest = text_hash(doc["text"])
        bucket = int(digest[:8], 16) % self.num_buckets
        return {"part": f"b{bucket:05d}", "text_hash": digest, "file": path, "row": row, **doc}
