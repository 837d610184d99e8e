"""Ingest: corpus files (local or s3://) to Document and Quarantine Parquet under the run directory."""

from politune.ingest.stage import IngestResult, ingest_corpus

__all__ = ["IngestResult", "ingest_corpus"]
