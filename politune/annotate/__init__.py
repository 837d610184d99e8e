"""Annotate: an LLM scores every document for ideology, political relevance and quality."""

from politune.stage import Stage, lazy, lazy_exports

STAGE = Stage(
    name="annotate",
    help="Score every document for ideology, relevance and quality with the configured LLM (resumable).",
    reads=("documents",), writes=("annotations",), section="annotate",
    build=lazy("politune.annotate.stage", "annotate_documents"),
    summary=lazy("politune.annotate.summary", "annotate_summary"),
    identity=lazy("politune.annotate.stage", "annotate_identity"), done_when="annotations",
    model_fields=lazy("politune.annotate.stage", "annotate_models"),
    figures=lazy("politune.annotate.summary", "annotate_figures"))

__all__ = ["STAGE", "AnnotateResult", "annotate_documents"]
__getattr__ = lazy_exports(__name__, "politune.annotate.stage")  # AnnotateResult, annotate_documents: on first use
