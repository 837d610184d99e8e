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
    FORCING,
    FORWARD,
    FREE_TEXT,
    ISSUE_FRAMINGS,
    JUDGE_LEANING,
    JUDGE_LEANING_SYSTEM,
    JUDGE_OPTION,
    JUDGE_OPTION_SYSTEM,
    JUDGE_STANCE,
    JUDGE_STANCE_SYSTEM,
    LEANING_RUBRIC_VERSION,
    OPTION_RUBRIC_VERSION,
    ORDERS,
    PROMPT_VERSION,
    STANCE_RUBRIC_VERSION,
)
from politune.contracts.compass.schema import ENGINE_ERROR, OK, UNMAPPED
from politune.contracts.compass.schema import NO_STANCE as NO_STANCE_STATUS
from politune.evaluate.endpoint import Target
from politune.evaluate.judge import NO_STANCE, read_leaning, read_option, read_stance

PROBES = "probes"
ISSUES = "issues"  # the open-ended issue set: writing requests whose stance the judge labels
FORCED_FREE_TEXT = "generate_forced"  # free text with an explicit instruction to choose
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

    def row_keys(self) -> list[tuple]:
        """The row_key of each row this question ends as: an explain question scores both option orders."""
        orders = list(ORDERS) if self.mode == "explain" and self.order is None else [self.order]
        return [(self.target.label or self.target.model, self.instrument, self.item_id, self.phrasing, self.sample,
                 self.mode, order) for order in orders]

    def in_order(self, order: int) -> Question:
        return replace(self, order=order)

    @property
    def wording(self) -> str | None:
        """The versioned name of the wording(s) asked: forced choice, free text, or free text then forced choice."""
        if self.instrument == PROBES:
            return None
        if self.instrument == ISSUES:
            return ISSUE_FRAMINGS[self.phrasing].name
        return {"logprob": FORCED_CHOICE[self.phrasing].name, "generate": FREE_TEXT[self.phrasing].name,
                "generate_forced": f"{FREE_TEXT[self.phrasing].name}+{FORCING.name}",
                "explain": f"{FREE_TEXT[self.phrasing].name}+{FORCED_CHOICE[self.phrasing].name}"}.get(self.mode)

    def row(self, **fields: Any) -> dict[str, Any]:
        t = self.target
        return {"model": t.label or t.model, "role": t.role, "adapter": t.adapter, "checkpoint_of": t.checkpoint_of,
                "step": t.step, "scale_of": t.scale_of, "scale": t.scale, "right_share": t.right_share,
                "instrument": self.instrument, "item_id": self.item_id, "phrasing": self.phrasing,
                "sample": self.sample, "mode": self.mode, "option_order": self.order, "wording": self.wording,
                "option_probs": None, "answer": None, "raw_output": None, "judge": None, "judge_output": None,
                "judge_score": None, "stance": None, "prompt_version": PROMPT_VERSION,
                "error": None, **fields}


def row_key(row: dict[str, Any]) -> tuple:
    """What an answer row answers: the model, the item, its wording, sample, mode and option order."""
    return (row["model"], row["instrument"], str(row["item_id"]), row["phrasing"], row["sample"], row["mode"],
            row["option_order"])


# --- pass 1: forced choice ---------------------------------------------------------------------------------
class ChatFormat:
    """Forced choice inside a model's chat template: the wording as a user message (explain: after the free-text
    question and the model's own answer as the conversation so far), rendered as the chat endpoint would render
    it up to the assistant's header, and each option's label scored as the assistant's reply. The rendered text is
    sent to /v1/completions; its leading start-of-text token is left to the server, which adds its own."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token
        self.strip = bos if bos and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id] else ""

    @classmethod
    def for_model(cls, name_or_path: str) -> ChatFormat:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        if not tokenizer.chat_template:
            raise ValueError(f"evaluate.forced_choice_format: chat needs a chat template, and {name_or_path}'s "
                             "tokenizer has none: use plain")
        return cls(tokenizer)

    def render(self, messages: list[dict[str, str]]) -> str:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text.removeprefix(self.strip) if self.strip else text


def forced_choice(q: Question, answer: str | None = None, chat: ChatFormat | None = None) -> tuple[str, list[str]]:
    """(prefix, the four prefix + option texts, by option) of a question's wording and order; `answer`: the model's
    own free-text answer it is asked after (explain mode); `chat`: in the model's chat format, else plain text."""
    fc, order = FORCED_CHOICE[q.phrasing], FORWARD if q.order is None else q.order
    if chat is None:
        before = f"{answer.strip()}\n\n" if answer is not None else ""
        prefix, prompts = fc.prompts(q.text, order)
        return before + prefix, [before + p for p in prompts]
    history = [{"role": "user", "content": FREE_TEXT[q.phrasing].format(q.text)},
               {"role": "assistant", "content": answer.strip()}] if answer is not None else []
    prefix = chat.render([*history, {"role": "user", "content": fc.chat_question(q.text, order)}])
    return prefix, [prefix + fc.chat_answer(k, order) for k in range(4)]


