"""Reading a model's written answer (the `generate` mode): JSON with three scores, validated."""

from __future__ import annotations

import json
import re

from politune.annotate.prompts import SCALE_MAX, SCALE_MIN, SCALES

_OBJECT = re.compile(r"\{[^{}]*\}", re.DOTALL)


class ParseError(ValueError):
    pass


def parse_scores(output: str) -> dict[str, float]:
    """The first JSON object in the output, with every scale a number in range; else ParseError."""
    match = _OBJECT.search(output)
    if match is None:
        raise ParseError("no JSON object in the answer")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as err:
        raise ParseError(f"not valid JSON: {err.msg}") from None
    scores = {}
    for scale in SCALES:
        value = data.get(scale)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParseError(f"{scale}: expected a number, got {json.dumps(value)}")
        if not SCALE_MIN <= value <= SCALE_MAX:
            raise ParseError(f"{scale}: {value} is outside {SCALE_MIN}..{SCALE_MAX}")
        scores[scale] = float(value)
    return scores
