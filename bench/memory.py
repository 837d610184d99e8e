"""Peak memory of a process tree, sampled from another thread (shared by the benchmarks)."""

from __future__ import annotations

import threading

import psutil


class MemorySampler(threading.Thread):
    def __init__(self, root_pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.baseline_used = psutil.virtual_memory().used
        self.peak_used = 0
        self.peak_uss = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_used = max(self.peak_used, psutil.virtual_memory().used - self.baseline_used)
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for proc in procs:
                try:
                    total += proc.memory_full_info().uss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_uss = max(self.peak_uss, total)
            self.stop.wait(self.interval)
