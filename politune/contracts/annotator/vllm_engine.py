"""The `vllm` engine: vLLM through ray.data.llm (vLLMEngineProcessorConfig + build_processor).

The processor (stages, placement, replicas) is built by politune/engines/vllm_processor.py.

- generate: one request a post. vLLM's structured output holds the answer to the JSON schema; parse.py
  still validates it (an answer cut off at max_new_tokens is a parse_error).
- logprob: one request a (post, scale) with max_tokens=1, returning the log-probabilities of exactly
  the answers "0".."10" (`logprob_token_ids`). scale_rows.py merges a post's three rows.

A request vLLM refuses (a prompt over max_model_len, say) comes back as an error row
(should_continue_on_error) and is recorded as engine_error with vLLM's message: a deterministic
refusal is not retried. A replica that dies is restarted by Ray Data.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import pyarrow as pa
import ray.data

from politune.config import RunConfig
from politune.contracts.annotator.hf_engine import AnnotationMetrics
from politune.contracts.annotator.parse import ParseError, parse_scores
from politune.contracts.annotator.prompts import JSON_SCHEMA, generate_messages, prompt_version, scale_messages
from politune.contracts.annotator.schema import ANNOTATION_SCHEMA, annotation_row
from politune.engines.rows import rows_with
from politune.engines.vllm_processor import ERROR_COLUMN, vllm_processor_config
from politune.models import resolve_model

# vLLM's answer for one (post, scale) in logprob mode; scale_rows.py turns three of them into an Annotation
SCALE_ROW_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("scale", pa.string()),
    ("answer_logprobs", pa.list_(pa.float64())),  # log-probabilities of "0".."10", in that order
    ("tokens_in", pa.int64()),
    ("error", pa.string()),                        # vLLM's error, null when it answered
])


def processor_config(cfg: RunConfig) -> Any:
    """The ray.data.llm processor config for this run's annotate section."""
    a = cfg.annotate
    return vllm_processor_config(a, resolve_model(a.model, cfg), a.batch_size, a.concurrency,
                                 structured_outputs=a.mode == "generate", detokenize=a.mode == "generate")


class VLLMEngine:
    """Same prompts and output columns as the hf engine, run by vLLM replicas."""

    def __init__(self, cfg: RunConfig, answer_ids: list[int] | None = None) -> None:
        self.cfg = cfg
        self.answer_ids = answer_ids  # logprob mode: token ids of "0".."10" in the annotator's vocabulary

    def annotate(self, docs: ray.data.Dataset) -> ray.data.Dataset:
        """generate mode: {doc_id, text} rows in, Annotation rows out."""
        a = self.cfg.annotate
        processor = self._processor(partial(generate_request, max_new_tokens=a.max_new_tokens), generate_result)
        return processor(docs).map_batches(
            to_annotations, fn_kwargs=dict(annotator=a.model, run_id=self.cfg.run_id),
            batch_format="pyarrow", num_cpus=a.vllm_stage_num_cpus)

    def score_scales(self, requests: ray.data.Dataset) -> ray.data.Dataset:
        """logprob mode: {doc_id, scale, text} rows in, SCALE_ROW_SCHEMA rows out."""
        if not self.answer_ids:
            raise ValueError("logprob mode needs the answers' token ids")
        processor = self._processor(partial(scale_request, answer_ids=self.answer_ids),
                                    partial(scale_result, answer_ids=self.answer_ids))
        return processor(requests).map_batches(
            to_scale_rows, fn_kwargs=dict(annotator=self.cfg.annotate.model, run_id=self.cfg.run_id),
            batch_format="pyarrow", num_cpus=self.cfg.annotate.vllm_stage_num_cpus)

    def _processor(self, preprocess: Any, postprocess: Any) -> Any:
        from ray.data.llm import build_processor

        map_kwargs = {"num_cpus": self.cfg.annotate.vllm_stage_num_cpus}
        return build_processor(processor_config(self.cfg), preprocess=preprocess, postprocess=postprocess,
                               preprocess_map_kwargs=map_kwargs, postprocess_map_kwargs=map_kwargs)


# --- requests and answers (row functions, run inside the processor's map stages) -------------------
def generate_request(row: dict[str, Any], max_new_tokens: int) -> dict[str, Any]:
    return {"doc_id": row["doc_id"], "messages": generate_messages(row["text"]),
            "sampling_params": {"temperature": 0.0, "max_tokens": max_new_tokens,
                                "structured_outputs": {"json": JSON_SCHEMA}}}


