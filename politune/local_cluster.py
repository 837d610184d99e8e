"""Real Ray clusters on this machine's loopback addresses, for tests and benchmarks: `ray start --head` and
`ray start --address` processes, every port explicit, all traffic on lo.

A single-node head runs on 127.0.0.1 in Ray's one-machine mode (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0). That
mode refuses `ray start --address`, and outside it Ray 2.60 replaces a --node-ip-address of 127.0.0.1 with
the machine's network address (services.resolve_ip_for_localhost). So a multi-node head takes another
loopback address, 127.0.0.2, and its nodes 127.0.0.3 and up.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from politune.ray_runtime import LOCAL_RAY_ENV

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_node_args(num_cpus: int, node_ip: str = "127.0.0.1", metrics_port: int | None = None) -> list[str]:
    """`ray start` flags every node takes: a loopback address, and every port of the node explicit, so another
    Ray on this machine (a user's, a stale one, the node beside it) cannot collide."""
    return ["--block", f"--node-ip-address={node_ip}", f"--num-cpus={num_cpus}", "--disable-usage-stats",
            f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={metrics_port or free_port()}", f"--runtime-env-agent-port={free_port()}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}"]


@dataclass
class RayHead:
    gcs: str        # 127.0.0.x:port, for `ray start --address` and RAY_ADDRESS
    dashboard: str  # http://127.0.0.1:port, for `ray job submit`
    env: dict[str, str]
    temp_dir: Path
    metrics: list[str]  # each node's Prometheus endpoint, http://<node ip>:<port>/metrics


@contextlib.contextmanager
def ray_head_node(num_cpus: int, multi_node: bool = False,
                  extra_env: dict[str, str] | None = None) -> Iterator[RayHead]:
    """A Ray head on loopback in the foreground (--block): terminating it stops only this cluster."""
    temp_dir = Path("/tmp") / f"pt-head-{os.getpid()}-{free_port()}"  # short: Ray's socket paths have a length limit
    node_ip = "127.0.0.2" if multi_node else "127.0.0.1"
    gcs, dashboard = f"{node_ip}:{free_port()}", free_port()
    env = {**LOCAL_RAY_ENV, **os.environ,
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "1" if multi_node else "0", "RAY_AUTH_MODE": "disabled",
           # a job's `python` is looked up on the head's PATH: make it this environment's, as in a cluster image
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}", **(extra_env or {})}
    env.pop("RAY_ADDRESS", None)
    metrics_port = free_port()
    head = subprocess.Popen(
        [RAY, "start", "--head", f"--port={gcs.rsplit(':', 1)[1]}", "--dashboard-host=127.0.0.1",
         f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}", f"--temp-dir={temp_dir}",
         *ray_node_args(num_cpus, node_ip, metrics_port)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except urllib.error.HTTPError:  # it answers, and asks for Ray's token (RAY_AUTH_MODE=token)
            break
        except OSError:
            if time.time() > deadline or head.poll() is not None:
                head.kill()
                raise RuntimeError("the Ray head did not come up within 120 s") from None
            time.sleep(1)
    try:
        yield RayHead(gcs, address, env, temp_dir, [f"http://{node_ip}:{metrics_port}/metrics"])
    finally:
        head.terminate()
        head.wait(timeout=60)
        shutil.rmtree(temp_dir, ignore_errors=True)


@contextlib.contextmanager
def loopback_cluster(cpus_per_node: list[int], extra_env: dict[str, str] | None = None) -> Iterator[RayHead]:
    """A head on 127.0.0.2 with cpus_per_node[0] CPUs and a node on 127.0.0.3, .4, … for each further entry,
    every node alive before this yields."""
    with ray_head_node(num_cpus=cpus_per_node[0], multi_node=True, extra_env=extra_env) as head:
        workers = []
        try:
            for i, cpus in enumerate(cpus_per_node[1:], start=3):
                metrics_port = free_port()
                workers.append(subprocess.Popen([RAY, "start", f"--address={head.gcs}",
                                                 *ray_node_args(cpus, f"127.0.0.{i}", metrics_port)],
                                                env=head.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                head.metrics.append(f"http://127.0.0.{i}:{metrics_port}/metrics")
            deadline = time.time() + 120
            while alive_nodes(head) < len(cpus_per_node):
                if any(w.poll() is not None for w in workers):
                    raise RuntimeError("a node of the loopback cluster stopped")
                if time.time() > deadline:
                    raise RuntimeError(f"{len(cpus_per_node)} nodes did not come up within 120 s")
                time.sleep(1)
            yield head
        finally:
            for worker in workers:
                worker.terminate()
            for worker in workers:
                worker.wait(timeout=60)


@contextlib.contextmanager
def two_node_cluster(num_cpus: int, extra_env: dict[str, str] | None = None) -> Iterator[RayHead]:
    """A head on 127.0.0.2 and a second node on 127.0.0.3, `num_cpus` each, both alive."""
    with loopback_cluster([num_cpus, num_cpus], extra_env) as head:
        yield head


def alive_nodes(head: RayHead) -> int:
    done = subprocess.run([RAY, "list", "nodes", "--address", head.gcs, "--format", "json"], env=head.env,
                          capture_output=True, text=True, timeout=60)
    try:  # while the head starts, `ray list nodes` may print "No resource in the cluster" instead of JSON
        nodes = json.loads(done.stdout or "[]") if not done.returncode else []
    except json.JSONDecodeError:
        return 0
    return sum(1 for n in nodes if n.get("state") == "ALIVE")
