"""Reading the judge's replies. A reply that does not say one of the rubric's answers is `unmapped` and kept as
written: it is never guessed into an option."""

from __future__ import annotations

import re

from politune.contracts.compass.prompts import NO_STANCE_LABEL, OPTION_LABELS

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


def read_leaning(reply: str | None) -> float | None:
    """The rubric's score -5..5 the reply starts with, or None."""
    match = _LEANING.match(reply or "")
    if not match:
        return None
    score = float(match.group(1))
    return score if -5 <= score <= 5 else None
