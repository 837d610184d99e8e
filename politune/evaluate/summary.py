"""What evaluate's result says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from politune.evaluate.stage import EvaluateResult
from politune.stage import per_second


def evaluate_summary(result: EvaluateResult) -> list[Any]:
    statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(result.statuses.items()))
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items())
    lines = [f"evaluate:   {len(result.models)} model(s), {sum(result.statuses.values()):,} answers "
             f"({statuses}); {timing}"]
    check = result.judge_check
    if check:
        rubrics = ", ".join(f"{name} {by['correct']}/{by['asked']}" for name, by in check["rubrics"].items())
        verdict = "meets" if check["passed"] else "is BELOW"
        lines.append(f"judge:      {check['judge']}: labelled answers read right: {rubrics}; {verdict} the "
                     f"configured accuracy ({check['min_accuracy']:.0%})")
    if result.reused:
        lines.append(f"            {result.reused:,} answers kept from the earlier, incomplete evaluation; only the "
                     "rest were asked")
    if result.failed:
        lines.append(f"            {result.failed:,} requests failed after their retries (engine_error rows, each "
                     "with its error): run it again to ask only those")
    return [*lines, f"answers:    {result.eval_uri}/answers.parquet"]


def evaluate_figures(result: EvaluateResult, seconds: float) -> dict[str, Any]:
    answers = sum(result.statuses.values())
    return {"answers": answers, "answers_per_s": per_second(answers, seconds), "seconds_by_mode": result.seconds}
