"""Read corpus files (JSON lines, CSV, TSV, Parquet; gzip, bz2 or zstd; local or s3://) as a Ray Dataset of
staging rows.

A file is streamed in batches, never loaded whole. Every record becomes exactly one staging row:
a Document with its dedup bucket, a re-post naming its original, or a quarantined row with file, row,
field and reason. Nothing a file holds is skipped silently, blank lines included.

A damaged file costs only itself: the rows read before the damage are kept, and the rest of the file
becomes one quarantined row (field `(file)`) naming where reading stopped and why. That covers a
truncated or corrupt compressed stream, a file that is not Parquet or whose footer is cut, a file that
vanished or became unreadable after it was listed, and a zero-byte file. A storage outage is not
damage: it is raised, so Ray Data retries the read (storage.is_outage).

Text files in UTF-8 (with or without a byte-order mark) and UTF-16/32 (with a BOM, or UTF-16 without
one) are read; the encoding is told from the file's first bytes.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from ray.data._internal.util import iterate_with_retry
from ray.data.block import BlockMetadata
from ray.data.context import DataContext
from ray.data.datasource import Datasource, ReadTask
from ray.data.datasource.file_based_datasource import (
    _unwrap_s3_serialization_workaround,
    _wrap_s3_serialization_workaround,
)

from politune.config import SourceConfig
from politune.engines.metrics import StageMetrics
from politune.ingest.pieces import ByteRange, Piece
from politune.ingest.schema import QUARANTINE_PART, RAW_MAX_CHARS, REPOST_PART, STAGING_SCHEMA
from politune.ingest.shapes import BadRow, RecordMapper, Repost, make_doc_id, text_hash
from politune.storage import OUTAGE_MARKERS, is_outage, resolve

FORMAT_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet",
                   ".pq": "parquet"}
# A line that starts a Truth Social dataset row: an integer id, a tab, a timestamp. Its text column is not quoted,
# so a line break in a post splits the row; a line that does not start this way continues the row before it.
TSV_RECORD_START = re.compile(r"^\d+\t\d{4}-\d\d-\d\d")
# Compression is told from a file's first bytes whatever its name (a name only says what to expect).
COMPRESSION_SUFFIXES = {".gz": "gzip", ".bz2": "bz2", ".zst": "zstd", ".zstd": "zstd"}
MAGIC_BYTES = {"gzip": (b"\x1f\x8b",), "bz2": tuple(b"BZh" + bytes([d]) for d in b"123456789"),
               "zstd": (b"\x28\xb5\x2f\xfd",)}
# Pushshift's Reddit dumps are zstd frames with windows of up to 2**31 bytes; decoding one holds its window in
# memory, so this is the most a zstd file can take (zstd's own default, 2**27, refuses those dumps).
ZSTD_MAX_WINDOW = 2**31
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))  # long texts are judged by max_text_chars, not csv


@dataclass(frozen=True)
class CorpusFile:
    path: str  # inside its filesystem (no scheme)
    size: int
    format: str  # jsonl | csv | parquet (compression is told from the first bytes when the file is opened)
    source: str  # the config's source name


def file_format(path: str, declared: str) -> str | None:
    """jsonl, csv or parquet: as declared, else from the name (a compression suffix aside). A bare compressed file,
    like Politosphere's `comments_2019-05.bz2` or Pushshift's `RC_2019-05.zst`, holds JSON lines."""
    if declared != "auto":
        return "jsonl" if declared == "jsonl.gz" else declared
    name = path.lower()
    suffix = next((s for s in COMPRESSION_SUFFIXES if name.endswith(s)), "")
    base = name.removesuffix(suffix)
    for ext, fmt in FORMAT_SUFFIXES.items():
        if base.endswith(ext):
            return fmt
    return "jsonl" if suffix and not base.endswith(".tar") else None


def decompressed(f: Any, path: str, at: Position) -> io.BufferedIOBase:
    """A file's bytes, decompressed when its first bytes are gzip, bz2 or zstd; streamed, never whole. A name that
    promises a compression the bytes do not have is damage (a truncated or mislabelled download)."""
    stream = io.BufferedReader(f)
    head = stream.peek(4)[:4]
    codec = next((c for c, magics in MAGIC_BYTES.items() if head.startswith(magics)), None)
    promised = next((c for s, c in COMPRESSION_SUFFIXES.items() if path.lower().endswith(s)), None)
    if promised and codec != promised:
        raise ValueError(f"named as {promised} but its first bytes are {'not compressed' if codec is None else codec} "
                         f"({head!r})")
    at.codec = codec
    if codec == "gzip":
        # Python's gzip hands over every byte it could decompress before a cut-off stream ends; Arrow's
        # decompressing stream drops its last chunk, and with it the last whole rows of a partial download.
        return gzip.GzipFile(fileobj=stream, mode="rb")
    if codec == "bz2":
        return bz2.BZ2File(stream)
    if codec == "zstd":
        import zstandard  # only where a zstd file is read

        reader = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW).stream_reader(
            stream, read_across_frames=True)
        return io.BufferedReader(reader)
    return stream


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


Record = tuple[int, dict[str, Any] | None, str, BadRow | None]  # (row, record, raw text, why it is bad)


# What reading a damaged file raises: a cut or corrupt stream (OSError, EOFError, zlib / zstd errors), bytes that
# are not what the format says (ValueError: UnicodeDecodeError, Arrow's ArrowInvalid), any other Arrow error.
FILE_DAMAGE = (OSError, EOFError, ValueError, zlib.error, pa.ArrowException)


def is_file_damage(err: BaseException) -> bool:
    """FILE_DAMAGE, or a zstd stream's error (zstandard is imported only where a zstd file is read)."""
    zstandard = sys.modules.get("zstandard")
    return isinstance(err, FILE_DAMAGE) or (zstandard is not None and isinstance(err, zstandard.ZstdError))


