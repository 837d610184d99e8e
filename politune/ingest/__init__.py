"""Ingest: corpus files (local or s3://) to Document and Quarantine Parquet under the run directory."""

from politune.stage import Stage, lazy, lazy_exports

STAGE = Stage(
    name="ingest", help="Read the configured sources into documents/ and quarantine/ under the run directory.",
    reads=(), writes=("documents", "quarantine"), section="ingest",
    build=lazy("politune.ingest.stage", "ingest_corpus"), summary=lazy("politune.ingest.summary", "ingest_summary"),
    identity=lazy("politune.ingest.stage", "ingest_identity"), done_when="documents", sample_corpus=True,
    figures=lazy("politune.ingest.summary", "ingest_figures"))

__all__ = ["STAGE", "IngestResult", "ingest_corpus"]
__getattr__ = lazy_exports(__name__, "politune.ingest.stage")  # IngestResult, ingest_corpus: imported on first use
