"""The ingest stage: corpus files in, `documents/` and `quarantine/` Parquet out, counts in the manifest.

Two passes, both streaming:
1. Ray Data reads every source (readers.py), a big file in pieces read side by side (pieces.py), maps each
   record to a Document or a quarantined row, and writes them to a staging folder partitioned by dedup bucket
   as it reads: a read task's memory does not grow with its file.
2. One Ray task a bucket drops exact duplicates (dedup.py) and writes `documents/part-NNNNN.parquet`;
   one task gathers the quarantined rows into `quarantine/`.

For every source: rows read = documents kept + duplicates dropped + re-posts + rows quarantined, exactly.
Re-posts (a Mastodon reblog) go to `reposts/` with the doc_id of their original, never to documents. A
damaged file is read up to the damage and its rest is one quarantined row (readers.py); a source
whose every file is damaged is an error naming it.

A rerun replaces the previous output instead of adding to it. The manifest drops `documents` and
`quarantine` before they are rewritten and records them once both are whole, so a run stopped
halfway (a storage outage, a kill) leaves nothing the next stage would take for done.
"""

from __future__ import annotations

import hashlib
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data._internal.savemode import SaveMode

from politune.config import RunConfig, SourceConfig
from politune.ingest.dedup import collect_quarantine, collect_reposts, dedup_bucket
from politune.ingest.pieces import Piece, plan_pieces
from politune.ingest.readers import TSV_RECORD_START, CorpusDatasource, CorpusFile, file_row, list_source_files
from politune.ingest.schema import DOCUMENT_SCHEMA, QUARANTINE_PART, REPOST_PART, STAGING_SCHEMA
from politune.prepare import prepares
from politune.ray_runtime import init_ray
from politune.storage import Manifest, delete_dir, join, outages_named, resolve

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    documents_uri: str
    quarantine_uri: str
    # per source: read, kept, duplicates, reposts, quarantined, reasons, and rejoined (of the rows read, TSV rows
    # re-joined from the lines an unquoted line break had split them into)
    counts: dict[str, dict[str, Any]]
    num_buckets: int
    damaged_files: dict[str, dict[str, str]] = field(default_factory=dict)  # per source: file -> why it stopped

    @property
    def totals(self) -> dict[str, int]:
        keys = ("read", "kept", "duplicates", "reposts", "quarantined")
        return {k: sum(c[k] for c in self.counts.values()) for k in keys}


@prepares(lambda cfg: [], sample_corpus=True)
def ingest_corpus(cfg: RunConfig) -> IngestResult:
    if not cfg.sources:
        raise ValueError("ingest needs sources: the config lists none (sources: [{name, paths, shape}])")
    run = cfg.run_uri
    with outages_named("ingest", "documents", join(run, "documents"), "reads the corpus again from the start"):
        return _ingest(cfg, run)


ARTIFACTS = ("documents", "quarantine", "reposts")


def ingest_identity(cfg: RunConfig, manifest: Manifest | None = None,
                    listings: dict[str, tuple[pafs.FileSystem, list[CorpusFile]]] | None = None,
                    ) -> dict[str, tuple[str, dict[str, str]]]:
    """What ingest's artifacts are made of: (config hash, inputs) by artifact. The inputs are each source's files
    (paths and sizes), listed now unless given; a source whose paths are gone raises FileNotFoundError."""
    listings = listings if listings is not None else {s.name: list_source_files(s) for s in cfg.sources}
    inputs = {s.name: _fingerprint(s, listings[s.name][1]) for s in cfg.sources}
    return {artifact: (cfg.section_hash("sources", "ingest"), inputs) for artifact in ARTIFACTS}


