"""Reading a model's answer: written JSON (the `generate` mode) or answer log-probabilities (`logprob`)."""

from __future__ import annotations

import json
import re

import numpy as np

from politune.contracts.annotator.prompts import SCALE_MAX, SCALE_MIN, SCALES

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


def expected_and_argmax(answer_logprobs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """From log-probabilities (or logits) of the answers 0..10, shape (..., 11): the expected answer
    and the most likely one, after renormalising over the eleven answers."""
    logps = np.asarray(answer_logprobs, dtype=np.float64)
    probs = np.exp(logps - logps.max(axis=-1, keepdims=True))
    probs /= probs.sum(axis=-1, keepdims=True)
    return probs @ np.arange(probs.shape[-1], dtype=np.float64), probs.argmax(axis=-1)
