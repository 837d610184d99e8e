"""Secrets stay secret: a stage run as a Ray job, with credentials in the environment of the cluster and of the user
who submits it (unique marker strings), leaves them nowhere a user of the cluster can read: the state API, the
dashboard's job API, the job's logs, the Ray session folder, the run directory and the console.

A control marker put in the submission's own runtime env must be found by the same scan: it shows the scan reads
the places where Ray displays runtime envs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import boto3
import pytest
import yaml
from conftest import RAY, ray_head_node, submit_job

from politune.corpus.generate import generate_corpus

pytestmark = pytest.mark.e2e

CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "OPENAI_API_KEY",
               "POLITUNE_API_KEY")


def markers() -> dict[str, str]:
    tag = os.urandom(6).hex()
    return {name: f"{name.lower().replace('_', '')}{tag}" for name in CREDENTIALS}


def found_in(text: str | bytes, secrets: dict[str, str]) -> list[str]:
    data = text.encode() if isinstance(text, str) else text
    return [name for name, value in secrets.items() if value.encode() in data]


def session_files(temp_dir: Path) -> dict[str, bytes]:
    """Every regular file Ray wrote under its temp dir (logs, session state, the job's working dir)."""
    return {str(p.relative_to(temp_dir)): p.read_bytes() for p in temp_dir.rglob("*")
            if p.is_file() and not p.is_symlink() and p.stat().st_size < 64 * 2**20}


def test_a_job_leaves_no_credential_where_cluster_users_can_read(s3_endpoint: str, s3_bucket: str,
                                                                  tmp_path: Path) -> None:
    secrets = markers()
    control = "control" + os.urandom(6).hex()
    generate_corpus(200, tmp_path / "corpus", seed=5)
    prefix = f"scan-{os.urandom(3).hex()}"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "base": "local", "run_id": "scan", "storage_root": f"s3://{s3_bucket}/{prefix}", "corpus": None,
        "work_dir": str(tmp_path / "work"),
        "sources": [{"name": n, "paths": [str(tmp_path / "corpus" / n)], "shape": n}
                    for n in ("truthsocial", "politosphere")]}))
    # the cluster's nodes and the submitting user both hold the credentials, as pods with secretKeyRefs and a
    # user's shell do; moto's S3 takes any key, so the job's S3 writes work with them
    env = {**secrets, "AWS_ENDPOINT_URL": s3_endpoint, "AWS_DEFAULT_REGION": "us-east-1"}
    with ray_head_node(num_cpus=2, extra_env=env) as head:
        done = submit_job(head.dashboard, head.env, ["python", "jobs/ingest.py", "--config", str(config)],
                          submit_args=["--runtime-env-json", json.dumps({"env_vars": {"SCAN_CONTROL": control}})])
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        jobs_api = urllib.request.urlopen(f"{head.dashboard}/api/jobs/", timeout=30).read()
        submission = json.loads(jobs_api)[0]["submission_id"]
        job_logs = json.loads(urllib.request.urlopen(f"{head.dashboard}/api/jobs/{submission}/logs",
                                                     timeout=30).read())["logs"]
        from ray.util.state import list_actors, list_jobs

        state = repr(list_jobs(address=head.dashboard, detail=True)) + repr(
            list_actors(address=head.dashboard, detail=True))
        places = {"the console of `ray job submit`": done.stdout + done.stderr,
                  "the dashboard's GET /api/jobs/": jobs_api, "the job's logs": job_logs,
                  "the state API (jobs, actors)": state,
                  **{f"the session folder: {name}": data for name, data in session_files(head.temp_dir).items()}}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint)
    objects = s3.list_objects_v2(Bucket=s3_bucket, Prefix=prefix)["Contents"]
    assert any("documents/" in o["Key"] for o in objects)  # the job wrote its run directory on S3
    manifest = json.loads(s3.get_object(Bucket=s3_bucket, Key=f"{prefix}/scan/manifest.json")["Body"].read())
    assert sum(c["read"] for c in manifest["artifacts"]["documents"]["counts"]["per_source"].values()) == 200
    assert "ingest: rows read" in done.stdout  # the job's console summary reaches `ray job submit`
    for o in objects:
        places[f"the run directory: {o['Key']}"] = s3.get_object(Bucket=s3_bucket, Key=o["Key"])["Body"].read()
    places["the local work dir"] = b"".join(p.read_bytes() for p in (tmp_path / "work").rglob("*") if p.is_file())

    leaks = {place: names for place, text in places.items() if (names := found_in(text, secrets))}
    assert not leaks, f"credentials readable by cluster users: {leaks}"
    # the control: what a runtime env holds is displayed there, and the scan sees it
    assert control in jobs_api.decode() and control in state


def test_a_head_with_token_auth_takes_jobs_only_with_the_token(tmp_path: Path) -> None:
    """What the KubeRay manifests turn on (RAY_AUTH_MODE=token), on a real head on loopback: the job API refuses a
    caller without the token, and `ray job submit` works with the two variables docs/security.md sets."""
    token = os.urandom(16).hex()
    with ray_head_node(num_cpus=1, extra_env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}) as head:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{head.dashboard}/api/jobs/", timeout=30)
        assert refused.value.code in (401, 403)
        stranger = {k: v for k, v in head.env.items() if k != "RAY_AUTH_TOKEN"}
        anonymous = subprocess.run([RAY, "job", "submit", "--address", head.dashboard, "--", "python", "-c", "1"],
                                   env={**stranger, "RAY_AUTH_MODE": "disabled"}, capture_output=True, text=True,
                                   timeout=120)
        assert anonymous.returncode != 0
        with_token = submit_job(head.dashboard, head.env, ["python", "-c", "print('ran with the token')"])
        assert with_token.returncode == 0 and "ran with the token" in with_token.stdout, with_token.stderr[-2000:]
        assert token not in with_token.stdout + with_token.stderr


def test_an_s3_error_and_config_show_name_no_credential(s3_endpoint: str, tmp_path: Path) -> None:
    secrets = markers()
    env = {**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, **secrets, "AWS_ENDPOINT_URL": s3_endpoint}
    politune = [sys.executable, "-m", "politune.cli"]
    failed = subprocess.run([*politune, "ingest", "--set", "corpus.n=20", "--set", "ray.num_cpus=1", "--set",
                             "storage_root=s3://no-such-bucket/runs"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert failed.returncode == 1 and "no-such-bucket" in failed.stderr  # the error names what failed...
    assert not found_in(failed.stdout + failed.stderr, secrets)           # ...and no credential
    shown = subprocess.run([*politune, "config", "show", "llama3-8b"], env=env, capture_output=True, text=True,
                           timeout=60)
    assert shown.returncode == 0 and "api_key_env: POLITUNE_API_KEY" in shown.stdout
    assert not found_in(shown.stdout + shown.stderr, secrets)