def _ingest(cfg: RunConfig, run: str) -> IngestResult:
    listings = {s.name: list_source_files(s) for s in cfg.sources}  # bad paths fail before Ray starts
    _check_no_file_twice(listings)
    init_ray(cfg)
    total_bytes = sum(f.size for _, files in listings.values() for f in files)
    num_buckets = max(1, math.ceil(total_bytes / (cfg.ingest.dedup_bucket_mb * 2**20)))

    staging_uri, documents_uri, quarantine_uri, reposts_uri = (
        join(run, p) for p in ("_staging/ingest", "documents", "quarantine", "reposts"))
    manifest = Manifest(run)
    manifest.forget(*ARTIFACTS)
    for uri in (staging_uri, documents_uri, quarantine_uri, reposts_uri):
        delete_dir(uri)

    # One datasource a filesystem (usually one in all), each written as it is read.
    by_filesystem: dict[str, tuple[pafs.FileSystem, list]] = {}
    for source in cfg.sources:
        fs, files = listings[source.name]
        by_filesystem.setdefault(fs.type_name, (fs, []))[1].extend(files)
    out_fs, staging_path = resolve(staging_uri)
    with _ingest_data_context(int(cfg.ingest.block_mb * 2**20)):
        for fs, files in by_filesystem.values():
            pieces = cut_big_files(cfg, fs, files)
            datasource = CorpusDatasource(cfg.sources, files, fs, cfg.ingest.max_text_chars, num_buckets,
                                          cfg.ingest.read_batch_rows, run_id=cfg.run_id, pieces=pieces)
            vanished = datasource.vanished_files()
            _quarantine_vanished(vanished, out_fs, staging_path)
            if len(vanished) < len(files):
                tasks = read_task_count([p.size for p in datasource.pieces], _cluster_cpus(), cfg.ingest.read_task_mb)
                # min_rows_per_file keeps Ray Data from fusing each read task with a write (whose Parquet writer
                # takes all of a task's blocks at once): the read tasks hand their blocks on as they read, and
                # write tasks take them `write_rows` at a time. Ray 2.60 warns that it means to drop the option
                # beside partition_cols in 2027 (for a hash shuffle, which would hold every row in its actors);
                # tests/test_big_files.py fails if the read and the write are fused again.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Using `min_rows_per_file` with non-empty", DeprecationWarning)
                    ray.data.read_datasource(datasource, override_num_blocks=tasks).write_parquet(
                        staging_path, filesystem=out_fs, partition_cols=["part"], mode=SaveMode.APPEND,
                        min_rows_per_file=cfg.ingest.write_rows)

    counts, damaged = _dedup_and_collect(out_fs, staging_path, documents_uri, quarantine_uri, reposts_uri, cfg)
    delete_dir(join(run, "_staging"))
    _check_some_file_read(listings, damaged, quarantine_uri)

    made_of = ingest_identity(cfg, listings=listings)
    summary = {"per_source": counts, "num_buckets": num_buckets}
    manifest.record("documents", path=documents_uri, config_hash=made_of["documents"][0],
                    inputs=made_of["documents"][1], counts=summary)
    manifest.record("quarantine", path=quarantine_uri, config_hash=made_of["quarantine"][0],
                    inputs=made_of["quarantine"][1],
                    counts={s: {"quarantined": c["quarantined"], "reasons": c["reasons"],
                                "damaged_files": len(damaged.get(s, {}))} for s, c in counts.items()})
    manifest.record("reposts", path=reposts_uri, config_hash=made_of["reposts"][0], inputs=made_of["reposts"][1],
                    counts={s: c["reposts"] for s, c in counts.items()})
    return IngestResult(documents_uri, quarantine_uri, counts, num_buckets, damaged)


