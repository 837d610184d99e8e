"""transformers + PEFT for the hf back end: one base model in memory, LoRA adapters added and removed by name,
and a batch of prompts for different adapters generated together.

Plain Python and torch, no Ray: the Serve replica (hf_model.py) owns one, and bench/serve.py measures it.

Mixed batches: PEFT runs rows for different adapters (and the base, `__base__`) through one forward pass when
given `adapter_names=[...]`; each LoRA layer applies each adapter to its own rows. With
`adapter_batching: per_adapter` a batch holds one adapter, and the same code runs it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from politune.models.loading import load_causal_lm
from politune.models.logprobs import token_logprobs
from politune.serve.protocol import GeneratedChoice

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch


def peft_name(name: str) -> str:
    """The name an adapter goes by inside PEFT: a torch module name, which cannot hold the "." of a registry name
    such as `left.step-10`."""
    return name.replace(".", "__dot__")


def registry_name(name: str) -> str:
    return name.replace("__dot__", ".")


@dataclass
class Row:
    """One choice to generate: a tokenized prompt and how to continue it."""

    request_id: str
    prompt_ids: list[int]
    adapter: str | None
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None
    echo: bool = False
    prompt_text: str = ""  # put before the answer with echo
    choice: int = 0        # which of its request's n choices
    # set by whoever runs the row: called from the generating thread with the row's tokens so far, every step
    on_tokens: Callable[[list[int]], None] | None = None
    started: float | None = None      # time.perf_counter() when its forward pass began
    first_token: float | None = None  # ... and when its first token was out

    def sampling(self) -> tuple:
        """Rows with the same temperature and top_p share one generate call (each row keeps its own seed)."""
        return (self.temperature, self.top_p) if self.temperature > 0 else (0.0, 1.0)


def choice_seed(seed: int | None, choice: int) -> int | None:
    """The seed of a request's `choice`-th of n choices: the request's own for the first, so that one choice
    asked with a seed reads the same as the first of several."""
    if seed is None or choice == 0:
        return seed
    return (seed * 1_000_003 + choice) % 2**63


class _SeededSampler(LogitsProcessor):
    """Samples every row from its own stream, seeded by its request's seed, as vLLM does: the exponential race
    (the argmax of p / q with q ~ Exp(1), the Gumbel-max trick in another form).

    A row's draws then depend on its seed alone, not on which rows share its batch. And two rows with the same
    seed, say the base and an adapter asked the same question, draw the same noise: they write the same tokens
    wherever their distributions agree, so their difference is the adapter's and not the sampler's (common random
    numbers; evaluate relies on it). The chosen token comes back as the only finite score, so greedy picks it."""

    def __init__(self, seeds: list[int | None], temperature: float, top_p: float) -> None:
        self.generators = [torch.Generator().manual_seed(
            seed if seed is not None else int(torch.randint(2**62, ()).item())) for seed in seeds]
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float().cpu() / self.temperature, dim=-1)
        if self.top_p < 1.0:
            ordered, order = probs.sort(dim=-1, descending=True)
            outside = ordered.cumsum(dim=-1) - ordered > self.top_p  # the most likely token always stays
            probs = probs.scatter(-1, order, ordered.masked_fill(outside, 0.0))
        noise = torch.stack([torch.empty(probs.shape[-1]).exponential_(generator=g) for g in self.generators])
        picked = (probs / noise).argmax(dim=-1, keepdim=True).to(scores.device)
        return torch.full_like(scores, float("-inf")).scatter(-1, picked, 0.0)


class _RowLimits(StoppingCriteria):
    """Per-row stop: a row is done at its own max_tokens, or as soon as its request was cancelled. Called after
    every step, it also stamps each row's first token and hands streamed rows their tokens so far."""

    def __init__(self, rows: list[Row], prompt_len: int, is_cancelled: Callable[[str], bool]) -> None:
        self.rows, self.limits = rows, torch.tensor([r.max_tokens for r in rows])
        self.ids, self.prompt_len, self.is_cancelled = [r.request_id for r in rows], prompt_len, is_cancelled

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        made = input_ids.shape[1] - self.prompt_len
        if made == 1:
            now = time.perf_counter()
            for row in self.rows:
                row.first_token = now
        streamed = [b for b, row in enumerate(self.rows) if row.on_tokens and made <= row.max_tokens]
        if streamed:
            new = input_ids[:, self.prompt_len:].tolist()
            for b in streamed:
                self.rows[b].on_tokens(new[b])
        done = made >= self.limits
        cancelled = torch.tensor([self.is_cancelled(i) for i in self.ids])
        return (done | cancelled).to(input_ids.device)