@dataclass
class Position:
    """How far reading a file got: the last row read and, for line-based files, the byte after it."""
    row: int = 0
    byte: int | None = None
    notes: list[str] = field(default_factory=list)  # the text encoding, when not UTF-8
    codec: str | None = None  # the compression, when compressed
    byte_base: int = 0  # a byte range's: where its own bytes (after the header it is read with) sit in the file

    def where(self) -> str:
        at = f"row {self.row + 1}"
        if self.byte is None:
            return at
        stream = f" of the {self.codec}-decompressed stream" if self.codec else ""
        return f"{at} (byte {self.byte + self.byte_base:,}{stream})"


def text_encoding(stream: io.BufferedIOBase) -> tuple[str, int]:
    """(encoding, bytes of byte-order mark) of a text file, from its first bytes."""
    head = stream.peek(4)[:4]
    for bom, encoding in ((codecs.BOM_UTF8, "utf-8"), (codecs.BOM_UTF32_LE, "utf-32"),
                          (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF16_LE, "utf-16"),
                          (codecs.BOM_UTF16_BE, "utf-16")):
        if head.startswith(bom):
            return encoding, len(bom) if encoding == "utf-8" else 0  # Python's utf-16/32 read their BOM
    if len(head) >= 2 and head[0] and not head[1]:
        return "utf-16-le", 0  # UTF-16 without a BOM: ASCII text has every other byte zero
    if len(head) >= 2 and not head[0] and head[1]:
        return "utf-16-be", 0
    return "utf-8", 0


def buffered(f: Any) -> io.BufferedIOBase:
    """A file as a buffered stream. A GzipFile already is one: wrapping it again would fill the outer buffer with
    reads that lose what they had when the compressed stream turns out cut short."""
    return f if isinstance(f, (io.BufferedReader, gzip.GzipFile, bz2.BZ2File)) else io.BufferedReader(f)


def byte_lines(stream: io.BufferedIOBase, chunk_bytes: int = 1 << 16) -> Iterator[bytes]:
    """The lines of a binary stream, each with its newline. Unlike iterating the stream, every whole line
    before a failing read is handed over first: a buffered readline that fails midway loses what it had read."""
    pending = b""
    while chunk := stream.read1(chunk_bytes):
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            yield line + b"\n"
    if pending:
        yield pending


