"""The `hf` engine: transformers in a Ray Data actor pool (`map_batches` with this class).

Each actor loads the model once and scores batches of posts, CPU or GPU. Two reading modes:
- generate: greedy decoding of a JSON answer, parsed and validated (parse.py);
- logprob: one forward pass a scale; the next-token probabilities of the answers "0".."10" give the
  expected value and the argmax. No decoding, so never a parse error.

A batch that raises is retried; after the last try its rows are recorded as `engine_error` with the
error text, so every post still ends in exactly one row.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pyarrow as pa
import ray
import ray.data
import torch

from politune.config import RunConfig
from politune.contracts.annotator.parse import ParseError, expected_and_argmax, parse_scores
from politune.contracts.annotator.prompts import (
    SCALES,
    answer_token_ids,
    generate_messages,
    prompt_version,
    scale_messages,
)
from politune.contracts.annotator.schema import ANNOTATION_SCHEMA, annotation_row
from politune.engines.metrics import StageMetrics
from politune.models import resolve_model
from politune.models.loading import load_causal_lm

log = logging.getLogger(__name__)


class AnnotationMetrics:
    """Counters and histograms on Ray's metrics endpoint (and so the dashboard), tagged by run and model."""

    def __init__(self, run_id: str, model: str) -> None:
        from ray.util.metrics import Counter, Histogram

        self.tags = {"run": run_id, "model": model}
        self.stage = StageMetrics(run_id, "annotate")
        keys = ("run", "model")
        self.posts = Counter("politune_annotate_posts", "Posts annotated, by status.", tag_keys=(*keys, "status"))
        self.tokens_in = Counter("politune_annotate_tokens_in", "Prompt tokens read.", tag_keys=keys)
        self.tokens_out = Counter("politune_annotate_tokens_out", "Tokens generated.", tag_keys=keys)
        self.latency = Histogram("politune_annotate_batch_seconds", "Seconds an engine batch takes.",
                                 boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120], tag_keys=keys)

    def record(self, statuses: list[str], tokens_in: int, tokens_out: int, seconds: float | None = None) -> None:
        self.stage.count("documents", len(statuses))
        for status in set(statuses):
            self.posts.inc(statuses.count(status), tags={**self.tags, "status": status})
        if tokens_in:  # Ray's counters refuse an increment of 0
            self.tokens_in.inc(tokens_in, tags=self.tags)
        if tokens_out:
            self.tokens_out.inc(tokens_out, tags=self.tags)
        if seconds is not None:
            self.latency.observe(seconds, tags=self.tags)


class HFAnnotator:
    """Callable class for `Dataset.map_batches`: {doc_id, text} batches in, Annotation rows out."""

    def __init__(self, model_path: str, model_name: str, mode: str, run_id: str, max_new_tokens: int = 48,
                 max_prompt_tokens: int = 1024, max_retries: int = 2, num_threads: int | None = None,
                 device: str = "cpu", dtype: str = "auto") -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, device=device)
        self.tokenizer.padding_side = "left"  # the last position is every row's next token
        self.model_name = model_name
        self.mode = mode
        self.version = prompt_version(mode)
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_retries = max_retries
        self.metrics = AnnotationMetrics(run_id, model_name)
        if mode == "logprob":
            self.answer_ids = answer_token_ids(self.tokenizer, model_name)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list[Any]]:
        doc_ids, texts = list(batch["doc_id"]), list(batch["text"])
        start = time.perf_counter()
        for attempt in range(self.max_retries + 1):
            try:
                rows, tokens_in, tokens_out = self.annotate(texts)
                break
            except Exception as err:  # noqa: BLE001 - any engine failure is retried, then recorded
                log.warning("annotation batch failed (try %d of %d): %r", attempt + 1, self.max_retries + 1, err)
                error = f"{type(err).__name__}: {err}"
        else:
            rows = [self._row("engine_error", error) for _ in texts]
            tokens_in = tokens_out = 0
        self.metrics.record([r["status"] for r in rows], tokens_in, tokens_out, time.perf_counter() - start)
        out: dict[str, list[Any]] = {"doc_id": doc_ids}
        for key in rows[0]:
            out[key] = [r[key] for r in rows]
        return out

    # --- the two reading modes -------------------------------------------------------------
    def annotate(self, texts: list[str]) -> tuple[list[dict[str, Any]], int, int]:
        return self._logprob(texts) if self.mode == "logprob" else self._generate(texts)

    def _generate(self, texts: list[str]) -> tuple[list[dict[str, Any]], int, int]:
        inputs = self._encode([generate_messages(t) for t in texts])
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        answers = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        rows = []
        for answer in answers:
            try:
                scores = parse_scores(answer)
            except ParseError as err:
                rows.append(self._row("parse_error", f"{err}: {answer}"))
                continue
            rows.append(self._row("ok", answer, scores, {s: int(round(v)) for s, v in scores.items()}))
        tokens_out = int((new != self.tokenizer.pad_token_id).sum())
        return rows, int(inputs["attention_mask"].sum()), tokens_out

    def _logprob(self, texts: list[str]) -> tuple[list[dict[str, Any]], int, int]:
        expected: dict[str, np.ndarray] = {}
        argmax: dict[str, np.ndarray] = {}
        tokens_in = 0
        for scale in SCALES:
            inputs = self._encode([scale_messages(t, scale) for t in texts])
            tokens_in += int(inputs["attention_mask"].sum())
            with torch.no_grad():  # the last position's logits only: not a batch x length x vocabulary tensor
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1, :]
            expected[scale], argmax[scale] = expected_and_argmax(logits[:, self.answer_ids].double().cpu().numpy())
        rows = [
            self._row("ok", "", {s: float(expected[s][i]) for s in SCALES}, {s: int(argmax[s][i]) for s in SCALES})
            for i in range(len(texts))
        ]
        return rows, tokens_in, 0

    # --- helpers -----------------------------------------------------------------------------
    def _encode(self, conversations: list[list[dict[str, str]]]) -> dict[str, torch.Tensor]:
        prompts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                   for c in conversations]
        # the chat template already starts with the BOS token; truncation keeps the end (the question)
        self.tokenizer.truncation_side = "left"
        return self.tokenizer(prompts, return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_prompt_tokens, add_special_tokens=False).to(self.model.device)

    def _row(self, status: str, raw: str, scores: dict[str, float] | None = None,
             argmax: dict[str, int] | None = None) -> dict[str, Any]:
        return annotation_row(status, raw, self.model_name, self.version, scores, argmax)


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
                device="cuda" if a.num_gpus_per_actor > 0 else "cpu", dtype=self.cfg.dtype),
            batch_size=a.batch_size, compute=ray.data.ActorPoolStrategy(size=a.concurrency),
            num_cpus=a.num_cpus_per_actor,
            num_gpus=a.num_gpus_per_actor or None, batch_format="numpy",
        )


class _HFAnnotatorTable(HFAnnotator):
    """Returns Arrow tables with the Annotation schema, so all-null columns keep their types."""

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        return pa.Table.from_pydict(super().__call__(batch), schema=ANNOTATION_SCHEMA)


def annotator_answer_ids(cfg: RunConfig) -> list[int]:
    """Token ids of the answers "0".."10" in the annotator's vocabulary (logprob mode)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(cfg.annotate.model, cfg))
    return answer_token_ids(tokenizer, cfg.annotate.model)