def cut_big_files(cfg: RunConfig, fs: pafs.FileSystem, files: list[CorpusFile]) -> list[Piece]:
    """Every file as the pieces its read tasks take: one a file, but a file larger than a read task in pieces of
    about `read_task_mb` (pieces.py), planned by one Ray task a big file, all at once."""
    piece_bytes = int(cfg.ingest.read_task_mb * 2**20)
    shapes = {s.name: s.shape for s in cfg.sources}
    planned = {f.path: _plan.remote(fs, f.path, f.size, f.format, piece_bytes,
                                    TSV_RECORD_START if shapes[f.source] == "truthsocial_tsv" else None)
               for f in files if f.size > piece_bytes}
    cut = dict(zip(planned, ray.get(list(planned.values())), strict=True))
    return [p for f in files for p in cut.get(f.path, [Piece(f.path, f.size)])]


# an outage while planning is retried (Ray retries the task); its other errors leave the file whole (plan_pieces)
_plan = ray.remote(num_cpus=1, max_retries=5, retry_exceptions=True)(plan_pieces)


READ_TASKS_PER_CPU = 4  # a few each, so the last tasks do not leave all but one CPU waiting


def read_task_count(sizes: list[int], cpus: int, task_mb: float) -> int:
    """Read tasks for pieces of these sizes (bytes; a piece is a file, or a part of a big one): about `task_mb` of
    input each, at least READ_TASKS_PER_CPU a CPU, never more than one a piece (the datasource cuts the list of
    pieces into this many runs of consecutive pieces).

    Measured on 2 cores: a task of one 1.8 MB file does 0.35 s of work, and each CPU then waits about 0.2 s for
    its next task, so two read slots went no faster than one. Fewer, larger tasks pay that wait less often."""
    by_size = math.ceil(sum(sizes) / (task_mb * 2**20))
    return max(1, min(len(sizes), max(by_size, READ_TASKS_PER_CPU * cpus)))


def _cluster_cpus() -> int:
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _quarantine_vanished(vanished: list[CorpusFile], fs: pafs.FileSystem, staging_path: str) -> None:
    """Files gone between listing and the datasource looking them up never reach a read task: their rows are
    written here, beside the read tasks' quarantined rows."""
    if not vanished:
        return
    rows = [file_row(f, 1, "vanished after it was listed: the file no longer exists") for f in vanished]
    table = pa.Table.from_pylist(rows, schema=STAGING_SCHEMA).drop_columns(["part"])
    part = f"{staging_path}/part={QUARANTINE_PART}"
    fs.create_dir(part, recursive=True)
    pq.write_table(table, f"{part}/vanished.parquet", filesystem=fs)


def _check_some_file_read(listings: dict[str, tuple[pafs.FileSystem, list[CorpusFile]]],
                          damaged: dict[str, dict[str, str]], quarantine_uri: str) -> None:
    """A source whose every file is damaged is an error, not an empty source."""
    for name, (_, files) in listings.items():
        bad = damaged.get(name, {})
        if files and len(bad) == len(files):
            file, reason = next(iter(sorted(bad.items())))
            raise ValueError(f"source {name!r}: none of its {len(files)} files could be read ({file}: {reason}"
                             f"{'; and the others' if len(files) > 1 else ''}); the reasons are in {quarantine_uri}")


