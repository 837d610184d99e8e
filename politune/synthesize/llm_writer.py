"""The `vllm` and `openai` pair writers: ray.data.llm processors, run pass by pass.

An answer needs its instruction, so the selected posts go through the synthesizer twice:
1. one request a post: its instruction;
2. one request a post for the rejected answer, and one for the chosen answer unless `chosen_from: post`.
Each pass is a processor run of its own that ends before the next starts, so on a GPU cluster only one
pass's vLLM replicas hold GPUs at a time.

The engines retry what can be retried (Ray Data restarts a dead vLLM replica; the HTTP actors retry
429/5xx and lost connections). A request that still fails comes back as an error row, and its post's
draft carries the error (recorded as engine_error). An answer that stopped at `max_new_tokens` is
flagged as truncated, for the cleaner. Output: one draft a post (drafts.py).
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from functools import partial
from typing import Any

import pyarrow as pa
import ray.data

from politune.config import RunConfig
from politune.contracts.pair_prompts import answer_conversations, instruction_messages
from politune.engines.metrics import StageMetrics
from politune.engines.openai_http import chat_payload, chat_reply, check_endpoint, http_processor_config
from politune.engines.rows import rows_with
from politune.engines.vllm_processor import ERROR_COLUMN, vllm_processor_config
from politune.models import resolve_model
from politune.synthesize.drafts import draft, failed, first_line

REPLY_SCHEMA = pa.schema([("key", pa.string()), ("text", pa.string()), ("truncated", pa.bool_()),
                          ("error", pa.string())])
KEY_SEPARATOR = "\x1f"


class ProcessorReplier:
    """Replies to conversations with a ray.data.llm processor: {key, messages_json} requests in, one
    REPLY_SCHEMA row a key out (the messages travel as JSON text so Arrow does not reshape them)."""

    def __init__(self, config: Any, preprocess: Callable, postprocess: Callable, run_id: str,
                 stage_num_cpus: float = 1) -> None:
        self.config, self.preprocess, self.postprocess = config, preprocess, postprocess
        self.run_id, self.stage_num_cpus = run_id, stage_num_cpus

    def __call__(self, requests: list[dict[str, str]]) -> dict[str, dict[str, Any]]:
        from ray.data.llm import build_processor

        if not requests:
            return {}
        map_kwargs = {"num_cpus": self.stage_num_cpus}
        processor = build_processor(self.config, preprocess=self.preprocess, postprocess=self.postprocess,
                                    preprocess_map_kwargs=map_kwargs, postprocess_map_kwargs=map_kwargs)
        replies = processor(ray.data.from_items(requests)).map_batches(
            partial(to_replies, run_id=self.run_id), batch_format="pyarrow", num_cpus=self.stage_num_cpus).take_all()
        by_key = {r["key"]: r for r in replies}
        missing = {r["key"] for r in requests} - set(by_key)
        if missing or len(by_key) != len(replies):
            raise RuntimeError(f"the processor answered {len(replies)} of {len(requests)} requests "
                               f"({len(missing)} missing, {len(replies) - len(by_key)} repeated)")
        return by_key


def vllm_replier(cfg: RunConfig) -> ProcessorReplier:
    s = cfg.synthesize
    config = vllm_processor_config(s, resolve_model(s.model, cfg), s.batch_size, s.concurrency,
                                   structured_outputs=False, detokenize=True)
    return ProcessorReplier(config, partial(vllm_request, max_tokens=s.max_new_tokens, temperature=s.temperature),
                            partial(vllm_reply, max_tokens=s.max_new_tokens), cfg.run_id, s.vllm_stage_num_cpus)


def openai_replier(cfg: RunConfig) -> ProcessorReplier:
    s = cfg.synthesize
    model = s.openai_model or s.model
    check_endpoint(s.openai_base_url, model, s.openai_api_key_env)
    config = http_processor_config(s.openai_base_url, s.openai_api_key_env, s.batch_size, s.concurrency,
                                   s.openai_qps, s.openai_max_retries)
    return ProcessorReplier(config, partial(openai_request, model=model, max_tokens=s.max_new_tokens,
                                            temperature=s.temperature), openai_reply,
                            cfg.run_id)


def write_pairs(posts: list[dict[str, Any]], reply: ProcessorReplier, chosen_from: str) -> list[dict[str, Any]]:
    """One draft a post ({doc_id, side, text}): instructions in one pass, then all answers in another."""
    instructions = reply([request(p["doc_id"], instruction_messages(p["text"])) for p in posts])
    written = {doc_id: first_line(r["text"]) for doc_id, r in instructions.items() if not r["error"]}
    asks = [request(answer_key(p["doc_id"], role), conversation) for p in posts if p["doc_id"] in written
            for role, conversation in answer_conversations(written[p["doc_id"]], p["side"], p["text"],
                                                           chosen_from).items()]
    answers = reply(asks)
    drafts = []
    for p in posts:
        instruction = instructions[p["doc_id"]]
        if instruction["error"]:
            drafts.append(failed(p, f"instruction: {instruction['error']}"))
            continue
        mine = {role: answers[answer_key(p["doc_id"], role)] for role in ("chosen", "rejected")
                if answer_key(p["doc_id"], role) in answers}
        errors = [f"{role}: {r['error']}" for role, r in mine.items() if r["error"]]
        if errors:
            drafts.append(failed(p, "; ".join(errors)))
            continue
        drafts.append(draft(p, (written[p["doc_id"]], instruction["truncated"]),
                            {role: (r["text"].strip(), r["truncated"]) for role, r in mine.items()}))
    return drafts


def request(key: str, messages: list[dict[str, str]]) -> dict[str, str]:
    return {"key": key, "messages_json": json.dumps(messages)}


def answer_key(doc_id: str, role: str) -> str:
    return f"{doc_id}{KEY_SEPARATOR}{role}"


# --- row functions, run inside the processors' map stages ----------------------------------------------
def vllm_request(row: dict[str, Any], max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
    sampling = {"temperature": temperature, "max_tokens": max_tokens}
    if temperature > 0:
        sampling["seed"] = request_seed(row["key"])
    return {"key": row["key"], "messages": json.loads(row["messages_json"]), "sampling_params": sampling}


def request_seed(key: str) -> int:
    """A sampled request's seed, from its key (doc_id and role): a rerun samples the same text."""
    return zlib.crc32(key.encode())


