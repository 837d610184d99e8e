"""What evaluate's result says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from politune.evaluate.stage import EvaluateResult
from politune.stage import per_second


def evaluate_summary(result: EvaluateResult) -> list[Any]:
    statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(result.statuses.items()))
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items())
    return [f"evaluate:   {len(result.models)} model(s), {sum(result.statuses.values()):,} answers "
            f"({statuses}); {timing}",
            f"answers:    {result.eval_uri}/answers.parquet"]


def evaluate_figures(result: EvaluateResult, seconds: float) -> dict[str, Any]:
    answers = sum(result.statuses.values())
    return {"answers": answers, "answers_per_s": per_second(answers, seconds), "seconds_by_mode": result.seconds}
