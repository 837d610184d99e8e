"""Arrow schema of an Annotation row (the design's contract, plus the logprob mode's argmax)."""

import pyarrow as pa

from politune.annotate.prompts import SCALES

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