def _dedup_and_collect(
    fs: pafs.FileSystem, staging_path: str, documents_uri: str, quarantine_uri: str, reposts_uri: str,
    cfg: RunConfig,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Counts by source, and the damaged files by source (file: reason)."""
    _, documents_path = resolve(documents_uri)
    _, quarantine_path = resolve(quarantine_uri)
    _, reposts_path = resolve(reposts_uri)
    for path in (documents_path, quarantine_path, reposts_path):
        fs.create_dir(path, recursive=True)

    parts = {}
    for info in fs.get_file_info(pafs.FileSelector(staging_path, allow_not_found=True)):
        if info.type == pafs.FileType.Directory and info.base_name.startswith("part="):
            parts[info.base_name.removeprefix("part=")] = info.path
    buckets = sorted(p for p in parts if p not in (QUARANTINE_PART, REPOST_PART))

    dedup_tasks = [
        dedup_bucket.remote(fs, parts[b], f"{documents_path}/part-{int(b[1:]):05d}.parquet", cfg.ingest.dedup)
        for b in buckets
    ]
    quarantine_task = collect_quarantine.remote(fs, parts.get(QUARANTINE_PART), f"{quarantine_path}/part-00000.parquet")
    reposts_task = collect_reposts.remote(fs, parts.get(REPOST_PART), f"{reposts_path}/part-00000.parquet")
    if not buckets:  # every row was quarantined: still leave a readable, empty documents artifact
        pq.write_table(DOCUMENT_SCHEMA.empty_table(), f"{documents_path}/part-00000.parquet", filesystem=fs)
    bucket_counts = ray.get(dedup_tasks)
    quarantine = ray.get(quarantine_task)
    reasons = quarantine["reasons"]
    reposts = ray.get(reposts_task)

    counts: dict[str, dict[str, Any]] = {}
    for source in cfg.sources:
        name = source.name
        staged = sum(c["staged"].get(name, 0) for c in bucket_counts)
        kept = sum(c["kept"].get(name, 0) for c in bucket_counts)
        duplicates = sum(c["duplicates"].get(name, 0) for c in bucket_counts)
        quarantined = sum(reasons.get(name, {}).values())
        if staged != kept + duplicates:
            raise RuntimeError(f"ingest lost rows of source {name!r}: {staged} staged, {kept} kept, "
                               f"{duplicates} duplicates")
        counts[name] = {
            "read": staged + reposts.get(name, 0) + quarantined, "kept": kept, "duplicates": duplicates,
            "reposts": reposts.get(name, 0), "quarantined": quarantined,
            "reasons": dict(Counter(reasons.get(name, {})).most_common()),
            "rejoined": sum(c["rejoined"].get(name, 0) for c in bucket_counts),
        }
    return counts, quarantine["damaged_files"]


@contextmanager
def _ingest_data_context(max_block_bytes: int) -> Iterator[None]:
    """Ray Data's settings for ingest, put back after it.

    Blocks: Ray Data gathers a read task's output into blocks of up to 128 MiB by default; with many small rows
    that buffering, not the data, sets a read worker's memory. Smaller blocks for ingest.

    No reservation: by default Ray Data reserves half the cluster's CPUs for each operator, so on 2 CPUs the
    writes held one CPU while they waited for rows and one piece was read at a time. The writes are light (measured
    on a 250 MB file: 2 CPUs read it in 29 s with the reservation off, 45 s with it on, one CPU in 46 s)."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.target_max_block_size, ctx.op_resource_reservation_enabled
    ctx.target_max_block_size = max_block_bytes
    ctx.op_resource_reservation_enabled = False
    try:
        yield
    finally:
        ctx.target_max_block_size, ctx.op_resource_reservation_enabled = before


def _check_no_file_twice(listings: dict[str, tuple[pafs.FileSystem, list[CorpusFile]]]) -> None:
    owner: dict[str, str] = {}
    for name, (_, files) in listings.items():
        for f in files:
            if f.path in owner:
                raise ValueError(f"{f.path} is listed by two sources ({owner[f.path]!r} and {name!r}); "
                                 "a file belongs to one source")
            owner[f.path] = name


def _fingerprint(source: SourceConfig, files: list[CorpusFile]) -> str:
    """Hash of a source's files as the config names them (its path, and each file's name under it) and their sizes:
    changes when the corpus does, not when the folder holding it is copied or moved along with the config."""
    roots = [(uri, resolve(uri)[1].rstrip("/")) for uri in source.paths]
    names = []
    for f in files:
        uri, root = next(((u, r) for u, r in roots if f.path == r or f.path.startswith(r + "/")), (f.path, f.path))
        names.append(f"{uri}\t{f.path[len(root):]}\t{f.size}")
    return hashlib.sha256("\n".join(sorted(names)).encode()).hexdigest()[:16]