def generate_result(row: dict[str, Any]) -> dict[str, Any]:
    return {"doc_id": row["doc_id"], "generated_text": row["generated_text"],
            "tokens_in": row["num_input_tokens"], "tokens_out": row["num_generated_tokens"]}


def scale_request(row: dict[str, Any], answer_ids: list[int]) -> dict[str, Any]:
    return {"doc_id": row["doc_id"], "scale": row["scale"], "messages": scale_messages(row["text"], row["scale"]),
            "sampling_params": {"temperature": 0.0, "max_tokens": 1, "logprob_token_ids": list(answer_ids)}}


def scale_result(row: dict[str, Any], answer_ids: list[int]) -> dict[str, Any]:
    step = row["logprobs"][0]  # the one generated position: {token_id: {logprob, rank, decoded_token}}
    # between stages Arrow may have turned the int keys into strings
    by_id = {int(token_id): info["logprob"] for token_id, info in _items(step)}
    missing = [t for t in answer_ids if t not in by_id]
    if missing:
        raise ValueError(f"vLLM returned no log-probability for answer tokens {missing}")
    return {"doc_id": row["doc_id"], "scale": row["scale"], "answer_logprobs": [by_id[t] for t in answer_ids],
            "tokens_in": row["num_input_tokens"]}


def _items(mapping: Any) -> list[tuple[Any, Any]]:
    if isinstance(mapping, dict):
        return list(mapping.items())
    return list(mapping)  # an Arrow map comes back as a list of (key, value) pairs


# --- batches after the processor -> the project's schemas (also records the metrics) ------------------
def to_annotations(batch: pa.Table, annotator: str, run_id: str) -> pa.Table:
    """generate mode: processor rows (answers and error rows) -> Annotation rows."""
    version = prompt_version("generate")
    rows = []
    tokens_in = tokens_out = 0
    for r in rows_with(batch, ("doc_id", "generated_text", "tokens_in", "tokens_out", ERROR_COLUMN)):
        if r[ERROR_COLUMN]:
            row = annotation_row("engine_error", str(r[ERROR_COLUMN]), annotator, version)
        else:
            tokens_in, tokens_out = tokens_in + (r["tokens_in"] or 0), tokens_out + (r["tokens_out"] or 0)
            answer = r["generated_text"] or ""
            try:
                scores = parse_scores(answer)
                row = annotation_row("ok", answer, annotator, version, scores,
                                     {s: int(round(v)) for s, v in scores.items()})
            except ParseError as err:
                row = annotation_row("parse_error", f"{err}: {answer}", annotator, version)
        rows.append({"doc_id": r["doc_id"], **row})
    annotation_metrics(run_id, annotator).record([r["status"] for r in rows], tokens_in, tokens_out)
    return pa.Table.from_pylist(rows, schema=ANNOTATION_SCHEMA)


def to_scale_rows(batch: pa.Table, annotator: str, run_id: str) -> pa.Table:
    """logprob mode: processor rows (answers and error rows) -> SCALE_ROW_SCHEMA rows."""
    rows = []
    for r in rows_with(batch, ("doc_id", "scale", "answer_logprobs", "tokens_in", ERROR_COLUMN)):
        error = str(r[ERROR_COLUMN]) if r[ERROR_COLUMN] else None
        rows.append({"doc_id": r["doc_id"], "scale": r["scale"], "error": error,
                     "answer_logprobs": None if error else r["answer_logprobs"],
                     "tokens_in": None if error else r["tokens_in"]})
    annotation_metrics(run_id, annotator).record([], sum(r["tokens_in"] or 0 for r in rows), 0)  # posts: at the merge
    return pa.Table.from_pylist(rows, schema=SCALE_ROW_SCHEMA)


_METRICS: dict[tuple[str, str], AnnotationMetrics] = {}


def annotation_metrics(run_id: str, model: str) -> AnnotationMetrics:
    """One set of metric objects a worker process (Ray registers each metric name once a process)."""
    key = (run_id, model)
    if key not in _METRICS:
        _METRICS[key] = AnnotationMetrics(run_id, model)
    return _METRICS[key]

