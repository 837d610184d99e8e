"""What train's result (an adapter a side or mixture) says: its console summary and its figures for the manifest."""

from __future__ import annotations

from typing import Any

from politune.stage import per_second
from politune.train.stage import TrainResult


def train_summary(results: dict[str, TrainResult]) -> list[Any]:
    lines: list[Any] = []
    for result in results.values():
        a, m = result.adapter, result.adapter.metrics
        resumed = f", resumed from step {m['resumed_from_step']}" if m.get("resumed_from_step") else ""
        on = a.side if a.shares is None else " + ".join(f"{share:.0%} {s}" for s, share in a.shares.items())
        lines.append(f"train:      adapter {a.name!r} ({a.method} on {on}, base {a.base_model}): "
                     f"{m.get('global_step', 0)} steps{resumed}, {len(m.get('worker_nodes', []))} worker(s)")
        for prefix, label in (("", "held out"), ("left/", "held out, left split"), ("right/", "held out, right split")):
            if m.get(f"before/{prefix}pairs"):
                lines.append(f"  {label} ({m[f'before/{prefix}pairs']} pairs): preference accuracy "
                             f"{m[f'before/{prefix}preference_accuracy']:.2f} -> "
                             f"{m[f'after/{prefix}preference_accuracy']:.2f}, reward margin "
                             f"{m[f'after/{prefix}reward_margin']:+.3f}; likelihood accuracy "
                             f"{m[f'before/{prefix}likelihood_accuracy']:.2f} -> "
                             f"{m[f'after/{prefix}likelihood_accuracy']:.2f}")
        lines.append(f"  adapter: {a.path}")
    return lines


def train_figures(results: dict[str, TrainResult], seconds: float) -> dict[str, Any]:
    steps = sum(r.metrics.get("global_step", 0) or 0 for r in results.values())
    return {"adapters": [r.adapter.name for r in results.values()], "steps": steps,
            "steps_per_s": per_second(steps, seconds),
            "train_seconds": {r.adapter.name: r.metrics.get("train_runtime") for r in results.values()}}
