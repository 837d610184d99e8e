"""The annotate stage: `documents/` in, `annotations/` out, one row a document, resumable.

Ray Data streams the documents through the engine's actor pool in blocks of `rows_per_file` posts;
each block lands as one Parquet file as soon as it is scored. Resume is sound because a Parquet
file is readable only once its footer is written: the doc_ids in readable files are done, an
unreadable (half-written) file is removed, and a rerun scores only the rest. Every document ends
in exactly one row, which is checked at the end.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data._internal.savemode import SaveMode

from politune.annotate.hf_engine import HFAnnotator
from politune.annotate.prompts import prompt_version
from politune.annotate.schema import ANNOTATION_SCHEMA, STATUSES
from politune.config import RunConfig
from politune.models import resolve_model
from politune.ray_runtime import init_ray
from politune.storage import Manifest, exists, join, read_json, resolve, write_json

log = logging.getLogger(__name__)
IDENTITY_FILE = "_annotator.json"


@dataclass
class AnnotateResult:
    annotations_uri: str
    documents: int
    annotated_now: int
    resumed_from: int  # rows already there when this run started
    statuses: dict[str, int]


def annotate_documents(cfg: RunConfig) -> AnnotateResult:
    init_ray(cfg)
    documents_uri, annotations_uri = join(cfg.run_uri, "documents"), join(cfg.run_uri, "annotations")
    if not exists(documents_uri):
        raise FileNotFoundError(f"{documents_uri} does not exist: run `politune ingest` first")
    docs_fs, docs_path = resolve(documents_uri)
    out_fs, out_path = resolve(annotations_uri)
    manifest = Manifest(cfg.run_uri)
    _start_or_resume(annotations_uri, _identity(cfg, manifest))
    done = _done_doc_ids(out_fs, out_path)

    documents = ray.data.read_parquet(docs_path, filesystem=docs_fs, columns=["doc_id", "text"])
    pending = documents
    if len(done):
        pending = pending.map_batches(_drop_done, fn_args=(ray.put(done),), batch_format="pyarrow")
    pending = pending.repartition(target_num_rows_per_block=cfg.annotate.rows_per_file)
    annotated = _engine(cfg).annotate(pending)
    annotated.write_parquet(out_path, filesystem=out_fs, mode=SaveMode.APPEND)

    result = _account(docs_fs, docs_path, out_fs, out_path, annotations_uri, resumed_from=len(done))
    manifest.record(
        "annotations", path=annotations_uri, config_hash=cfg.section_hash("annotate"),
        inputs={"documents": manifest.config_hash("documents")}, models=[cfg.annotate.model],
        counts={"documents": result.documents, "statuses": result.statuses,
                "annotated_now": result.annotated_now, "resumed_from": result.resumed_from,
                "prompt_version": prompt_version(cfg.annotate.mode)})
    return result


class HFEngine:
    """transformers in a Ray Data actor pool, CPU or GPU."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg

    def annotate(self, ds: ray.data.Dataset) -> ray.data.Dataset:
        a = self.cfg.annotate
        return ds.map_batches(
            _HFAnnotatorTable,
            fn_constructor_kwargs=dict(
                model_path=resolve_model(a.model, self.cfg), model_name=a.model, mode=a.mode,
                run_id=self.cfg.run_id, max_new_tokens=a.max_new_tokens, max_prompt_tokens=a.max_prompt_tokens,
                max_retries=a.max_retries, num_threads=max(1, int(a.num_cpus_per_actor)),
                device="cuda" if a.num_gpus_per_actor > 0 else "cpu"),
            batch_size=a.batch_size, compute=ray.data.ActorPoolStrategy(size=a.concurrency),
            num_cpus=a.num_cpus_per_actor,
            num_gpus=a.num_gpus_per_actor or None, batch_format="numpy",
        )


