"""The whole study as a user runs it on a cluster: `ray job submit --working-dir . -- python jobs/pipeline.py`
against a two-node Ray (a head on 127.0.0.2 and a node on 127.0.0.3, see conftest.ray_head_node) on the embedded
default's random-weights preset (local-random), with a smaller corpus. The job is stopped while it trains and
submitted again: the manifest shows that ingest, annotation, selection and synthesis were not redone, training
resumed from a save of the stopped job (each step saved before the stop and after it registered once), work ran on
both nodes, the run's Serve app answered evaluate, and the report is written. (This is also the suite's training
interrupted and resumed across runs; test_faults_workers kills a Train worker within one run.)"""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import RAY, REPO, two_node_cluster
from dashboard_check import dashboard_queries, series, unmatched
from test_train import assert_checkpoint_folders, assert_checkpoints_registered

pytestmark = pytest.mark.e2e

STAGES = ("ingest", "annotate", "select", "synthesize", "train", "evaluate")


def job_config(tmp_path: Path, port: int) -> Path:
    """The local-random preset with every path absolute: the job's working directory is unpacked on each node apart."""
    corpus = tmp_path / "corpus"
    raw = {"base": "local-random", "run_id": "job", "storage_root": str(tmp_path / "runs"),
           "work_dir": str(tmp_path / "w"),
           "tiny_model": {"out": str(tmp_path / "tiny")},
           "corpus": {"n": 300, "out": str(corpus)},
           "sources": [{"name": "truthsocial", "paths": [str(corpus / "truthsocial")], "shape": "truthsocial"},
                       {"name": "politosphere", "paths": [str(corpus / "politosphere")], "shape": "politosphere"}],
           # two Train workers, one a node (STRICT_SPREAD): the run must use both nodes
           # (16 steps: the stop, sent once two saves are on disk, must land before the remaining 12 are done)
           "train": {"num_workers": 2, "placement_strategy": "STRICT_SPREAD", "save_steps": 2, "max_steps": 16},
           # what is checked is the job's wiring: few posts a side, short drafts and answers
           "select": {"max_per_side": 40}, "synthesize": {"max_new_tokens": 16},
           "serve": {"port": port},
           "evaluate": {"probes": False, "phrasings": 1, "checkpoints": "final", "max_tokens": 12}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "runs" / "job" / "manifest.json").read_text())


