"""Cleaning preference pairs: repair what can be repaired, drop the rest with a counted reason.

Written against the defects found in the released PoliTune sets (../shared/data/politune):
- repaired: a chat preamble before the answer ("Here's a response that aligns with …:"), and an
  answer wrapped whole in double quotes;
- dropped: an empty field; a model refusal ("I cannot fulfill requests that …", "As an AI …"); a
  leaked source record (the scraped post's dict, `'subreddit': …, 'party': …`); an answer cut off
  mid-sentence; chosen the same as rejected; an instruction already used on that side.
Every pair ends kept (possibly repaired) or dropped under exactly one reason, first match wins.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

FIELDS = ("prompt", "chosen", "rejected")
DROP_REASONS = ("empty", "refusal", "leaked_record", "truncated", "identical", "duplicate_prompt")
# and, for pairs the synthesizer wrote: its batch failed, or the consistency check disagreed
GENERATION_DROP_REASONS = ("engine_error", "inconsistent", "unscored")

_PREAMBLE = re.compile(r"^(?:here is|here's|sure|certainly|of course)\b[^\n]{0,200}:[ \t]*\r?\n\s*", re.I)
_REFUSAL = re.compile(
    r"^\s*(?:I'm sorry|I am sorry|I apologi[sz]e)(?: if my previous response|,? but I (?:cannot|can't|won't))"
    r"|\bI (?:cannot|can't|can not|won't|will not|am unable to|'m unable to|am not able to|'m not able to) "
    r"(?:fulfill|generate|provide|create|write|produce|assist|help with|comply|engage|support|promote|endorse)\b"
    r"|\bAs an AI\b|\bas a language model\b|\bIs there (?:anything|something) else I can (?:help|assist)",
    re.I)
# the scraped record's dict pasted into an answer: {'text': …, 'subreddit': …, 'party': …} or {'text': …,
# 'index': …, 'hashtags': …}
_LEAKED_RECORD = re.compile(r"""['"](?:subreddit|party|region|score|index|hashtags|created_utc)['"]\s*:\s*\S""")
# cut off mid-sentence: ends on a comma, colon or dash, or on a word that cannot end a sentence. A
# missing full stop alone is not enough: the sets hold many complete headlines and hashtag lists.
_CUT_OFF = re.compile(r"(?:[,:;(\-–—]|\b(?:the|a|an|and|or|but|of|to|in|on|for|with|that|which|who|is|are|was|were|"
                      r"by|as|at|from|our|their|its|his|her|this|these)\b)\s*$", re.I)


@dataclass
class CleanReport:
    kept: int = 0
    dropped: Counter = dataclass_field(default_factory=Counter)   # reason -> pairs
    repaired: Counter = dataclass_field(default_factory=Counter)  # "field: repair" -> pairs

    def as_dict(self) -> dict[str, Any]:
        return {"kept": self.kept, "dropped": {r: self.dropped.get(r, 0) for r in DROP_REASONS},
                "repaired": dict(sorted(self.repaired.items()))}


@dataclass
class Verdict:
    pair: dict[str, Any]            # the pair, repaired
    reason: str | None = None       # None: kept
    field: str | None = None        # the field the reason is about
    repairs: list[str] = dataclass_field(default_factory=list)


def clean_pairs(pairs: list[dict[str, Any]]) -> tuple[list[Verdict], CleanReport]:
    """Judge each pair in order (a duplicate instruction keeps the first kept pair on its side). A pair
    may say its answers were cut off by the generator (`chosen_truncated` / `rejected_truncated`)."""
    report, seen, verdicts = CleanReport(), set(), []
    for pair in pairs:
        verdict = judge_pair(pair)
        if verdict.reason is None:
            key = (pair.get("side"), normalise(verdict.pair["prompt"]))
            if key in seen:
                verdict.reason, verdict.field = "duplicate_prompt", "prompt"
            seen.add(key)
        if verdict.reason is None:
            report.kept += 1
            report.repaired.update(verdict.repairs)
        else:
            report.dropped[verdict.reason] += 1
        verdicts.append(verdict)
    return verdicts, report


def judge_pair(pair: dict[str, Any]) -> Verdict:
    """One pair on its own: repaired, then kept or dropped with the first reason that applies."""
    repaired, repairs = dict(pair), []
    for name in FIELDS:
        text, fixes = repair_text(pair.get(name))
        repaired[name] = text
        repairs += [f"{name}: {fix}" for fix in fixes]
    for name in FIELDS:
        reason = field_defect(repaired[name], is_answer=name != "prompt")
        if reason is None and pair.get(f"{name}_truncated"):
            reason = "truncated"  # the generator stopped at its token limit
        if reason:
            return Verdict(repaired, reason, name, repairs)
    if normalise(repaired["chosen"]) == normalise(repaired["rejected"]):
        return Verdict(repaired, "identical", "rejected", repairs)
    return Verdict(repaired, None, None, repairs)


def repair_text(text: Any) -> tuple[Any, list[str]]:
    if not isinstance(text, str):
        return text, []
    fixes, out = [], text.strip()
    stripped = _PREAMBLE.sub("", out, count=1)
    if stripped != out and stripped:
        out, fixes = stripped.strip(), [*fixes, "preamble"]
    if len(out) > 2 and out[0] == out[-1] == '"' and '"' not in out[1:-1]:
        out, fixes = out[1:-1].strip(), [*fixes, "quotes"]
    return out, fixes


def field_defect(text: Any, is_answer: bool) -> str | None:
    if not isinstance(text, str) or not text.strip():
        return "empty"
    if _REFUSAL.search(text):
        return "refusal"
    if _LEAKED_RECORD.search(text):
        return "leaked_record"
    if is_answer and _CUT_OFF.search(text):
        return "truncated"
    return None


def normalise(text: Any) -> str:
    return " ".join(unicodedata.normalize("NFKC", str(text)).casefold().split())