def iter_jsonl(f: Any, at: Position) -> Iterator[Record]:
    stream = buffered(f)
    encoding, bom = text_encoding(stream)
    if encoding == "utf-8":
        # bytes, line by line: a line that is not UTF-8 is quarantined alone, the file goes on
        stream.read(bom)
        lines: Iterator[bytes | str] = byte_lines(stream)
        at.byte = bom
    else:
        lines = iter(io.TextIOWrapper(stream, encoding=encoding, newline=""))
        at.notes.append(encoding)
    for row, line in enumerate(lines, start=1):
        if isinstance(line, bytes):
            at.byte = (at.byte or 0) + len(line)
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as err:
                at.row = row
                yield row, None, line.decode("utf-8", "replace"), BadRow("(line)", f"not valid UTF-8 ({err.reason})")
                continue
        else:
            text = line
        at.row = row
        yield _json_record(row, text)


def _json_record(row: int, text: str) -> Record:
    if not text.strip():
        return row, None, text, BadRow("(line)", "blank line")
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        return row, None, text, BadRow("(line)", f"not valid JSON: {err.msg} at column {err.colno}")
    if not isinstance(record, dict):
        return row, None, text, BadRow("(line)", f"expected a JSON object, got {type(record).__name__}")
    return row, record, text, None


def iter_csv(f: Any, at: Position) -> Iterator[Record]:
    stream = buffered(f)
    encoding, _ = text_encoding(stream)
    if encoding == "utf-8":  # utf-8-sig drops a BOM; a stray bad byte becomes U+FFFD in its field
        text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="replace", newline="")
    else:
        text = io.TextIOWrapper(stream, encoding=encoding, newline="")
        at.notes.append(encoding)
    reader = csv.reader(text)
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
            at.row = row
            yield row, None, "", BadRow("(row)", f"not valid CSV: {err}")
            continue
        at.row = row
        raw = ",".join(fields)
        if len(fields) != len(header):
            yield row, None, raw, BadRow("(row)", f"expected {len(header)} fields, got {len(fields)}")
            continue
        yield row, dict(zip(header, fields, strict=True)), raw, None


def iter_text(f: Any, path: str, fmt: str, at: Position, rejoin_tsv: bool = False) -> Iterator[Record]:
    """A JSONL, CSV or TSV file's records, decompressed first if it is compressed (a failure there is the file's
    damage, raised on the first record)."""
    stream = decompressed(f, path, at)
    if fmt == "tsv":
        yield from iter_tsv(stream, at, rejoin_tsv)
    else:
        yield from iter_csv(stream, at) if fmt == "csv" else iter_jsonl(stream, at)


def iter_tsv(f: Any, at: Position, rejoin: bool, first_line: int = 2) -> Iterator[Record]:
    """Tab-separated lines without quoting, the first a header; `row` is the file line a record starts on. With
    `rejoin` (the Truth Social dataset), a line that does not start a record (TSV_RECORD_START) continues the one
    before it, joined by the line break it lost; a record still short of fields is quarantined with its lines.
    `first_line`: the file line of the first line after the header (a later piece's, pieces.py)."""
    stream = buffered(f)
    encoding, bom = text_encoding(stream)
    if encoding != "utf-8":
        raise ValueError(f"TSV in {encoding} is not supported; convert it to UTF-8")
    stream.read(bom)
    at.byte = bom
    lines = byte_lines(stream)
    try:
        header = next(lines).decode("utf-8").rstrip("\r\n").split("\t")
    except StopIteration:
        return
    pending: tuple[int, int, str] | None = None  # (first line, last line, text)

    def record(first: int, last: int, text: str) -> Record:
        fields = text.split("\t")
        where = f"line {first}" if first == last else f"lines {first}-{last}"
        if len(fields) != len(header):
            return first, None, text, BadRow("(row)", f"expected {len(header)} tab-separated fields, got "
                                                      f"{len(fields)} ({where})")
        row = dict(zip(header, fields, strict=True))
        if first != last:
            row["_rejoined_lines"] = last - first + 1
        return first, row, text, None

    for number, raw in enumerate(lines, start=first_line):
        at.byte = (at.byte or 0) + len(raw)
        try:
            line = raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as err:
            if pending:
                yield record(*pending)
                pending = None
            at.row = number
            yield number, None, raw.decode("utf-8", "replace"), BadRow("(line)", f"not valid UTF-8 ({err.reason})")
            continue
        if pending and rejoin and not TSV_RECORD_START.match(line):
            pending = (pending[0], number, f"{pending[2]}\n{line}")
            continue
        if pending:
            yield record(*pending)
        at.row = number - 1
        pending = (number, number, line)
    if pending:
        yield record(*pending)