class AdapterModel:
    def __init__(self, base_path: str, device: str = "cpu", dtype: str = "auto") -> None:
        self.base, self.tokenizer = load_causal_lm(base_path, dtype=dtype, device=device)
        self.tokenizer.padding_side = "left"
        self.model = self.base  # becomes a PeftModel with the first adapter
        self.device = device
        eos = self.base.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.eos_ids.add(self.tokenizer.eos_token_id)
        self.max_positions = getattr(self.base.config, "max_position_embeddings", None)
        self._token_texts: dict[int, str] = {}

    # adapters -------------------------------------------------------------------------------------------
    @property
    def adapters(self) -> set[str]:
        return {registry_name(n) for n in getattr(self.model, "peft_config", {})}

    def add_adapter(self, name: str, folder: Path) -> None:
        from peft import PeftModel

        if name in self.adapters:
            return
        if self.model is self.base:
            self.model = PeftModel.from_pretrained(self.base, str(folder), adapter_name=peft_name(name))
        else:
            self.model.load_adapter(str(folder), adapter_name=peft_name(name))
        self.model.eval()

    def remove_adapter(self, name: str) -> bool:
        """Free an adapter's weights. PEFT cannot run with no adapter at all, so the last one stays (it costs
        its LoRA weights only) until another is added; returns whether it was removed."""
        if name not in self.adapters or len(self.adapters) == 1:
            return False
        self.model.delete_adapter(peft_name(name))
        return True

    # tokens -----------------------------------------------------------------------------------------------
    def prompt_ids(self, prompt: str | None = None, messages: list[dict] | None = None) -> list[int]:
        if messages is not None:
            text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
            return self.tokenizer(text, add_special_tokens=False)["input_ids"]
        ids = self.tokenizer(prompt)["input_ids"]
        if not ids:  # an empty prompt: the model starts from its start-of-text token, as a document does
            start = self.tokenizer.bos_token_id
            ids = [start if start is not None else self.tokenizer.eos_token_id]
        return ids

    def check_ids(self, ids: list[int], field: str) -> None:
        """ValueError naming the field and index of the first token id the model has no embedding for."""
        if not ids:
            raise ValueError(f"{field}: empty; send at least one token")
        vocab = self.base.get_input_embeddings().num_embeddings
        for k, token in enumerate(ids):
            if token >= vocab:
                raise ValueError(f"{field}.{k}: token id {token} is outside the vocabulary (0 to {vocab - 1})")

    def token_text(self, token_id: int) -> str:
        """A token's own text (echoed prompts list every token: a decode call each would cost more than the model)."""
        text = self._token_texts.get(token_id)
        if text is None:
            text = self._token_texts[token_id] = self.tokenizer.decode([token_id])
        return text

    # generation ---------------------------------------------------------------------------------------------
    def generate(self, rows: list[Row], is_cancelled: Callable[[str], bool] = lambda _: False) -> list[GeneratedChoice]:
        """One choice a row, in order. Rows are grouped by sampling settings only: adapters mix in a batch."""
        out: list[GeneratedChoice | None] = [None] * len(rows)
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            groups.setdefault(row.sampling(), []).append(i)
        for key, index in groups.items():
            group = [rows[i] for i in index]
            for i, choice in zip(index, self._generate_group(group, key, is_cancelled), strict=True):
                out[i] = choice
        return out  # type: ignore[return-value]

    def _adapter_kwargs(self, rows: list[Row]) -> dict:
        if self.model is self.base:
            return {}
        return {"adapter_names": [peft_name(r.adapter) if r.adapter else BASE for r in rows]}

    def _padded(self, sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(s)) + s for s in sequences], device=self.device)
        mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=self.device)
        return ids, mask

    @torch.no_grad()
    def _generate_group(self, rows: list[Row], sampling: tuple, is_cancelled: Callable[[str], bool]
                        ) -> list[GeneratedChoice]:
        temperature, top_p = sampling
        ids, mask = self._padded([r.prompt_ids for r in rows])
        max_new = max(r.max_tokens for r in rows)
        completions: list[list[int]] = [[] for _ in rows]
        if max_new > 0:
            kwargs: dict = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
            if temperature > 0:
                kwargs["logits_processor"] = LogitsProcessorList(
                    [_SeededSampler([r.seed for r in rows], temperature, top_p)])
            output = self.model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new, pad_token_id=self.tokenizer.pad_token_id,
                eos_token_id=sorted(self.eos_ids),
                stopping_criteria=StoppingCriteriaList([_RowLimits(rows, ids.shape[1], is_cancelled)]),
                **kwargs, **self._adapter_kwargs(rows))
            completions = [seq[: r.max_tokens] for seq, r in zip(output[:, ids.shape[1]:].tolist(), rows, strict=True)]
        choices = [self._finish(r, c) for r, c in zip(rows, completions, strict=True)]
        scored = [i for i, r in enumerate(rows) if r.logprobs is not None]
        if scored:
            self._add_logprobs([rows[i] for i in scored], [choices[i] for i in scored],
                               [completions[i][: choices[i].completion_tokens] for i in scored])
        return choices

    def _until_end(self, tokens: list[int]) -> tuple[list[int], bool]:
        """A row's tokens up to its first end token, and whether it had one."""
        for k, token in enumerate(tokens):
            if token in self.eos_ids:
                return tokens[:k], True
        return tokens, False

    def streamed_text(self, row: Row, tokens: list[int]) -> str:
        """The part of a row's answer so far that will not change as it goes on: its text up to the end token or
        a stop string, less the last token (whose text the next may merge with), a partly decoded character, and
        any tail that could be the start of a stop string. The answer's final text starts with it."""
        tokens, ended = self._until_end(tokens)
        text = self.tokenizer.decode(tokens if ended else tokens[:-1], skip_special_tokens=True)
        cuts = [text.find(s) for s in row.stop if s in text]
        if cuts:
            return text[:min(cuts)]
        text = text.rstrip("\ufffd")
        for stop in row.stop:
            for k in range(min(len(stop) - 1, len(text)), 0, -1):
                if text.endswith(stop[:k]):
                    text = text[:-k]
                    break
        return text

    def _finish(self, row: Row, tokens: list[int]) -> GeneratedChoice:
        """Cut a row's tokens at its end token or first stop string; say why it ended."""
        tokens, ended = self._until_end(tokens)
        reason = "stop" if ended else "length"
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in row.stop if s in text]
        if cuts:
            cut, reason = min(cuts), "stop"
            text, kept = text[:cut], 0
            while kept < len(tokens) and len(self.tokenizer.decode(tokens[:kept], skip_special_tokens=True)) < cut:
                kept += 1  # the tokens that start before the stop string
            tokens = tokens[:kept]
        if row.echo:
            text = row.prompt_text + text
        return GeneratedChoice(text=text, finish_reason=reason, completion_tokens=len(tokens))

    def _add_logprobs(self, rows: list[Row], choices: list[GeneratedChoice], completions: list[list[int]]) -> None:
        """Log-probabilities of every returned token (with echo, of the prompt's too, the first being None) and
        the top alternatives, from one forward pass over prompt + completion (models/logprobs.py: by chunks of
        positions, never the whole batch's logits at once)."""
        sequences = [r.prompt_ids + c for r, c in zip(rows, completions, strict=True)]
        ids, mask = self._padded(sequences)
        top = max(r.logprobs or 0 for r in rows)
        scored = token_logprobs(self.model, ids, mask, top, **self._adapter_kwargs(rows))
        picked = scored.picked.tolist()
        top_values, top_ids = (scored.top_values.tolist(), scored.top_ids.tolist()) if top else (None, None)
        width = ids.shape[1]
        for b, (row, choice, seq) in enumerate(zip(rows, choices, sequences, strict=True)):
            start = width - len(seq)  # left padding
            first = 0 if row.echo else len(row.prompt_ids)
            tokens, token_lps, tops = [], [], []
            for t in range(first, len(seq)):
                tokens.append(self.token_text(seq[t]))
                token_lps.append(None if t == 0 else picked[b][start + t - 1])
                if row.logprobs:
                    if t == 0:
                        tops.append({})
                    else:  # topk is sorted: this row's k are the first k of the batch's
                        at = start + t - 1
                        tops.append({self.token_text(i): v for v, i in zip(
                            top_values[b][at][:row.logprobs], top_ids[b][at][:row.logprobs], strict=True)})
            choice.tokens, choice.token_logprobs = tokens, token_lps
            choice.top_logprobs = tops if row.logprobs else None
            offsets, at = [], 0
            for piece in tokens:
                offsets.append(at)
                at += len(piece)
            choice.text_offset = offsets
