"""Peak memory of a process tree, sampled from another thread (shared by the benchmarks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import psutil

MB = 2**20


class MemorySampler(threading.Thread):
    def __init__(self, root_pid: int, interval: float = 0.25, uss: bool = True) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.uss = uss  # a process's unique memory reads all of /proc/PID/smaps: costly; RSS alone is cheap
        self.baseline_used = psutil.virtual_memory().used
        self.peak_used = 0
        self.peak_uss = 0
        self.peak_driver_rss = 0  # the measured process itself
        self.peak_worker_rss = 0  # the largest of any one Ray worker (a process Ray names ray::<task or actor>)
        self.peak_worker_name = ""
        self.peak_rss_by_name: dict[str, int] = {}  # by what the worker was running when sampled
        self.cpu_s_by_name: dict[str, float] = {}  # CPU seconds between samples, by what the process was running
        self._cpu_seen: dict[int, float] = {}
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
                    info = proc.memory_full_info() if self.uss else proc.memory_info()
                    total += info.uss if self.uss else 0
                    times = proc.cpu_times()
                    cpu = times.user + times.system
                    name = "driver" if proc.pid == self.root.pid else proc.name()
                    self.cpu_s_by_name[name] = self.cpu_s_by_name.get(name, 0) + cpu - self._cpu_seen.get(proc.pid, 0)
                    self._cpu_seen[proc.pid] = cpu
                    if proc.pid == self.root.pid:
                        self.peak_driver_rss = max(self.peak_driver_rss, info.rss)
                    elif is_ray_worker(proc):
                        name = proc.name()
                        self.peak_rss_by_name[name] = max(self.peak_rss_by_name.get(name, 0), info.rss)
                        if info.rss > self.peak_worker_rss:
                            self.peak_worker_rss, self.peak_worker_name = info.rss, name
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_uss = max(self.peak_uss, total)
            self.stop.wait(self.interval)


def is_ray_worker(proc: psutil.Process) -> bool:
    """A Ray worker process: Ray renames it `ray::<what it runs>` (idle ones `ray::IDLE`)."""
    return proc.name().startswith("ray::") or "default_worker.py" in " ".join(proc.cmdline()[:3])


def run_measured(code: str, args: list[str], log_path: Path, uss: bool = True, interval: float = 0.25
                 ) -> dict[str, Any]:
    """Run `python -c code args` in a fresh process (its own local Ray) while sampling its memory.
    The child prints one JSON line last; that dict comes back with peak_used_mb and peak_uss_mb."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with open(log_path, "w") as log:  # Ray's progress output, kept out of the report
        proc = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=log,
                                text=True, env=env)
        sampler = MemorySampler(proc.pid, interval, uss)
        sampler.start()
        out, _ = proc.communicate()
        sampler.stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"the measured run failed with exit code {proc.returncode}:\n{log_path.read_text()[-3000:]}")
    # the child's last JSON line: libraries may print after it (Ray at shutdown, progress bars)
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if not lines:
        raise SystemExit(f"the measured run printed no result line; its stdout ended with:\n{out[-2000:]}")
    result = json.loads(lines[-1])
    result.update(peak_used_mb=sampler.peak_used / MB, peak_uss_mb=sampler.peak_uss / MB,
                  peak_driver_rss_mb=sampler.peak_driver_rss / MB, peak_worker_rss_mb=sampler.peak_worker_rss / MB,
                  peak_worker=sampler.peak_worker_name,
                  peak_rss_mb_by_name={k: round(v / MB) for k, v in sampler.peak_rss_by_name.items()},
                  cpu_s_by_name={k: round(v, 1) for k, v in sorted(sampler.cpu_s_by_name.items(),
                                                                    key=lambda kv: -kv[1])})
    return result