def iter_parquet(f: Any, at: Position, batch_rows: int, row_groups: tuple[int, ...] | None = None) -> Iterator[Record]:
    row = 0
    for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, row_groups=row_groups):
        for record in batch.to_pylist():
            row += 1
            at.row = row
            yield row, record, "", None


class UnreadableFile:
    """Stands in for a file that could not be opened, so its read task records it instead of failing."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __enter__(self) -> UnreadableFile:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class CorpusDatasource(Datasource):
    """Ray Data source over the files of one or more corpus sources on one filesystem: pieces of files in (a
    whole file, or a byte range or row groups of a big one: pieces.py), staging rows out, in tables of
    `batch_rows` handed on as they are read. Read tasks take runs of consecutive pieces."""

    def __init__(self, sources: list[SourceConfig], files: list[CorpusFile], filesystem: pafs.FileSystem,
                 max_text_chars: int, num_buckets: int, batch_rows: int, run_id: str = "",
                 pieces: list[Piece] | None = None) -> None:
        super().__init__()
        self.files = {f.path: f for f in files}
        self.mappers = {s.name: RecordMapper(s, max_text_chars) for s in sources}
        self.num_buckets = num_buckets
        self.batch_rows = batch_rows
        self.run_id = run_id
        # a file gone by now is not dropped: vanished_files() names it, and the stage quarantines it
        infos = filesystem.get_file_info([f.path for f in files])
        self.found = {i.path for i in infos if i.type != pafs.FileType.NotFound}
        self.pieces = [p for p in (pieces or [Piece(f.path, f.size) for f in files]) if p.path in self.found]
        self.filesystem = _wrap_s3_serialization_workaround(filesystem)

    def vanished_files(self) -> list[CorpusFile]:
        """Listed files that were gone when the datasource looked them up (before any read task ran)."""
        return [f for f in self.files.values() if f.path not in self.found]

    def estimate_inmemory_data_size(self) -> int:
        return sum(p.size for p in self.pieces)

    def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                       data_context: DataContext | None = None) -> list[ReadTask]:
        retried = [*(data_context or DataContext.get_current()).retried_io_errors, *OUTAGE_MARKERS]
        tasks = []
        for run in np.array_split(np.arange(len(self.pieces)), max(1, min(parallelism, len(self.pieces)))):
            pieces = [self.pieces[i] for i in run]
            if pieces:
                meta = BlockMetadata(num_rows=None, size_bytes=sum(p.size for p in pieces), exec_stats=None,
                                     input_files=tuple(dict.fromkeys(p.path for p in pieces)))
                tasks.append(ReadTask(partial(self._read_pieces, pieces, retried), meta,
                                      per_task_row_limit=per_task_row_limit))
        return tasks

    def _read_pieces(self, pieces: list[Piece], retried: list[str]) -> Iterator[pa.Table]:
        fs = _unwrap_s3_serialization_workaround(self.filesystem)
        metrics = StageMetrics(self.run_id, "ingest")
        for piece in pieces:
            # a storage outage is raised and the piece read again, skipping the tables already handed on
            for table in iterate_with_retry(partial(self._read_piece, fs, piece), f"read {piece.path}",
                                            match=retried):
                metrics.count("rows_read", len(table))
                yield table

    def _read_piece(self, fs: pafs.FileSystem, piece: Piece) -> Iterator[pa.Table]:
        f = self._open(fs, piece)
        try:
            yield from self._read_rows(f, piece)
        finally:
            if not isinstance(f, UnreadableFile):
                f.close()

    def _open(self, fs: pafs.FileSystem, piece: Piece) -> pa.NativeFile | UnreadableFile:
        try:
            if self.files[piece.path].format == "parquet" or not piece.whole:  # random access: a footer, a range
                return fs.open_input_file(piece.path)
            # the compressed bytes as they are: iter_text decompresses (see decompressed() why)
            return fs.open_input_stream(piece.path, compression=None, buffer_size=1 << 20)
        except OSError as err:
            if is_outage(err):
                raise  # the read is retried
            if isinstance(err, FileNotFoundError):
                return UnreadableFile(f"vanished after it was listed: {_error_text(err)}")
            return UnreadableFile(f"could not be opened: {_error_text(err)}")

    def _read_rows(self, f: pa.NativeFile | UnreadableFile, piece: Piece) -> Iterator[pa.Table]:
        path = piece.path
        corpus_file = self.files[path]
        mapper = self.mappers[corpus_file.source]
        if isinstance(f, UnreadableFile) or corpus_file.size == 0:
            reason = f.reason if isinstance(f, UnreadableFile) else "empty file (0 bytes)"
            yield pa.Table.from_pylist([file_row(corpus_file, 1, reason)], schema=STAGING_SCHEMA)
            return
        at = Position(byte_base=piece.start - piece.header_end if piece.start else 0)
        fmt, offset = corpus_file.format, piece.row_offset
        rejoin = mapper.source.shape == "truthsocial_tsv"
        if fmt == "parquet":
            records = iter_parquet(f, at, self.batch_rows, piece.row_groups)
        elif piece.whole:
            records = iter_text(f, path, fmt, at, rejoin_tsv=rejoin)
        else:  # a byte range of an uncompressed UTF-8 file
            stream = io.BufferedReader(ByteRange(f, piece), buffer_size=1 << 20)
            if fmt == "tsv":  # numbers its lines itself: they are in its reasons
                records, offset = iter_tsv(stream, at, rejoin, first_line=2 + offset), 0
            else:
                records = iter_csv(stream, at) if fmt == "csv" else iter_jsonl(stream, at)
        batch: list[dict[str, Any]] = []
        while True:
            try:
                row, record, raw, error = next(records)
            except StopIteration:
                break
            except Exception as err:  # damage to the file: the rows read so far are kept
                if not is_file_damage(err):
                    raise  # a defect of ours, not of the file
                if is_outage(err):
                    raise  # not the file's fault: the read is retried, skipping the tables already handed on
                encoding = "".join(f", read as {n}" for n in at.notes)
                at.row += offset
                batch.append(file_row(corpus_file, at.row + 1,
                                      f"damaged: reading stopped at {at.where()}{encoding}: {_error_text(err)}"))
                break
            batch.append(self.stage(mapper, path, row + offset, record, raw, error))
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
            except Repost as repost:
                original = None if repost.original_id is None else make_doc_id(source, repost.original_id, "")
                return {"part": REPOST_PART, "source": source, "file": path, "row": row, "field": repost.field,
                        "reason": original, "raw": ""}
        if error is not None:
            if not raw and record is not None:
                raw = json.dumps(record, ensure_ascii=False, default=str)
            return {"part": QUARANTINE_PART, "source": source, "file": path, "row": row,
                    "field": error.field, "reason": error.reason, "raw": raw.rstrip("\n")[:RAW_MAX_CHARS]}
        digest = text_hash(doc["text"])
        bucket = int(digest[:8], 16) % self.num_buckets
        return {"part": f"b{bucket:05d}", "text_hash": digest, "file": path, "row": row, **doc}


def file_row(corpus_file: CorpusFile, row: int, reason: str) -> dict[str, Any]:
    """A staging row that quarantines a file, or the rest of it from `row` on, with the reason."""
    return {"part": QUARANTINE_PART, "source": corpus_file.source, "file": corpus_file.path, "row": row,
            "field": "(file)", "reason": reason, "raw": ""}


def _error_text(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
