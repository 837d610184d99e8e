"""jobs/ingest.py through `ray job submit`, against a real Ray head started with `ray start --head`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from politune.corpus.generate import generate_corpus

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def ray_head(tmp_path: Path):
    """A Ray head on 127.0.0.1 in the foreground (--block): terminating it stops only this cluster."""
    temp_dir = Path("/tmp") / f"pt-head-{os.getpid()}"  # short: Ray's socket paths have a length limit
    dashboard = free_port()
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           # a job's `python` is looked up on the head's PATH: make it this environment's, as in a cluster image
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("RAY_ADDRESS", None)
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={free_port()}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", f"--ray-client-server-port={free_port()}",
         # every port explicit, so another Ray on this machine (a user's, a stale one) cannot collide
         f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
         f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
         f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
         "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dashboard}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{address}/api/version", timeout=2)
            break
        except OSError:
            if time.time() > deadline or head.poll() is not None:
                head.kill()
                pytest.fail("the Ray head did not come up within 120 s")
            time.sleep(1)
    yield address, env
    head.terminate()
    head.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


def test_ingest_job_under_ray_job_submit(ray_head, tmp_path: Path) -> None:
    address, env = ray_head
    generate_corpus(300, tmp_path / "corpus", seed=3)
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "base": "local", "run_id": "job", "storage_root": str(tmp_path / "runs"), "corpus": None,
        "sources": [
            {"name": "truthsocial", "paths": [str(tmp_path / "corpus" / "truthsocial")], "shape": "truthsocial"},
            {"name": "politosphere", "paths": [str(tmp_path / "corpus" / "politosphere")], "shape": "politosphere"},
        ]}))
    deadline = time.time() + 90
    while True:  # the head's job agent starts a little after its dashboard answers
        done = subprocess.run(
            [RAY, "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
             "python", "jobs/ingest.py", "--config", str(config)],
            env=env, capture_output=True, text=True, timeout=600)
        if "No available agent to submit job" not in done.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    manifest = json.loads((tmp_path / "runs" / "job" / "manifest.json").read_text())
    counts = manifest["artifacts"]["documents"]["counts"]["per_source"]
    assert sum(c["read"] for c in counts.values()) == 300
    assert "ingest: rows read" in done.stdout