class _HFAnnotatorTable(HFAnnotator):
    """Returns Arrow tables with the Annotation schema, so all-null columns keep their types."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return pa.Table.from_pydict(super().__call__(batch), schema=ANNOTATION_SCHEMA)


def _engine(cfg: RunConfig) -> Any:
    if cfg.annotate.engine == "hf":
        return HFEngine(cfg)
    raise ValueError("annotate.engine: vllm (ray.data.llm) is not built yet; use engine: hf, which runs the "
                     "same prompts through transformers on CPU or GPU")


def _identity(cfg: RunConfig, manifest: Manifest) -> dict[str, Any]:
    """What makes two annotation runs the same: resume only continues a run with this identity
    (same annotator, same prompts, and the same documents: a re-ingested corpus starts over)."""
    a = cfg.annotate
    documents = manifest.artifact("documents") or {}
    return {"model": a.model, "engine": a.engine, "mode": a.mode, "prompt_version": prompt_version(a.mode),
            "max_prompt_tokens": a.max_prompt_tokens, "max_new_tokens": a.max_new_tokens,
            "documents": {"inputs": documents.get("inputs"), "config_hash": documents.get("config_hash")}}


def _start_or_resume(annotations_uri: str, identity: dict[str, Any]) -> None:
    marker = join(annotations_uri, IDENTITY_FILE)
    if exists(marker) and read_json(marker) != identity:
        log.warning("annotations in %s were made with %s; starting over with %s", annotations_uri,
                    read_json(marker), identity)
        fs, path = resolve(annotations_uri)
        fs.delete_dir(path)
    write_json(marker, identity)


def _done_doc_ids(fs: pafs.FileSystem, path: str) -> np.ndarray:
    """Sorted doc_ids of every readable annotation file; half-written files are removed."""
    ids = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        if info.type != pafs.FileType.File or not info.base_name.endswith(".parquet"):
            continue
        try:
            ids.append(pq.read_table(info.path, filesystem=fs, columns=["doc_id"])["doc_id"])
        except (pa.ArrowInvalid, OSError) as err:
            log.warning("removing %s, left half-written by an interrupted run (%s)", info.path, err)
            fs.delete_file(info.path)
    if not ids:
        return np.array([], dtype=str)
    return np.sort(pa.chunked_array(ids).to_numpy(zero_copy_only=False).astype(str))


def _drop_done(batch: pa.Table, done: Any) -> pa.Table:
    done = ray.get(done) if isinstance(done, ray.ObjectRef) else done
    ids = batch["doc_id"].to_numpy(zero_copy_only=False).astype(str)
    pos = np.searchsorted(done, ids).clip(max=len(done) - 1)
    return batch.filter(pa.array(done[pos] != ids))


def _account(docs_fs: pafs.FileSystem, docs_path: str, out_fs: pafs.FileSystem, out_path: str,
             annotations_uri: str, resumed_from: int) -> AnnotateResult:
    """Check that every document has exactly one annotation row, and count the statuses."""
    doc_ids = pq.read_table(docs_path, filesystem=docs_fs, columns=["doc_id"])["doc_id"]
    table = pq.read_table(out_path, filesystem=out_fs, columns=["doc_id", "status"],
                          schema=pa.schema([ANNOTATION_SCHEMA.field("doc_id"), ANNOTATION_SCHEMA.field("status")]))
    annotated = table["doc_id"]
    distinct = pc.count_distinct(annotated).as_py()
    if len(annotated) != distinct:
        raise RuntimeError(f"{annotations_uri}: {len(annotated) - distinct} doc_ids annotated more than once")
    missing = pc.sum(pc.invert(pc.is_in(doc_ids, value_set=pc.unique(annotated)))).as_py() or 0
    extra = len(annotated) - (len(doc_ids) - missing)
    if missing or extra:
        raise RuntimeError(f"{annotations_uri}: {missing} documents without an annotation, {extra} annotations "
                           "of unknown documents")
    statuses = Counter(table["status"].to_pylist())
    return AnnotateResult(annotations_uri, len(doc_ids), len(annotated) - resumed_from, resumed_from,
                          {s: statuses.get(s, 0) for s in STATUSES})

