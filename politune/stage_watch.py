"""What the driver shows while a stage runs: a live line on a terminal, a line every half minute in a job log.

The counts come from the run's progress board (engines/progress.py), which every stage's StageMetrics feeds:
rows read, documents scored, pair drafts, optimizer steps and the latest loss, answers collected. A stage that
never starts Ray (select) shows its name and the time only.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from politune.engines.progress import open_board

POLL_S = 0.5
LOG_EVERY_S = 30.0  # in a job log or a pipe: one line this often, when the counts moved


def describe(items: dict[str, float], values: dict[str, float], seconds: float) -> str:
    """`1,234 documents (41.0/s) · loss:left 0.693`: what the stage has finished, by kind, and its figures."""
    parts = [f"{n:,.0f} {kind.replace('_', ' ')}" + (f" ({n / seconds:,.1f}/s)" if seconds > 0 else "")
             for kind, n in sorted(items.items())]
    parts += [f"{name} {value:.3g}" for name, value in sorted(values.items())]
    return " · ".join(parts)


class StageWatch:
    """`with StageWatch(stage, run_id):` around a stage: polls the board from a thread while the stage runs."""

    def __init__(self, stage: str, run_id: str, console: Console | None = None) -> None:
        self.stage, self.run_id = stage, run_id
        self.console = console or Console(stderr=True)
        self.counts = ""  # what the board last said
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name=f"watch-{stage}", daemon=True)
        self._board = None
        self._started = time.monotonic()
        self._progress: Progress | None = None

    def __enter__(self) -> StageWatch:
        if self.console.is_terminal:
            self._progress = Progress(SpinnerColumn(), TextColumn("[bold]{task.description}"), BarColumn(),
                                      TextColumn("{task.fields[counts]}"), TimeElapsedColumn(),
                                      console=self.console, transient=True)
            self._task = self._progress.add_task(self.stage, total=None, counts="")
            self._progress.start()
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._progress is not None:
            self._progress.stop()

    def _watch(self) -> None:
        last_logged, logged = time.monotonic(), ""
        while not self._stop.wait(POLL_S):
            self._poll()
            if self._progress is not None:
                self._progress.update(self._task, counts=self.counts)
            elif self.counts != logged and time.monotonic() - last_logged >= LOG_EVERY_S:
                self.console.print(f"{self.stage + ':':<11} running {time.monotonic() - self._started:.0f} s"
                                   + (f" · {self.counts}" if self.counts else ""))
                last_logged, logged = time.monotonic(), self.counts

    def _poll(self) -> None:
        import ray

        if not ray.is_initialized():  # the stage starts Ray itself; until then there is nothing to read
            return
        try:
            if self._board is None:
                self._board = open_board(self.run_id)
            items, values = ray.get(self._board.read.remote(self.stage), timeout=5)
        except Exception:  # noqa: BLE001  (Ray shutting down, a slow GCS: the display waits for the next poll)
            return
        self.counts = describe(items, values, time.monotonic() - self._started)