def logprob_payload(questions: list[Question], answer: str | None = None,
                    chat: ChatFormat | None = None) -> dict[str, Any]:
    """One /completions request for a few propositions of one model: four prompts each, scored, not decoded."""
    prompts = [p for q in questions for p in forced_choice(q, answer, chat)[1]]
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


def logprob_rows(questions: list[Question], response: dict[str, Any] | None, error: str | None,
                 answer: str | None = None, chat: ChatFormat | None = None) -> list[dict[str, Any]]:
    """One row a question of a forced-choice request: its option distribution and argmax, or the error. Asked in the
    chat format, the row's wording says so (`+chat`)."""
    choices = sorted((response or {}).get("choices") or [], key=lambda c: c.get("index", 0))
    if error is None and len(choices) != 4 * len(questions):
        error = f"unreadable reply: {len(choices)} choices for {4 * len(questions)} prompts"
    rows = []
    for i, q in enumerate(questions):
        fmt = {"wording": f"{q.wording}+chat"} if chat is not None else {}
        if error is not None:
            rows.append(q.row(status=ENGINE_ERROR, error=error, **fmt))
            continue
        try:
            probs = option_probs(choices[4 * i:4 * i + 4], forced_choice(q, answer, chat)[0])
        except ValueError as err:
            rows.append(q.row(status=ENGINE_ERROR, error=f"unreadable reply: {err}", **fmt))
            continue
        rows.append(q.row(status=OK, option_probs=probs, answer=max(range(4), key=probs.__getitem__), **fmt))
    return rows


# --- pass 2: free text -------------------------------------------------------------------------------------
def chat_payload(q: Question, max_tokens: int, temperature: float, seed: int) -> dict[str, Any]:
    if q.instrument == PROBES:
        content = q.text
    elif q.instrument == ISSUES:
        content = ISSUE_FRAMINGS[q.phrasing].format(q.text)
    else:
        content = FREE_TEXT[q.phrasing].format(q.text)
        if q.mode == FORCED_FREE_TEXT:
            content = FORCING.format(content)
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
RUBRICS = {  # the judge's rubric of each kind of answer: system prompt, user prompt, version
    "option": (JUDGE_OPTION_SYSTEM, JUDGE_OPTION, OPTION_RUBRIC_VERSION),      # a proposition's free-text answer
    "leaning": (JUDGE_LEANING_SYSTEM, JUDGE_LEANING, LEANING_RUBRIC_VERSION),  # a probe's answer
    "stance": (JUDGE_STANCE_SYSTEM, JUDGE_STANCE, STANCE_RUBRIC_VERSION),      # a text written on an issue
}
RUBRIC_INSTRUMENT = {"leaning": PROBES, "stance": ISSUES}  # option: a proposition of any instrument


def rubric(instrument: str) -> str:
    return {PROBES: "leaning", ISSUES: "stance"}.get(instrument, "option")


def judge_payload(q: Question, answer: str, judge_model: str, max_tokens: int = 8) -> dict[str, Any]:
    system, template, _ = RUBRICS[rubric(q.instrument)]
    user = template.format(statement=q.text, question=q.text, issue=q.text, answer=answer)
    return {"model": judge_model, "max_tokens": max_tokens, "temperature": 0.0,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}]}


def judge_name(q: Question, judge_model: str) -> str:
    return f"{judge_model}|{RUBRICS[rubric(q.instrument)][2]}"


def judged_row(q: Question, answer: str, judge_model: str, reply: str | None, error: str | None) -> dict[str, Any]:
    """The row of a free-text answer once the judge has read it (or failed to)."""
    common = {"raw_output": answer, "judge": judge_name(q, judge_model), "judge_output": reply}
    if error is not None:
        return q.row(status=ENGINE_ERROR, error=f"judge: {error}", **common)
    if q.instrument == PROBES:
        score = read_leaning(reply)
        return q.row(status=OK if score is not None else UNMAPPED, judge_score=score, **common)
    if q.instrument == ISSUES:
        stance = read_stance(reply)
        return q.row(status=OK if stance is not None else UNMAPPED, stance=stance, **common)
    option = read_option(reply)
    if option is None:
        return q.row(status=UNMAPPED, **common)
    if option == NO_STANCE:
        return q.row(status=NO_STANCE_STATUS, **common)
    return q.row(status=OK, answer=option, **common)
