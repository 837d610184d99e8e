"""Exact-duplicate removal, one hash bucket at a time.

The read pass routed every document to a bucket by the hash of its normalised text, so all copies
of a text share a bucket and a bucket fits in one task's memory whatever the corpus size. Within a
bucket the copy kept is the first by (source, file, row): the same one on every rerun.

Ray Data has no exact, deterministic "drop duplicates by key" that keeps one named row per key, so
this pass is plain Ray tasks over the bucket folders of the staging write.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray

from politune.ingest.schema import (
    DOCUMENT_COLUMNS,
    DOCUMENT_SCHEMA,
    QUARANTINE_COLUMNS,
    QUARANTINE_SCHEMA,
    REPOST_SCHEMA,
)
from politune.ingest.shapes import WHERE_REASON

REJOINED_KEY = '"_rejoined_lines"'  # in a document's meta: a TSV row re-joined from lines its text had split

_ORDER = [("text_hash", "ascending"), ("source", "ascending"), ("file", "ascending"), ("row", "ascending")]


def first_of_each_text(table: pa.Table) -> np.ndarray:
    """Indices of the rows to keep: one row per text_hash, the first by (source, file, row).
    Sorts only the key columns, so the full table is never copied here."""
    keys = table.select(["text_hash", "source", "file", "row"])
    order = pc.sort_indices(keys, sort_keys=_ORDER).to_numpy()
    hashes = keys["text_hash"].take(order).to_numpy(zero_copy_only=False)
    first = np.ones(len(hashes), dtype=bool)
    first[1:] = hashes[1:] != hashes[:-1]
    return order[first]


@ray.remote(num_cpus=1)
def dedup_bucket(fs: pafs.FileSystem, bucket_dir: str, out_path: str, dedup: bool) -> dict[str, Any]:
    """Write one bucket's surviving documents to out_path (sorted by doc_id); return counts by source."""
    table = pq.read_table(bucket_dir, filesystem=fs, columns=["text_hash", "file", "row", *DOCUMENT_COLUMNS])
    sources = table["source"]
    rejoined = Counter(sources.filter(pc.match_substring(table["meta"], REJOINED_KEY)).to_pylist())
    keep = first_of_each_text(table) if dedup else np.arange(len(table))
    keep = keep[pc.sort_indices(table["doc_id"].take(keep)).to_numpy()]  # output sorted by doc_id
    kept = table.select(DOCUMENT_COLUMNS).take(keep).cast(DOCUMENT_SCHEMA)
    del table
    pq.write_table(kept, out_path, filesystem=fs)
    staged = Counter(sources.to_pylist())
    kept_by_source = Counter(kept["source"].to_pylist())
    del kept, sources
    pa.default_memory_pool().release_unused()  # this worker lives on: give the bucket's memory back
    return {
        "staged": dict(staged),
        "kept": dict(kept_by_source),
        "duplicates": {s: staged[s] - kept_by_source.get(s, 0) for s in staged if staged[s] > kept_by_source.get(s, 0)},
        "rejoined": dict(rejoined),
    }


@ray.remote(num_cpus=1)
def collect_quarantine(fs: pafs.FileSystem, part_dir: str | None, out_path: str) -> dict[str, Any]:
    """Write the quarantined rows, sorted by (source, file, row). Returns, by source, counts by reason
    (`reasons`) and the files that could not be read to their end with why (`damaged_files`).
    Always writes a file (an empty one when nothing was quarantined), so readers find the artifact."""
    if part_dir is None:
        table = QUARANTINE_SCHEMA.empty_table()
    else:
        table = pq.read_table(part_dir, filesystem=fs, columns=QUARANTINE_COLUMNS).cast(QUARANTINE_SCHEMA)
        table = table.sort_by([("source", "ascending"), ("file", "ascending"), ("row", "ascending")])
    pq.write_table(table, out_path, filesystem=fs)
    by_reason: dict[str, Counter] = {}
    damaged: dict[str, dict[str, str]] = {}
    for source, file, field, reason in zip(table["source"].to_pylist(), table["file"].to_pylist(),
                                           table["field"].to_pylist(), table["reason"].to_pylist(), strict=True):
        # Reasons that quote a number (a length, a field count) are grouped by their general kind.
        kind = f"{field}: {_reason_kind(reason)}"
        by_reason.setdefault(source, Counter())[kind] += 1
        if field == "(file)":
            damaged.setdefault(source, {})[file] = reason
    return {"reasons": {source: dict(counts) for source, counts in by_reason.items()}, "damaged_files": damaged}


def _reason_kind(reason: str) -> str:
    if "over the limit" in reason:
        return "over max_text_chars"
    if reason.startswith("expected ") and " fields, got " in reason:
        return "wrong number of fields"
    if reason.startswith("not valid JSON"):
        return "not valid JSON"
    if reason.startswith(WHERE_REASON):
        return WHERE_REASON
    if reason.startswith("damaged:"):
        return "damaged file (the rest of it)"
    if reason.startswith("vanished"):
        return "file vanished after it was listed"
    if reason.startswith("could not be opened"):
        return "file could not be opened"
    return reason


@ray.remote(num_cpus=1)
def collect_reposts(fs: pafs.FileSystem, part_dir: str | None, out_path: str) -> dict[str, int]:
    """Write the re-posts (source, file, row, original_doc_id), sorted; return how many each source had."""
    if part_dir is None:
        table = REPOST_SCHEMA.empty_table()
    else:
        staged = pq.read_table(part_dir, filesystem=fs, columns=["source", "file", "row", "reason"])
        table = staged.rename_columns(REPOST_SCHEMA.names).cast(REPOST_SCHEMA)
        table = table.sort_by([("source", "ascending"), ("file", "ascending"), ("row", "ascending")])
    pq.write_table(table, out_path, filesystem=fs)
    return dict(Counter(table["source"].to_pylist()))
