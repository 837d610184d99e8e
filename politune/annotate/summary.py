"""What annotate's result says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from politune.annotate.stage import AnnotateResult
from politune.stage import per_second


def annotate_summary(result: AnnotateResult) -> list[Any]:
    statuses = ", ".join(f"{n:,} {s}" for s, n in result.statuses.items())
    return [f"annotate:   {result.documents:,} documents, one row each ({statuses}); "
            f"{result.annotated_now:,} scored now, {result.resumed_from:,} kept from an earlier run",
            f"annotations: {result.annotations_uri}"]


def annotate_figures(result: AnnotateResult, seconds: float) -> dict[str, Any]:
    return {"documents_scored": result.annotated_now, "documents_per_s": per_second(result.annotated_now, seconds)}
