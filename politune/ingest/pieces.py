"""One big file, many readers: a file larger than a read task is cut into pieces, each read by its own task.

An uncompressed JSON-lines, CSV or TSV file is cut into byte ranges that begin where a record begins, so each
record is read by exactly one task: after a line break (JSON lines, TSV), after a line break outside any quoted
field (CSV, whose quoted fields may hold line breaks), after a line break followed by a record's first line
(the Truth Social TSV, whose unquoted texts may). A Parquet file is cut by row groups.

Where a piece begins is found by one streaming pass over the file before it is read (`plan_pieces`, a Ray task a
big file), which also counts the rows before each piece, so that a piece's rows carry the row numbers they have in
the file: a bad row is named by its place in the file, wherever it was read. The pass reads the file once more
than reading it does (on S3, one more download): counting line breaks runs at several hundred MB/s a core, far
faster than the parse that follows.

A compressed stream (gzip, bz2, zstd) cannot be cut: it decompresses only from its start, so it stays one piece
and one task. So does a text file that is not UTF-8 (UTF-16's line breaks are two bytes), and one that cannot be
read here: its reader names the damage as for any file.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from politune.storage import is_outage

SCAN_CHUNK_BYTES = 4 << 20
# A candidate boundary of the Truth Social TSV is checked against the start of the line after it: that many bytes
# of it must be in the chunk (TSV_RECORD_START needs about 30).
TSV_LOOKAHEAD = 64
LINE_BREAK, QUOTE = ord("\n"), ord('"')
TEXT_MAGIC = (b"\x1f\x8b", b"BZh", b"\x28\xb5\x2f\xfd", b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class Piece:
    """What one read task reads of a file: all of it (start 0, end None), a byte range, or Parquet row groups.
    `row_offset` is added to the row numbers its reader counts (from the piece's own start) to give the file's;
    `header_end` (CSV, TSV) the bytes of the file's header, read before a later piece's range."""
    path: str
    size: int  # bytes this piece covers (what read tasks are balanced by)
    start: int = 0
    end: int | None = None
    row_offset: int = 0
    header_end: int = 0
    row_groups: tuple[int, ...] | None = None

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None and self.row_groups is None


def plan_pieces(fs: pafs.FileSystem, path: str, size: int, fmt: str, piece_bytes: int, record_start: re.Pattern | None
                ) -> list[Piece]:
    """The pieces of one file: one (the whole file) unless it is larger than `piece_bytes` and can be cut. A
    `record_start` pattern (the Truth Social TSV) says which lines begin a record. An outage raises; anything else
    that stops the pass leaves the file whole, for its reader to name."""
    whole = [Piece(path, size)]
    if size <= piece_bytes:
        return whole
    try:
        if fmt == "parquet":
            with fs.open_input_file(path) as f:
                return parquet_pieces(path, pq.ParquetFile(f).metadata, piece_bytes) or whole
        with fs.open_input_stream(path, compression=None) as f:
            return text_pieces(path, size, fmt, f, piece_bytes, record_start) or whole
    except (OSError, ValueError, pa.ArrowException) as err:
        if is_outage(err):
            raise
        return whole


def parquet_pieces(path: str, meta: pq.FileMetaData, piece_bytes: int) -> list[Piece]:
    """Runs of consecutive row groups of about `piece_bytes` (compressed) each."""
    pieces: list[Piece] = []
    groups: list[int] = []
    group_bytes = rows_before = rows_in = 0
    for i in range(meta.num_row_groups):
        rg = meta.row_group(i)
        groups.append(i)
        group_bytes += sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
        rows_in += rg.num_rows
        if group_bytes >= piece_bytes or i == meta.num_row_groups - 1:
            pieces.append(Piece(path, group_bytes, row_offset=rows_before, row_groups=tuple(groups)))
            rows_before += rows_in
            groups, group_bytes, rows_in = [], 0, 0
    return pieces if len(pieces) > 1 else []


def text_pieces(path: str, size: int, fmt: str, f: Any, piece_bytes: int, record_start: re.Pattern | None
                ) -> list[Piece]:
    """Byte ranges of about `piece_bytes`, from one pass over the file (see the module's doc). None where the file
    is compressed or not UTF-8."""
    targets = list(range(piece_bytes, size, piece_bytes))
    boundaries: list[tuple[int, int]] = []  # (byte a piece starts at, rows before it as its format counts them)
    offset = lines = records = 0
    header_end: int | None = None
    in_quotes = False
    while chunk := f.read(SCAN_CHUNK_BYTES):
        if offset == 0 and (chunk.startswith(TEXT_MAGIC) or (len(chunk) > 1 and not (chunk[0] and chunk[1]))):
            return []  # compressed, or UTF-16/32: one piece
        data = np.frombuffer(chunk, dtype=np.uint8)
        breaks = np.flatnonzero(data == LINE_BREAK)
        if fmt == "csv":  # a line break ends a record where the quotes before it pair up
            quotes_so_far = np.cumsum(data == QUOTE, dtype=np.uint8)  # parity survives the wrap at 256
            ends = breaks[(quotes_so_far[breaks] + in_quotes) % 2 == 0]
            in_quotes = bool((int(quotes_so_far[-1]) + in_quotes) % 2)
        else:
            ends = breaks
        if header_end is None and len(ends):
            header_end = offset + int(ends[0]) + 1
        while targets and targets[0] <= offset + len(chunk):
            # the first record end at or after the target's byte - 1: the piece starts right after it
            at = int(np.searchsorted(ends, targets[0] - 1 - offset))
            while at < len(ends) and record_start is not None and not _starts_record(chunk, int(ends[at]) + 1,
                                                                                    record_start):
                at += 1
            if at >= len(ends):
                break  # none in this chunk: look on in the next
            start = offset + int(ends[at]) + 1
            if start >= size:
                targets.clear()
                break
            before = (lines + int(np.searchsorted(breaks, ends[at], side="right")) if fmt != "csv"
                      else records + at + 1)
            boundaries.append((start, before))
            targets = [t for t in targets if t > start]
        lines += len(breaks)
        records += len(ends)
        offset += len(chunk)
    if not boundaries:
        return []
    starts = [0, *(b for b, _ in boundaries)]
    ends_at = [*(b for b, _ in boundaries), None]
    header = header_end or 0
    pieces = []
    for k, (start, end) in enumerate(zip(starts, ends_at, strict=True)):
        before = 0 if k == 0 else boundaries[k - 1][1]
        # jsonl rows are lines from 1; csv rows are records after the header; tsv rows are lines, the header line 1
        row_offset = before if fmt == "jsonl" or k == 0 else before - 1
        pieces.append(Piece(path, (end or size) - start, start, end, row_offset, 0 if fmt == "jsonl" else header))
    return pieces


def _starts_record(chunk: bytes, at: int, record_start: re.Pattern) -> bool:
    if at + TSV_LOOKAHEAD > len(chunk):
        return False  # too near the chunk's end to tell: a later line break serves
    return bool(record_start.match(chunk[at:at + TSV_LOOKAHEAD].decode("utf-8", "replace")))


class ByteRange(io.RawIOBase):
    """A piece of a file as a stream: the file's header bytes (CSV, TSV), then bytes [start, end)."""

    def __init__(self, f: Any, piece: Piece) -> None:
        super().__init__()
        self.f = f
        self.header = f.read_at(piece.header_end, 0) if piece.header_end and piece.start else b""
        self.pos, self.end = piece.start, piece.end
        f.seek(piece.start)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.header:
            n = min(len(view), len(self.header))
            view[:n], self.header = self.header[:n], self.header[n:]
            return n
        want = len(view) if self.end is None else min(len(view), self.end - self.pos)
        if want <= 0:
            return 0
        data = self.f.read(want)
        view[:len(data)] = data
        self.pos += len(data)
        return len(data)
