"""What select's result says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from politune.select.stage import SelectResult


def select_summary(result: SelectResult) -> list[Any]:
    lines: list[Any] = [f"select:     {result.kept['left']:,} left and {result.kept['right']:,} right posts of "
                        f"{result.documents:,}"]
    for reason, n in result.dropped.items():
        lines.append(f"  dropped: {n:,} × {escape(reason)}")
    if result.truth:
        t = result.truth
        shares = ", ".join(f"{s} {share:.1%}" for s, share in t["selected_on_side"].items())
        lines.append(f"  against the corpus's own labels: annotate put {t['annotated_on_side']:.1%} of "
                     f"{t['labelled']:,} left and right posts on their side of 5; selected posts on their side: "
                     f"{shares or 'none selected'}")
    lines.append(f"selected:   {result.selected_uri}")
    return lines


def select_figures(result: SelectResult, seconds: float) -> dict[str, Any]:
    return {"posts_selected": sum(result.kept.values())}
