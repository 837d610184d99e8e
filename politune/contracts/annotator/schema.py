"""Arrow schema of an Annotation row (the design's contract, plus the logprob mode's argmax)."""

from typing import Any

import pyarrow as pa

from politune.contracts.annotator.prompts import SCALES

ANNOTATION_SCHEMA = pa.schema(
    [("doc_id", pa.string())]
    + [(s, pa.float64()) for s in SCALES]           # generate: the number written; logprob: expected value
    + [(f"{s}_argmax", pa.int64()) for s in SCALES]  # logprob: most likely answer; generate: the number written
    + [("status", pa.string()),                      # ok | parse_error | engine_error
       ("raw_output", pa.string()),                  # what the model wrote, or the engine's error
       ("annotator", pa.string()),
       ("prompt_version", pa.string())]
)
STATUSES = ("ok", "parse_error", "engine_error")
RAW_OUTPUT_MAX_CHARS = 2000


def annotation_row(status: str, raw: str, annotator: str, version: str, scores: dict[str, float] | None = None,
                   argmax: dict[str, int] | None = None) -> dict[str, Any]:
    """One Annotation row without its doc_id; scales missing from `scores` are null."""
    row: dict[str, Any] = {s: (scores or {}).get(s) for s in SCALES}
    row.update({f"{s}_argmax": (argmax or {}).get(s) for s in SCALES})
    row.update(status=status, raw_output=raw[:RAW_OUTPUT_MAX_CHARS], annotator=annotator, prompt_version=version)
    return row
