"""The annotation prompts, in one place and versioned: every Annotation row carries the version.

Bump PROMPT_VERSION whenever a word below changes; resume treats a new version as a new annotation.
"""

from __future__ import annotations

from typing import Any

PROMPT_VERSION = "annotate-v1"
SCALES = ("ideology", "relevance", "quality")
SCALE_MIN, SCALE_MAX = 0, 10
ANSWERS = tuple(str(i) for i in range(SCALE_MIN, SCALE_MAX + 1))

SYSTEM = (
    "You rate social-media posts for a study of political language. "
    "Judge only the text of the post; do not guess who wrote it."
)

SCALE_QUESTIONS = {
    "ideology": "Where does this post sit politically? 0 = far left, 5 = centre or no leaning, 10 = far right.",
    "relevance": "How much is this post about politics or public policy? 0 = not at all, 10 = entirely.",
    "quality": "How coherent and informative is this post? 0 = spam or gibberish, 10 = clear and substantive.",
}

JSON_SCHEMA = {
    "type": "object",
    "properties": {s: {"type": "integer", "minimum": SCALE_MIN, "maximum": SCALE_MAX} for s in SCALES},
    "required": list(SCALES),
    "additionalProperties": False,
}


def generate_messages(text: str) -> list[dict[str, str]]:
    """One prompt asking for all three scores as JSON (the `generate` reading mode)."""
    questions = "\n".join(f"- {s}: {q}" for s, q in SCALE_QUESTIONS.items())
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Post:\n{text}\n\nRate the post on three scales from {SCALE_MIN} to {SCALE_MAX}:\n{questions}\n\n"
            'Answer with JSON only, like {"ideology": 5, "relevance": 7, "quality": 6}.')},
    ]


def scale_messages(text: str, scale: str) -> list[dict[str, str]]:
    """One prompt a scale, answered by a single number (the `logprob` reading mode)."""
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": (
            f"Post:\n{text}\n\n{SCALE_QUESTIONS[scale]}\n"
            f"Answer with one whole number from {SCALE_MIN} to {SCALE_MAX} and nothing else.")},
    ]


def prompt_version(mode: str) -> str:
    return f"{PROMPT_VERSION}/{mode}"


def answer_token_ids(tokenizer: Any, model_name: str) -> list[int]:
    """Token ids of the answers "0".."10" (the `logprob` reading mode); each must be one token."""
    ids = []
    for answer in ANSWERS:
        tokens = tokenizer.encode(answer, add_special_tokens=False)
        if len(tokens) != 1:
            raise ValueError(f"logprob mode needs every answer to be one token; {model_name!r} splits "
                             f"{answer!r} into {len(tokens)} tokens (use mode: generate for this model)")
        ids.append(tokens[0])
    return ids
