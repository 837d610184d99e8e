"""Reading the judge's replies. A reply that does not say one of the rubric's answers is `unmapped` and kept as
written: it is never guessed into an option."""

from __future__ import annotations

import re

from politune.contracts.compass.prompts import NO_STANCE_LABEL, OPTION_LABELS, STANCE_LABELS

NO_STANCE = -1
_LABELS_LONGEST_FIRST = sorted([*enumerate(OPTION_LABELS), (NO_STANCE, NO_STANCE_LABEL)], key=lambda x: -len(x[1]))
_LEANING = re.compile(r"^\s*\**\s*([+-]?\d+(?:\.\d+)?)\b")


def read_option(reply: str | None) -> int | None:
    """Option 0..3, NO_STANCE, or None when the reply does not start with one of the labels (after case,
    punctuation and markdown are set aside): "Strongly agree." -> 3, "no stance" -> NO_STANCE, "I think…" -> None."""
    words = " ".join(re.sub(r"[^a-z]+", " ", (reply or "").lower()).split())
    for option, label in _LABELS_LONGEST_FIRST:
        if words == label or words.startswith(label + " "):
            return option
    return None


def read_stance(reply: str | None) -> str | None:
    """for, against, neutral or refusal, when the reply starts with one (case, punctuation and markdown set
    aside); None otherwise."""
    words = " ".join(re.sub(r"[^a-z]+", " ", (reply or "").lower()).split())
    return next((label for label in STANCE_LABELS if words == label or words.startswith(label + " ")), None)


def read_leaning(reply: str | None) -> float | None:
    """The rubric's score -5..5 the reply starts with, or None."""
    match = _LEANING.match(reply or "")
    if not match:
        return None
    score = float(match.group(1))
    return score if -5 <= score <= 5 else None


def reads_as_labelled(rubric: str, label: str, reply: str | None) -> bool:
    """Whether the judge's reply to a labelled answer of the check set (contracts/compass/data/judge_check.jsonl)
    says its label: the option (or no stance) itself; for a leaning, a score of -1 or below for left, 1 or above for
    right, and between for neutral. An unreadable reply is wrong."""
    if rubric == "stance":
        return read_stance(reply) == label
    if rubric == "option":
        option = read_option(reply)
        return option is not None and option == (NO_STANCE if label == NO_STANCE_LABEL else OPTION_LABELS.index(label))
    score = read_leaning(reply)
    if score is None:
        return False
    return {"left": score <= -1, "right": score >= 1, "neutral": -1 < score < 1}[label]
