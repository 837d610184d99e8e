"""The `hf` pair writer: transformers in a Ray Data actor pool (`map_batches` with this class).

Each actor loads the synthesizer once and turns a batch of selected posts into pairs: it writes the
instructions for the whole batch, then all their answers in one generate call (prompts.py). An
answer that stops at `max_new_tokens` is flagged as truncated, for the cleaner. A batch that raises is
retried; after the last try its rows carry the error, so every post still ends in one row.
"""

from __future__ import annotations

import logging
import zlib
from typing import Any

import pyarrow as pa
import torch

from politune.contracts.pair_prompts import answer_conversations, instruction_messages
from politune.engines.metrics import StageMetrics
from politune.models.loading import load_causal_lm
from politune.synthesize.drafts import PAIR_DRAFT_SCHEMA, draft, failed, first_line

log = logging.getLogger(__name__)


class HFPairWriter:
    """Callable class for `Dataset.map_batches`: {doc_id, side, text} in, PAIR_DRAFT_SCHEMA rows out."""

    def __init__(self, model_path: str, chosen_from: str, max_new_tokens: int, max_prompt_tokens: int,
                 max_retries: int = 2, num_threads: int | None = None, device: str = "cpu", run_id: str = "",
                 temperature: float = 0.0, dtype: str = "auto") -> None:
        if num_threads:
            torch.set_num_threads(num_threads)
        self.model, self.tokenizer = load_causal_lm(model_path, dtype=dtype, device=device)
        self.tokenizer.padding_side = "left"
        self.tokenizer.truncation_side = "left"
        self.chosen_from = chosen_from
        self.max_new_tokens = max_new_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.max_retries = max_retries
        self.temperature = temperature
        self.metrics = StageMetrics(run_id, "synthesize")

    def __call__(self, batch: pa.Table) -> pa.Table:
        posts = batch.to_pylist()
        for attempt in range(self.max_retries + 1):
            try:
                rows = self.write_pairs(posts)
                break
            except Exception as err:  # noqa: BLE001 - any engine failure is retried, then recorded
                log.warning("pair batch failed (try %d of %d): %r", attempt + 1, self.max_retries + 1, err)
                rows = [failed(p, f"{type(err).__name__}: {err}") for p in posts]
        self.metrics.count("pair_drafts", len(rows))
        return pa.Table.from_pylist(rows, schema=PAIR_DRAFT_SCHEMA)

    def write_pairs(self, posts: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if self.temperature > 0:  # the same batch samples the same text (a batch is sampled together)
            torch.manual_seed(zlib.crc32("".join(p["doc_id"] for p in posts).encode()))
        texts, cut = self.reply([instruction_messages(p["text"]) for p in posts])
        instructions = [(first_line(t), c) for t, c in zip(texts, cut, strict=True)]
        asks = [(i, role, conversation) for i, p in enumerate(posts)
                for role, conversation in answer_conversations(instructions[i][0], p["side"], p["text"],
                                                               self.chosen_from).items()]
        texts, cut = self.reply([conversation for _, _, conversation in asks])
        answers: list[dict[str, tuple[str, bool]]] = [{} for _ in posts]
        for (i, role, _), text, stopped in zip(asks, texts, cut, strict=True):
            answers[i][role] = (text, stopped)
        return [draft(p, instructions[i], answers[i]) for i, p in enumerate(posts)]

    def reply(self, conversations: list[list[dict[str, str]]]) -> tuple[list[str], list[bool]]:
        """Replies (greedy, or sampled at the temperature), and whether each stopped at max_new_tokens."""
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                 for c in conversations]
        inputs = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                                max_length=self.max_prompt_tokens, add_special_tokens=False).to(self.model.device)
        with torch.no_grad():
            sampling = {"do_sample": True, "temperature": self.temperature, "top_k": 0} if self.temperature > 0 \
                else {"do_sample": False}
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, **sampling,
                                      pad_token_id=self.tokenizer.pad_token_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        ended = (new == self.tokenizer.eos_token_id).any(dim=1) | (new == self.tokenizer.pad_token_id).any(dim=1)
        replies = self.tokenizer.batch_decode(new, skip_special_tokens=True)
        return [r.strip() for r in replies], [not bool(e) for e in ended]

