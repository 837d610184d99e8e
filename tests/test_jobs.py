"""jobs/ingest.py through `ray job submit`, against a real Ray head started with `ray start --head`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ray_head_node, submit_job

from politune.corpus.generate import generate_corpus

pytestmark = pytest.mark.integration


@pytest.fixture
def ray_head():
    with ray_head_node(num_cpus=2) as head:
        yield head.dashboard, head.env


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
    done = submit_job(address, env, ["python", "jobs/ingest.py", "--config", str(config)])
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "succeeded" in done.stdout + done.stderr
    manifest = json.loads((tmp_path / "runs" / "job" / "manifest.json").read_text())
    counts = manifest["artifacts"]["documents"]["counts"]["per_source"]
    assert sum(c["read"] for c in counts.values()) == 300
    assert "ingest: rows read" in done.stdout
