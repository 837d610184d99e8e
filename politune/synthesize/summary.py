"""What synthesize's result says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from rich.markup import escape

from politune.stage import per_second
from politune.synthesize.stage import SynthesizeResult


def synthesize_summary(result: SynthesizeResult) -> list[Any]:
    lines: list[Any] = []
    for side, c in result.sides.items():
        dropped = sum(c.dropped.values())
        lines.append(f"{side + ':':<6} {c.read:,} pairs: {c.train + c.eval:,} kept ({c.train:,} train, "
                     f"{c.eval:,} eval), {dropped:,} dropped, {c.unreadable:,} unreadable")
        for reason, n in c.dropped.items():
            if n:
                lines.append(f"  dropped: {n:,} × {escape(reason)}")
        for repair, n in c.repaired.items():
            lines.append(f"  repaired: {n:,} × {escape(repair)}")
        if c.consistency_checked:
            passed = c.train + c.eval
            lines.append(f"  consistency check kept {passed:,} of {c.consistency_checked:,} "
                         f"({passed / c.consistency_checked:.0%})")
    lines.append(f"preferences: {result.preferences_uri}")
    return lines


def synthesize_figures(result: SynthesizeResult, seconds: float) -> dict[str, Any]:
    pairs = sum(c.read for c in result.sides.values())
    return {"pairs_written": pairs, "pairs_per_s": per_second(pairs, seconds)}
