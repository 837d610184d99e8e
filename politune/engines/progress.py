"""The running stage's counts, live, for the driver's console.

Ray's metrics endpoint (engines/metrics.py) is for the dashboard and a scraper; the driver cannot read it back.
So whatever a stage counts through StageMetrics also goes to one small actor per run, the board, named after the
run in the `politune` namespace (Serve replicas live in Serve's own namespace). The driver creates it while a
stage runs and reads it twice a second; a worker that finds no board (a stage run outside the pipeline) counts
for the metrics endpoint only. The board is for watching: the stage's own summary and the manifest hold the
exact counts.
"""

from __future__ import annotations

import time
from typing import Any

NAMESPACE = "politune"
LOOKUP_AGAIN_S = 1.0  # a worker that found no board asks again this much later, not on every count


def board_name(run_id: str) -> str:
    return f"progress-{run_id}"


class ProgressBoard:
    """Per stage: items finished by kind (summed) and the latest value of each named figure."""

    def __init__(self) -> None:
        self.items: dict[str, dict[str, float]] = {}
        self.values: dict[str, dict[str, float]] = {}

    def add(self, stage: str, kind: str, n: float) -> None:
        counts = self.items.setdefault(stage, {})
        counts[kind] = counts.get(kind, 0) + n

    def set(self, stage: str, name: str, value: float) -> None:
        self.values.setdefault(stage, {})[name] = value

    def read(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        return dict(self.items.get(stage, {})), dict(self.values.get(stage, {}))


def open_board(run_id: str) -> Any:
    """The run's board, created by the caller (the driver) if it does not exist; it lives as long as the driver."""
    import ray

    actor = ray.remote(num_cpus=0, max_concurrency=4)(ProgressBoard)
    return actor.options(name=board_name(run_id), namespace=NAMESPACE, get_if_exists=True).remote()


_found: dict[str, tuple[Any, float]] = {}  # run_id -> (board or None, when looked up), in this process


def find_board(run_id: str) -> Any:
    """The run's board if the driver has one; None otherwise (asked again after LOOKUP_AGAIN_S)."""
    import ray

    board, looked_at = _found.get(run_id, (None, float("-inf")))
    if board is None and time.monotonic() - looked_at >= LOOKUP_AGAIN_S:
        try:
            board = ray.get_actor(board_name(run_id), namespace=NAMESPACE)
        except ValueError:
            board = None
        _found[run_id] = (board, time.monotonic())
    return board