def vllm_reply(row: dict[str, Any], max_tokens: int) -> dict[str, Any]:
    # vLLM's batch output has no finish reason: an answer as long as the limit stopped at it
    return {"key": row["key"], "text": row["generated_text"], "truncated": row["num_generated_tokens"] >= max_tokens,
            "error": None}


def openai_request(row: dict[str, Any], model: str, max_tokens: int, temperature: float = 0.0) -> dict[str, Any]:
    return {"key": row["key"], "payload": chat_payload(model, json.loads(row["messages_json"]), max_tokens,
                                                       temperature, request_seed(row["key"]))}


def openai_reply(row: dict[str, Any]) -> dict[str, Any]:
    text, truncated, error = chat_reply(row["http_response"])
    return {"key": row["key"], "text": text, "truncated": truncated, "error": error}


def to_replies(batch: pa.Table, run_id: str) -> pa.Table:
    """Processor rows (answers, and error rows that skipped the postprocess) -> REPLY_SCHEMA rows; counted as
    the synthesize stage's `replies` (engines/metrics.py)."""
    rows = []
    for r in rows_with(batch, ("key", "text", "truncated", "error", ERROR_COLUMN)):
        error = r["error"] or (str(r[ERROR_COLUMN]) if r[ERROR_COLUMN] else None)
        rows.append({"key": r["key"], "text": None if error else r["text"] or "",
                     "truncated": bool(r["truncated"]) and not error, "error": error})
    StageMetrics(run_id, "synthesize").count("replies", len(rows))
    return pa.Table.from_pylist(rows, schema=REPLY_SCHEMA)
