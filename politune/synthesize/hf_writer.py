"""The `hf` pair writer: transformers in a Ray Data actor pool (`map_batches` with this class).

Each actor loads the synthesizer once and turns a batch of selected posts into pairs: it writes the
instructions for the whole batch, then the chosen answers, then the rejected ones (prompts.py). An
answer that stops at `max_new_tokens` is flagged as truncated, for the cleaner. A batch that raises is
retried; after the last try its rows carry the error, so every post still ends in one row.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow as pa
import torch

from politune.models import load_causal_lm
from politune.synthesize.prompts import chosen_messages, instruction_messages, rejected_messages

log = logging.getLogger(__name__)

PAIR_DRAFT_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("side", pa.string()),
    ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("prompt_truncated", pa.bool_()), ("chosen_truncated", pa.bool_()), ("rejected_truncated", pa.bool_()),
    ("error", pa.string()),
])


class HFPairWriter:
    """Callable class for `Dataset.map_batches`: {doc_id, side, text} in, PAIR_DRAFT_SCHEMA rows out."""

    def __init__(self, model_path: str, chosen_from: str, max_new_tokens: int, max_prompt_tokens: int,
                 max_retries: int = 2, num_threads: int | None = None, device: str = "cpu") -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model, self.tokenizer = load_causal_lm(model_path, device=device)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        self.chosen_from = chosen_from
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_retries = max_retries

    def __call__(self, batch: pa.Table) -> pa.Table:
        posts = batch.to_pylist()
        for attempt in range(self.max_retries + 1):
            try:
                rows = self.write_pairs(posts)
                break
            except Exception as err:  # noqa: BLE001 - any engine failure is retried, then recorded
                log.warning("pair batch failed (try %d of %d): %r", attempt + 1, self.max_retries + 1, err)
                rows = [{"doc_id": p["doc_id"], "side": p["side"], "error": f"{type(err).__name__}: {err}"}
                        for p in posts]
        return pa.Table.from_pylist(rows, schema=PAIR_DRAFT_SCHEMA)

    def write_pairs(self, posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        prompts, prompt_cut = self.reply([instruction_messages(p["text"]) for p in posts])
        prompts = [first_line(p) for p in prompts]
        if self.chosen_from == "post":
            chosen, chosen_cut = [p["text"] for p in posts], [False] * len(posts)
        else:
            chosen, chosen_cut = self.reply([chosen_messages(q, p["side"], p["text"])
                                             for q, p in zip(prompts, posts, strict=True)])
        rejected, rejected_cut = self.reply([rejected_messages(q, p["side"]) for q, p in zip(prompts, posts,
                                                                                              strict=True)])
        return [{"doc_id": p["doc_id"], "side": p["side"], "prompt": prompts[i], "chosen": chosen[i],
                 "rejected": rejected[i], "prompt_truncated": prompt_cut[i], "chosen_truncated": chosen_cut[i],
                 "rejected_truncated": rejected_cut[i], "error": None} for i, p in enumerate(posts)]

    def reply(self, conversations: list[list[dict[str, str]]]) -> tuple[list[str], list[bool]]:
        """Greedy replies, and whether each stopped at max_new_tokens instead of ending."""
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_prompt_tokens, add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        ended = (new == self.tokenizer.eos_token_id).any(dim=1) | (new == self.tokenizer.pad_token_id).any(dim=1)
        replies = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [r.strip() for r in replies], [not bool(e) for e in ended]


def first_line(text: str) -> str:
    """An instruction is one line; models often add a second."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""
