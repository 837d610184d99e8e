"""The annotate stage: `documents/` in, `annotations/` out, one row a document, resumable.

Ray Data streams the documents through the engine's actor pool in blocks of at most `rows_per_file` posts
(smaller in a small run, so that every actor gets some: engines/blocks.py); each block lands as one Parquet
file as soon as it is scored. Resume is sound because a Parquet
file is readable only once its footer is written: the doc_ids in readable files are done, an
unreadable (half-written) file is removed, and a rerun scores only the rest. Every document ends
in exactly one row, which is checked at the end.

Engines: `hf` (transformers actor pool, hf_engine.py) or `vllm` (ray.data.llm, vllm_engine.py). vLLM's
logprob mode sends a post's three questions as three requests and merges them (scale_rows.py).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import ray
import ray.data
from ray.data._internal.savemode import SaveMode

from politune.annotate.readable import doc_ids, drop_done, readable_keys
from politune.annotate.scale_rows import annotate_by_scale
from politune.config import RunConfig
from politune.contracts.annotator.hf_engine import HFEngine, annotator_answer_ids
from politune.contracts.annotator.prompts import prompt_version
from politune.contracts.annotator.schema import ANNOTATION_SCHEMA, STATUSES
from politune.contracts.annotator.vllm_engine import VLLMEngine
from politune.engines.blocks import blocks_for_pool
from politune.prepare import prepares
from politune.ray_runtime import init_ray
from politune.storage import Manifest, exists, join, outages_named, read_json, resolve, write_json

log = logging.getLogger(__name__)
IDENTITY_FILE = "_annotator.json"


@dataclass
class AnnotateResult:
    annotations_uri: str
    documents: int
    annotated_now: int
    resumed_from: int  # rows already there when this run started
    statuses: dict[str, int]


def annotate_identity(cfg: RunConfig, manifest: Manifest) -> dict[str, tuple[str, dict[str, str]]]:
    """What the annotations are made of: (config hash, inputs)."""
    return {"annotations": (cfg.section_hash("annotate", "dtype"), {"documents": manifest.fingerprint("documents")})}


def annotate_models(cfg: RunConfig) -> list[tuple[str, str]]:
    """The model annotate loads: (config field, reference)."""
    return [("annotate.model", cfg.annotate.model)]


@prepares(annotate_models)
def annotate_documents(cfg: RunConfig) -> AnnotateResult:
    annotations_uri = join(cfg.run_uri, "annotations")
    with outages_named("annotate", "annotations", annotations_uri, "scores only the documents not yet scored"):
        return _annotate(cfg, annotations_uri)


def _annotate(cfg: RunConfig, annotations_uri: str) -> AnnotateResult:
    documents_uri = join(cfg.run_uri, "documents")
    manifest = Manifest(cfg.run_uri)
    manifest.require("documents", documents_uri, "politune ingest")  # before Ray starts
    init_ray(cfg)
    docs_fs, docs_path = resolve(documents_uri)
    out_fs, out_path = resolve(annotations_uri)
    manifest.forget("annotations")  # recorded again once every document is scored
    _start_or_resume(annotations_uri, _identity(cfg, manifest))
    done = readable_keys(out_fs, out_path, ["doc_id"], doc_ids)

    documents = ray.data.read_parquet(docs_path, filesystem=docs_fs, columns=["doc_id", "text"])
    if cfg.annotate.engine == "vllm" and cfg.annotate.mode == "logprob":
        engine = VLLMEngine(cfg, answer_ids=annotator_answer_ids(cfg))
        annotate_by_scale(cfg, engine, documents, done, annotations_uri, documents_uri)
    else:
        pending = documents
        if len(done):
            pending = pending.map_batches(drop_done, fn_args=(ray.put(done),), batch_format="pyarrow")
        a = cfg.annotate
        pending = blocks_for_pool(pending, _kept_documents(manifest) - len(done), a.concurrency, a.batch_size,
                                  a.rows_per_file)
        engine = HFEngine(cfg) if cfg.annotate.engine == "hf" else VLLMEngine(cfg)
        engine.annotate(pending).write_parquet(out_path, filesystem=out_fs, mode=SaveMode.APPEND)

    result = _account(docs_fs, docs_path, out_fs, out_path, annotations_uri, resumed_from=len(done))
    config_hash, inputs = annotate_identity(cfg, manifest)["annotations"]
    manifest.record(
        "annotations", path=annotations_uri, config_hash=config_hash, inputs=inputs, models=[cfg.annotate.model],
        counts={"documents": result.documents, "statuses": result.statuses,
                "annotated_now": result.annotated_now, "resumed_from": result.resumed_from,
                "prompt_version": prompt_version(cfg.annotate.mode)})
    return result


def _kept_documents(manifest: Manifest) -> int:
    """The documents ingest kept, as its manifest entry counts them (0 when it does not: blocks stay full size)."""
    per_source = (manifest.artifact("documents") or {}).get("counts", {}).get("per_source", {})
    return sum(c.get("kept", 0) for c in per_source.values())


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

