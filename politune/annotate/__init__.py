"""Annotate: an LLM scores every document for ideology, political relevance and quality."""

from politune.annotate.stage import AnnotateResult, annotate_documents

__all__ = ["AnnotateResult", "annotate_documents"]
