"""Training across two Ray nodes: `ray start --head` and a second `ray start --address` on this machine (two
raylets, one CPU each, on the loopback addresses 127.0.0.2 and 127.0.0.3: see conftest.ray_head_node),
`jobs/train.py` submitted with `ray job submit`, its two workers placed on different nodes (STRICT_SPREAD).
The job finishes and registers its adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import submit_job, two_node_cluster
from test_train import TRAIN, write_labelled_pairs

from politune.config import TinyModelConfig, build_config
from politune.models.tiny import build_tiny_model
from politune.registry import get_adapter
from politune.synthesize import synthesize_preferences

pytestmark = pytest.mark.integration


@pytest.fixture
def two_nodes():
    with two_node_cluster(num_cpus=1) as head:
        yield head


def test_two_workers_on_two_nodes_train_and_register(two_nodes, tmp_path: Path) -> None:
    model = build_tiny_model(TinyModelConfig(), tmp_path / "tiny")
    raw = {"run_id": "cluster", "storage_root": str(tmp_path / "runs"), "tiny_model": {"out": str(model)},
           "synthesize": {"source": "released", "released": write_labelled_pairs(tmp_path, n=60)},
           "train": {**TRAIN, "num_workers": 2, "placement_strategy": "STRICT_SPREAD", "max_steps": 4}}
    synthesize_preferences(build_config(raw))  # storage is this machine's disk, which both nodes share
    config = tmp_path / "cluster.yaml"
    config.write_text(yaml.safe_dump(raw))

    done = submit_job(two_nodes.dashboard, two_nodes.env,
                      ["python", "jobs/train.py", "--config", str(config), "--side", "left"])
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-3000:]
    entry = get_adapter(str(tmp_path / "runs" / "cluster"), "left")
    assert (Path(entry.path) / "adapter_model.safetensors").is_file()
    assert entry.metrics["global_step"] == 4
    nodes = entry.metrics["worker_nodes"]
    assert len(nodes) == 2 and len(set(nodes)) == 2  # one worker on each node
