"""logprob mode on vLLM: one request a (post, scale), staged, then merged into one Annotation row a post.

vLLM takes one prompt a row and logprob mode asks three questions a post, so a post becomes three
requests. Their answers stream into `annotations/_by_scale/` as Parquet files, the unit of resume
here as annotation files are for the other modes: a rerun sends only the (post, scale) pairs not yet
answered. Once every pair is answered, a groupby on doc_id merges each post's three rows into its
Annotation row, and the staging folder is removed.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import ray
import ray.data
from ray.data._internal.savemode import SaveMode

from politune.annotate.readable import drop_done, readable_keys
from politune.config import RunConfig
from politune.contracts.annotator.parse import expected_and_argmax
from politune.contracts.annotator.prompts import SCALES, prompt_version
from politune.contracts.annotator.schema import ANNOTATION_SCHEMA, annotation_row
from politune.contracts.annotator.vllm_engine import VLLMEngine, annotation_metrics
from politune.storage import exists, join, resolve

STAGING = "_by_scale"
KEY_SEPARATOR = "\x1f"


def annotate_by_scale(cfg: RunConfig, engine: VLLMEngine, documents: ray.data.Dataset, done: np.ndarray,
                      annotations_uri: str, documents_uri: str) -> None:
    """Annotate the documents whose doc_id is not in `done` (sorted), writing to `annotations_uri`."""
    staging_uri = join(annotations_uri, STAGING)
    fs, out_path = resolve(annotations_uri)
    _, staging_path = resolve(staging_uri)
    staged = readable_keys(fs, staging_path, ["doc_id", "scale"], lambda t: _keys(t["doc_id"], t["scale"]))

    if _unanswered(documents_uri, done, staged):
        requests = documents
        if len(done):
            requests = requests.map_batches(drop_done, fn_args=(ray.put(done),), batch_format="pyarrow")
        requests = requests.flat_map(_scale_requests)
        if len(staged):
            requests = requests.map_batches(drop_done, fn_args=(ray.put(staged),), fn_kwargs={"column": "key"},
                                            batch_format="pyarrow")
        requests = requests.repartition(target_num_rows_per_block=cfg.annotate.rows_per_file)
        engine.score_scales(requests).write_parquet(staging_path, filesystem=fs, mode=SaveMode.APPEND)

    if not exists(staging_uri):
        return
    answers = ray.data.read_parquet(staging_path, filesystem=fs)
    if len(done):
        answers = answers.map_batches(drop_done, fn_args=(ray.put(done),), batch_format="pyarrow")
    # one shuffle partition a `rows_per_file` posts, so the merged rows land in files of about that size
    staged_rows = pads.dataset(staging_path, filesystem=fs, format="parquet").count_rows()
    partitions = max(1, math.ceil(staged_rows / len(SCALES) / cfg.annotate.rows_per_file))
    merged = answers.groupby("doc_id", num_partitions=partitions).map_groups(
        merge_scales, fn_kwargs=dict(annotator=cfg.annotate.model, run_id=cfg.run_id), batch_format="pyarrow")
    merged.write_parquet(out_path, filesystem=fs, mode=SaveMode.APPEND)
    fs.delete_dir(staging_path)


def merge_scales(group: pa.Table, annotator: str, run_id: str) -> pa.Table:
    """One post's (doc_id, scale) answers -> its Annotation row: ok with expected value and argmax per
    scale, or engine_error with every failed scale's error."""
    by_scale = {r["scale"]: r for r in group.to_pylist()}
    doc_id = group["doc_id"][0].as_py()
    missing = [s for s in SCALES if s not in by_scale]
    if missing:
        raise RuntimeError(f"{doc_id}: no answer staged for {missing}; rerun annotate to send them")
    version = prompt_version("logprob")
    errors = [f"{s}: {by_scale[s]['error']}" for s in SCALES if by_scale[s]["error"]]
    if errors:
        row = annotation_row("engine_error", "; ".join(errors), annotator, version)
    else:
        expected, argmax = expected_and_argmax([by_scale[s]["answer_logprobs"] for s in SCALES])
        row = annotation_row("ok", "", annotator, version, dict(zip(SCALES, expected.tolist(), strict=True)),
                             dict(zip(SCALES, argmax.tolist(), strict=True)))
    annotation_metrics(run_id, annotator).record([row["status"]], 0, 0)
    return pa.Table.from_pylist([{"doc_id": doc_id, **row}], schema=ANNOTATION_SCHEMA)


def _scale_requests(row: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"doc_id": row["doc_id"], "scale": s, "text": row["text"],
             "key": f"{row['doc_id']}{KEY_SEPARATOR}{s}"} for s in SCALES]


def _keys(doc_ids: pa.ChunkedArray, scales: pa.ChunkedArray) -> np.ndarray:
    return np.char.add(np.char.add(doc_ids.to_numpy(zero_copy_only=False).astype(str), KEY_SEPARATOR),
                       scales.to_numpy(zero_copy_only=False).astype(str))


def _unanswered(documents_uri: str, done: np.ndarray, staged: np.ndarray) -> int:
    """(post, scale) pairs still to send: three for each document not done, less those staged."""
    fs, path = resolve(documents_uri)
    documents = pads.dataset(path, filesystem=fs, format="parquet").count_rows()
    staged_docs = np.array([k.split(KEY_SEPARATOR)[0] for k in staged], dtype=str)
    staged_pending = int((~np.isin(staged_docs, done)).sum()) if len(staged_docs) else 0
    return len(SCALES) * (documents - len(done)) - staged_pending
