"""A draft pair: what a pair writer (hf_writer.py, llm_writer.py) returns for one selected post, before
the cleaner and the consistency check see it. A post whose engine call failed is a draft with `error`."""

from __future__ import annotations

from typing import Any

import pyarrow as pa

PAIR_DRAFT_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("side", pa.string()),
    ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("prompt_truncated", pa.bool_()), ("chosen_truncated", pa.bool_()), ("rejected_truncated", pa.bool_()),
    ("error", pa.string()),
])
Reply = tuple[str, bool]  # (text, stopped at max_new_tokens)


def first_line(text: str) -> str:
    """An instruction is one line; models often add a second."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else ""


def draft(post: dict[str, Any], instruction: Reply, answers: dict[str, Reply]) -> dict[str, Any]:
    """The draft of a post whose calls all succeeded; without a "chosen" answer the post is chosen."""
    chosen = answers.get("chosen", (post["text"], False))
    return {"doc_id": post["doc_id"], "side": post["side"], "prompt": instruction[0], "chosen": chosen[0],
            "rejected": answers["rejected"][0], "prompt_truncated": instruction[1], "chosen_truncated": chosen[1],
            "rejected_truncated": answers["rejected"][1], "error": None}


def failed(post: dict[str, Any], error: str) -> dict[str, Any]:
    """The draft of a post an engine call failed for: no texts, the error."""
    return {**dict.fromkeys(PAIR_DRAFT_SCHEMA.names), "doc_id": post["doc_id"], "side": post["side"], "error": error}
