"""Asking: the requests of each pass, and the Answer rows made from their replies.

Three passes, each one ray.data.llm HTTP processor run per endpoint (engines/openai_http.post_all); explain mode
runs pass 2 then pass 1 on each answer:
1. logprob: per model x proposition x phrasing x option order (forward and reversed), four prompts: the
   forced-choice prompt followed by each option,
   scored with echo and max_tokens 0, so the option tokens' log-probabilities are read off the echoed prompt and
   nothing is decoded. `items_per_request` propositions of one model share a /completions request (a list of
   prompts), which saves the per-request cost of HTTP and Serve;
2. generate: per model x proposition (or probe) x phrasing x sample, one /chat/completions request;
3. judge: per free-text answer, one /chat/completions request to the judge, which maps a proposition's answer to
   an option or "no stance", and scores a probe's answer on the leaning rubric.
Explain: the model answers a proposition in free text (pass 2), then the forced choice is scored after that
answer (pass 1 with the answer written ahead of the prompt, in both option orders after the same answer): the
option the model picks having said what it said. No judge reads it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from typing import Any

from politune.contracts.compass.prompts import (
    FORCED_CHOICE,
    FORWARD,
    FREE_TEXT,
    JUDGE_LEANING,
    JUDGE_LEANING_SYSTEM,
    JUDGE_OPTION,
    JUDGE_OPTION_SYSTEM,
    LEANING_RUBRIC_VERSION,
    OPTION_RUBRIC_VERSION,
    PROMPT_VERSION,
)
from politune.contracts.compass.schema import ENGINE_ERROR, OK, UNMAPPED
from politune.contracts.compass.schema import NO_STANCE as NO_STANCE_STATUS
from politune.evaluate.endpoint import Target
from politune.evaluate.judge import NO_STANCE, read_leaning, read_option

PROBES = "probes"
SEP = "\x1f"


@dataclass(frozen=True)
class Question:
    """One thing to ask one model: a proposition (instrument, id, statement) or a probe (instrument "probes")."""

    target: Target
    instrument: str
    item_id: str
    text: str
    phrasing: int
    sample: int
    mode: str  # logprob | generate | explain
    order: int | None = None  # forced choice: the options listed forward or reversed (prompts.ORDERS)

    @property
    def key(self) -> str:
        return SEP.join([self.target.model, self.target.base_url, self.instrument, self.item_id,
                         str(self.phrasing), str(self.sample), self.mode, str(self.order)])

    def in_order(self, order: int) -> Question:
        return replace(self, order=order)

    @property
    def wording(self) -> str | None:
        """The versioned name of the wording(s) asked: forced choice, free text, or free text then forced choice."""
        if self.instrument == PROBES:
            return None
        return {"logprob": FORCED_CHOICE[self.phrasing].name, "generate": FREE_TEXT[self.phrasing].name,
                "explain": f"{FREE_TEXT[self.phrasing].name}+{FORCED_CHOICE[self.phrasing].name}"}.get(self.mode)

    def row(self, **fields: Any) -> dict[str, Any]:
        t = self.target
        return {"model": t.label or t.model, "role": t.role, "adapter": t.adapter, "checkpoint_of": t.checkpoint_of,
                "step": t.step, "scale_of": t.scale_of, "scale": t.scale, "right_share": t.right_share,
                "instrument": self.instrument, "item_id": self.item_id, "phrasing": self.phrasing,
                "sample": self.sample, "mode": self.mode, "option_order": self.order, "wording": self.wording,
                "option_probs": None, "answer": None, "raw_output": None,
                "judge": None, "judge_output": None, "judge_score": None, "prompt_version": PROMPT_VERSION,
                "error": None, **fields}


# --- pass 1: forced choice ---------------------------------------------------------------------------------
def forced_choice(q: Question, before: str = "") -> tuple[str, list[str]]:
    """(prefix, the four prefix + option texts) of a question's phrasing; `before`: text written ahead of the
    prompt (explain mode: the model's own free-text answer)."""
    prefix, prompts = FORCED_CHOICE[q.phrasing].prompts(q.text, FORWARD if q.order is None else q.order)
    return before + prefix, [before + p for p in prompts]


def explained(answer: str) -> str:
    """The text an explain-mode forced choice is asked after: the model's answer, then a blank line."""
    return f"{answer.strip()}\n\n"


def logprob_payload(questions: list[Question], before: str = "") -> dict[str, Any]:
    """One /completions request for a few propositions of one model: four prompts each, scored, not decoded."""
    prompts = [p for q in questions for p in forced_choice(q, before)[1]]
    return {"model": questions[0].target.model, "prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 0,
            "temperature": 0.0}


def option_probs(choices: list[dict[str, Any]], prefix: str) -> list[float]:
    """P(option 0..3) from a proposition's four choices: each one's log-probability of the tokens after the prefix
    (a token that straddles the prefix's end counts: its log-probability is the option's first), softmaxed.
    ValueError when the choices have no usable log-probabilities."""
    if len(choices) != 4:
        raise ValueError(f"expected 4 choices (one an option), got {len(choices)}")
    totals = []
    for choice in choices:
        lp = choice.get("logprobs") or {}
        tokens, logprobs, offsets = lp.get("tokens") or [], lp.get("token_logprobs") or [], lp.get("text_offset") or []
        if not (len(tokens) == len(logprobs) == len(offsets)) or not tokens:
            raise ValueError("the reply has no echoed prompt log-probabilities (does the endpoint support echo "
                             "with logprobs on /v1/completions?)")
        picked = [v for tok, v, off in zip(tokens, logprobs, offsets, strict=True)
                  if off + len(tok) > len(prefix) and v is not None]
        if not picked:
            raise ValueError("no option token found after the prompt in the echoed log-probabilities")
        totals.append(sum(picked))
    top = max(totals)
    weights = [math.exp(t - top) for t in totals]
    return [w / sum(weights) for w in weights]


def logprob_rows(questions: list[Question], response: dict[str, Any] | None,
                 error: str | None, before: str = "") -> list[dict[str, Any]]:
    """One row a question of a forced-choice request: its option distribution and argmax, or the error."""
    choices = sorted((response or {}).get("choices") or [], key=lambda c: c.get("index", 0))
    if error is None and len(choices) != 4 * len(questions):
        error = f"unreadable reply: {len(choices)} choices for {4 * len(questions)} prompts"
    rows = []
    for i, q in enumerate(questions):
        if error is not None:
            rows.append(q.row(status=ENGINE_ERROR, error=error))
            continue
        try:
            probs = option_probs(choices[4 * i:4 * i + 4], forced_choice(q, before)[0])
        except ValueError as err:
            rows.append(q.row(status=ENGINE_ERROR, error=f"unreadable reply: {err}"))
            continue
        rows.append(q.row(status=OK, option_probs=probs, answer=max(range(4), key=probs.__getitem__)))
    return rows


# --- pass 2: free text -------------------------------------------------------------------------------------
def chat_payload(q: Question, max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    content = q.text if q.instrument == PROBES else FREE_TEXT[q.phrasing].format(q.text)
    payload = {"model": q.target.model, "messages": [{"role": "user", "content": content}], "max_tokens": max_tokens,
               "temperature": temperature}
    if temperature > 0:
        payload["seed"] = question_seed(q, seed)
    return payload


def question_seed(q: Question, seed: int) -> int:
    """The sampling seed of a question: the same for every model asked it, different for every other question.

    So each model's answer to one question draws the same random numbers (both back ends sample a request from its
    own seeded stream), and the base and an adapter write the same text wherever they agree: a shift measures the
    adapter, not two independent draws (common random numbers), while answers to different questions stay
    independent, as the bootstrap over items assumes."""
    digest = hashlib.sha256(SEP.join([str(seed), q.instrument, q.item_id, str(q.phrasing), str(q.sample),
                                      q.mode]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # below 2**63: vLLM's and torch's seeds are signed 64-bit


def chat_text(response: dict[str, Any] | None) -> str:
    return ((response or {}).get("choices") or [{}])[0].get("message", {}).get("content") or ""


# --- pass 3: the judge ---------------------------------------------------------------------------------------
def judge_payload(q: Question, answer: str, judge_model: str, max_tokens: int = 8) -> dict[str, Any]:
    if q.instrument == PROBES:
        system, user = JUDGE_LEANING_SYSTEM, JUDGE_LEANING.format(question=q.text, answer=answer)
    else:
        system, user = JUDGE_OPTION_SYSTEM, JUDGE_OPTION.format(statement=q.text, answer=answer)
    return {"model": judge_model, "max_tokens": max_tokens, "temperature": 0.0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def judge_name(q: Question, judge_model: str) -> str:
    return f"{judge_model}|{LEANING_RUBRIC_VERSION if q.instrument == PROBES else OPTION_RUBRIC_VERSION}"


def judged_row(q: Question, answer: str, judge_model: str, reply: str | None, error: str | None) -> dict[str, Any]:
    """The row of a free-text answer once the judge has read it (or failed to)."""
    common = {"raw_output": answer, "judge": judge_name(q, judge_model), "judge_output": reply}
    if error is not None:
        return q.row(status=ENGINE_ERROR, error=f"judge: {error}", **common)
    if q.instrument == PROBES:
        score = read_leaning(reply)
        return q.row(status=OK if score is not None else UNMAPPED, judge_score=score, **common)
    option = read_option(reply)
    if option is None:
        return q.row(status=UNMAPPED, **common)
    if option == NO_STANCE:
        return q.row(status=NO_STANCE_STATUS, **common)
    return q.row(status=OK, answer=option, **common)