def actor_nodes(head) -> set[str]:
    """The nodes any actor ran on (the cluster runs only this test's jobs)."""
    done = subprocess.run([RAY, "list", "actors", "--address", head.gcs, "--format", "json", "--limit", "10000",
                           "--detail"], env=head.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return {a["node_id"] for a in json.loads(done.stdout) if a.get("node_id")}


def submitted_job_id(done: subprocess.CompletedProcess) -> str:
    return re.search(r"Job '(raysubmit_\w+)' submitted successfully", done.stdout + done.stderr).group(1)


def submit_no_wait(head, entrypoint: list[str]) -> str:
    started = subprocess.run([RAY, "job", "submit", "--address", head.dashboard, "--working-dir", str(REPO),
                              "--no-wait", "--", *entrypoint], env=head.env, capture_output=True, text=True,
                             timeout=120)
    assert started.returncode == 0, started.stderr
    return submitted_job_id(started)


def job_status(head, job_id: str) -> str:
    with urllib.request.urlopen(f"{head.dashboard}/api/jobs/{job_id}", timeout=30) as response:
        return json.loads(response.read())["status"]


def stage_items(urls: list[str], emitted: dict | None = None) -> dict[tuple[str, str], float]:
    """politune_stage_items by (stage, kind), summed over the nodes' Prometheus endpoints; every politune series
    seen goes into `emitted` too (the dashboard check)."""
    seen: dict[tuple[str, str], float] = {}
    for url in urls:
        try:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
        except OSError:
            continue
        if emitted is not None:
            series(text, emitted)
        for line in text.splitlines():
            if line.startswith("ray_politune_stage_items") and 'run="job"' in line:
                stage, kind = re.search(r'stage="(\w+)"', line)[1], re.search(r'kind="(\w+)"', line)[1]
                seen[stage, kind] = seen.get((stage, kind), 0) + float(line.rsplit(" ", 1)[1])
    return seen


def watch(head, job_id: str, timeout_s: float, until: Callable[[], bool] | None = None, emitted: dict | None = None
          ) -> tuple[str, dict[tuple[str, str], float]]:
    """Wait for a job to end (or `until()` to hold while it runs), reading the stage metrics meanwhile; the job's
    status then and the metrics seen."""
    seen: dict[tuple[str, str], float] = {}
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        for key, value in stage_items(head.metrics, emitted).items():
            seen[key] = max(seen.get(key, 0), value)
        status = job_status(head, job_id)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            return status, seen
        for _ in range(8):  # `until` (a look at the files) four times a second, the job's status every 2 s
            if until is not None and until():
                return status, seen
            time.sleep(0.25)
    return "TIMEOUT", seen


def job_logs(head, job_id: str) -> str:
    return subprocess.run([RAY, "job", "logs", "--address", head.dashboard, job_id], env=head.env,
                          capture_output=True, text=True, timeout=120).stdout


def test_the_study_as_a_submitted_job_on_two_nodes_stopped_while_training_and_resubmitted(tmp_path: Path) -> None:
    from conftest import free_port

    config = job_config(tmp_path, free_port())
    entrypoint = ["python", "jobs/pipeline.py", "--config", str(config)]
    checkpoints = tmp_path / "runs" / "job" / "adapters" / "_train"
    # workers export their metrics every second (Ray's default is 10 s): a short stage is seen while it runs
    with two_node_cluster(num_cpus=2, extra_env={"RAY_metrics_report_interval_ms": "1000"}) as head:
        job_id = submit_no_wait(head, entrypoint)

        def trained_two_saves() -> bool:  # the first save is surely reported to Ray Train once the second is on disk
            return len(list(checkpoints.glob("left-*/adapter_steps/step-*/adapter_model.safetensors"))) >= 2

        emitted: dict = {}  # every politune series the nodes' endpoints showed during both jobs
        status, seen = watch(head, job_id, timeout_s=1200, until=trained_two_saves, emitted=emitted)
        assert status == "RUNNING", job_logs(head, job_id)[-5000:]
        stopped = subprocess.run([RAY, "job", "stop", "--address", head.dashboard, job_id], env=head.env,
                                 capture_output=True, text=True, timeout=180)
        assert stopped.returncode == 0 and "stopped" in stopped.stdout + stopped.stderr, stopped.stderr
        first, log = manifest(tmp_path), job_logs(head, job_id)
        [left_run] = checkpoints.glob("left-*")
        saved_before_stop = {p.name for p in (left_run / "adapter_steps").iterdir()}
        assert set(first["stages"]) == {"ingest", "annotate", "select", "synthesize"}, log[-5000:]
        assert "adapter:left" not in first["artifacts"]  # stopped halfway: not done
        assert seen["ingest", "rows_read"] == 300
        assert "select:     " in log and "logging_progress" not in log  # Ray Data's progress log stays in Ray's files
        for stage, did in (("ingest", "300 rows read"), ("annotate", "documents scored")):
            assert re.search(rf"^{stage}:\s+done in \d+ s · .*{did}", log, re.M), stage  # a line a stage, as it ends

        # submitted again: the stages that were done are skipped, training resumes from its last save
        job_id = submit_no_wait(head, entrypoint)
        status, seen_again = watch(head, job_id, timeout_s=1200, emitted=emitted)
        log = job_logs(head, job_id)
        assert status == "SUCCEEDED", log[-5000:]
        # every stage published its progress on the nodes' metrics endpoints, tagged by run and stage
        for key, value in seen_again.items():
            seen[key] = max(seen.get(key, 0), value)
        for stage, kind in (("ingest", "rows_read"), ("annotate", "documents"), ("synthesize", "pair_drafts"),
                            ("train", "steps"), ("serve", "requests"), ("evaluate", "answers")):
            assert seen.get((stage, kind), 0) > 0, (stage, kind, seen)
        # the Grafana dashboard's stage and training panels query what this run emitted (annotation's: test_annotate,
        # in generate mode)
        assert not unmatched(dashboard_queries("ray_politune_stage_"), emitted)
        for line in ("train:      adapter 'left'", "evaluate:   ", "compass:    "):
            assert line in log, line  # the job log is the console's summary
        assert re.search(r"^train:\s+done in \d+ s · .*steps", log, re.M)
        last = manifest(tmp_path)
        assert set(last["stages"]) == set(STAGES)
        for stage in ("ingest", "annotate", "select", "synthesize"):
            assert last["stages"][stage] == first["stages"][stage], stage  # not redone
            assert re.search(rf"^{stage}: +skipped: done", log, re.M), stage
        registry = json.loads((tmp_path / "runs" / "job" / "adapters" / "registry.json").read_text())["adapters"]
        m = registry["left"]["metrics"]
        assert m["resumed_from_step"] >= 2 and m["resumed_from_step"] % 2 == 0  # a save of the stopped job, not 0
        assert m["global_step"] == 16
        # the steps saved before the stop and after it, each once, every one a registered adapter (the stopped
        # job's workers may outlive its driver a moment and save one more step: kept as well)
        run_uri = str(tmp_path / "runs" / "job")
        saved = assert_checkpoints_registered(run_uri, "left", save_steps=2)
        assert [c.step for c in saved] == list(range(2, 17, 2))
        assert saved_before_stop and saved_before_stop <= {f"step-{c.step}" for c in saved}
        assert_checkpoint_folders(run_uri, saved)
        assert len(actor_nodes(head)) == 2  # Train workers (and Ray Data's actors) on both nodes
        assert len(set(registry["left"]["metrics"]["worker_nodes"])) == 2  # one Train worker a node
        answers = pq.read_table(tmp_path / "runs" / "job" / "eval" / "answers.parquet").to_pylist()
        assert {r["model"] for r in answers} == {"tiny", "tiny:left", "tiny:right"}
        assert all(r["status"] in ("ok", "unmapped") for r in answers)  # the Serve app answered every question
        assert (tmp_path / "runs" / "job" / "report" / "report.html").is_file()
