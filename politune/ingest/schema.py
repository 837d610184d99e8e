"""Arrow schemas of what ingest writes (the Document and Quarantine contracts in the design)."""

import pyarrow as pa

DOCUMENT_SCHEMA = pa.schema([
    ("doc_id", pa.string()),
    ("source", pa.string()),
    ("text", pa.string()),
    ("created_at", pa.string()),
    ("author", pa.string()),
    ("meta", pa.string()),
    ("label", pa.string()),
])

QUARANTINE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("file", pa.string()),
    ("row", pa.int64()),  # 1-based: the line of a jsonl file, the record of a CSV or Parquet file
    ("field", pa.string()),
    ("reason", pa.string()),
    ("raw", pa.string()),  # the record as read, truncated
])

# What the read pass writes: every input row once, as a document or as a quarantined row. `part`
# routes it: a dedup bucket ("b00012") for documents, "quarantine" for the rest.
STAGING_SCHEMA = pa.schema(
    [("part", pa.string()), ("text_hash", pa.string())]
    + [f for f in DOCUMENT_SCHEMA if f.name != "source"]
    + list(QUARANTINE_SCHEMA)
)

DOCUMENT_COLUMNS = DOCUMENT_SCHEMA.names
QUARANTINE_COLUMNS = QUARANTINE_SCHEMA.names
QUARANTINE_PART = "quarantine"
REPOST_PART = "repost"  # staging rows of re-posts: file, row, and in `reason` the original's doc_id

REPOST_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("file", pa.string()),
    ("row", pa.int64()),
    ("original_doc_id", pa.string()),  # null when the re-post does not name its original
])
RAW_MAX_CHARS = 500
