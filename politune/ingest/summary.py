"""What ingest's result says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from politune.ingest.stage import IngestResult
from politune.stage import per_second

SHOWN_DAMAGED_FILES = 5
INGEST_COUNTS = ("read", "kept", "duplicates", "reposts", "quarantined")


def ingest_summary(result: IngestResult) -> list[Any]:
    table = Table(title="ingest: rows read = kept + duplicates + reposts + quarantined")
    for column in ("source", *INGEST_COUNTS):
        table.add_column(column, justify="left" if column == "source" else "right")
    for source, c in result.counts.items():
        table.add_row(source, *(f"{c[k]:,}" for k in INGEST_COUNTS))
    t = result.totals
    table.add_row("all", *(f"{t[k]:,}" for k in INGEST_COUNTS), style="bold")
    lines: list[Any] = [table]
    for source, c in result.counts.items():
        if c.get("rejoined"):
            n = c["rejoined"]
            lines.append(f"  re-joined in {source}: {n:,} {'row' if n == 1 else 'rows'} whose text's line breaks "
                         "had split them")
        for reason, n in c["reasons"].items():
            lines.append(f"  quarantined from {source}: {n:,} × {escape(reason)}")
    damaged = [(file, reason) for files in result.damaged_files.values() for file, reason in sorted(files.items())]
    for file, reason in damaged[:SHOWN_DAMAGED_FILES]:
        lines.append(f"  damaged file {escape(file)}: {escape(reason.removeprefix('damaged: '))}")
    if len(damaged) > SHOWN_DAMAGED_FILES:
        lines.append(f"  … and {len(damaged) - SHOWN_DAMAGED_FILES:,} more damaged files (rows with field (file) in "
                     f"the quarantine)")
    lines.append(f"documents:  {result.documents_uri}")
    lines.append(f"quarantine: {result.quarantine_uri}")
    return lines


def ingest_figures(result: IngestResult, seconds: float) -> dict[str, Any]:
    rows = result.totals["read"]
    return {"rows_read": rows, "rows_per_s": per_second(rows, seconds)}
