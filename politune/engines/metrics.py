"""Every stage's progress on Ray's metrics endpoint, tagged by run and stage.

Ray exports these from whichever process records them (a read task, an actor, a Train worker, a Serve replica,
the driver) through its node's metrics agent, in Prometheus format: the dashboard's Metrics view (with Prometheus
and Grafana set up) or any scraper of the nodes' metrics ports shows them while the job runs. Names carry Ray's
`ray_` prefix there, e.g. `ray_politune_stage_items_total{run="local",stage="train",kind="steps"}`.

- `politune_stage_items` (counter): what a stage has finished, by kind: rows read (ingest), documents scored
  (annotate), pair drafts written (synthesize), optimizer steps (train), requests answered (serve), answers
  collected (evaluate).
- `politune_stage_value` (gauge): a stage's latest figure by name, e.g. train's loss.

Annotate and serve also keep their own, finer metrics (politune_annotate_*, politune_serve_*). The same counts
and figures also go to the run's progress board (engines/progress.py) when the driver has one: its console shows
them live.
"""

from __future__ import annotations

import functools
from typing import Any

from politune.engines.progress import find_board

TAGS = ("run", "stage")


@functools.lru_cache(maxsize=1)
def _instruments() -> tuple[Any, Any]:
    from ray.util.metrics import Counter, Gauge

    items = Counter("politune_stage_items", "Items a stage has finished, by kind.", tag_keys=(*TAGS, "kind"))
    value = Gauge("politune_stage_value", "A stage's latest figure, by name.", tag_keys=(*TAGS, "name"))
    return items, value


class StageMetrics:
    """One stage's metrics in one run; cheap to create in every task or actor that records. Outside Ray (a
    benchmark calling a reader directly) it records nothing."""

    def __init__(self, run_id: str, stage: str) -> None:
        self.tags = {"run": run_id, "stage": stage}

    def count(self, kind: str, n: int = 1) -> None:
        if n > 0 and _ray_is_up():  # Ray's counters refuse an increment of 0
            _instruments()[0].inc(n, tags={**self.tags, "kind": kind})
            if board := find_board(self.tags["run"]):
                board.add.remote(self.tags["stage"], kind, n)

    def set(self, name: str, value: float) -> None:
        if _ray_is_up():
            _instruments()[1].set(value, tags={**self.tags, "name": name})
            if board := find_board(self.tags["run"]):
                board.set.remote(self.tags["stage"], name, value)


def _ray_is_up() -> bool:
    import ray

    return ray.is_initialized()
