"""Lost workers cost a retry, never the run or a row: a Ray Data actor killed mid-batch (annotate, synthesize), a
Ray Train worker killed mid-epoch, a Serve model replica killed under load.

Everything is real: the session's local Ray (`ray_local`), the tiny model, and processes killed with SIGKILL by the
pid Ray's state API gives (`ray.util.state`), as the kernel's OOM killer or a lost node would. Only Ray worker
processes (`ray::…`) are ever killed: never this test's process, the raylet or the GCS.

The session's Ray runs without its dashboard (the local preset's `ray.dashboard: false`), and the state API is
served by the dashboard head's StateHead module; so this module starts one more dashboard head, with that module
only, on a free loopback port, and stops it at the end (`state_api`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import SERVE_TOKEN, SERVE_TOKEN_ENV, free_port
from test_train import assert_checkpoints_registered, recorded_checkpoints, with_train

from politune.annotate import annotate_documents
from politune.config import TinyModelConfig, build_config
from politune.corpus.generate import generate_corpus
from politune.ingest import ingest_corpus
from politune.models.random_adapters import register_random_adapters
from politune.select import select_posts
from politune.synthesize import synthesize_preferences
from politune.train import train_adapter
from politune.train.stage import train_run_name
from politune.world.tiny import build_tiny_model

pytestmark = pytest.mark.integration

ANNOTATOR = "MapWorker(MapBatches(_HFAnnotatorTable))"  # Ray Data names a pool's actor class after its operator
PAIR_WRITER = "MapWorker(MapBatches(HFPairWriter))"
TRAIN_WORKER = "RayTrainWorker"
SERVE_APP, MODEL_DEPLOYMENT = "politune", "model"  # politune.serve.app.APP_NAME, hf_model.HFModelServer's name


# --- the state API and killing by pid ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def state_api(ray_local) -> str:
    """The address of a state API server for the session's Ray: a dashboard head with only StateHead loaded, on a
    free port of 127.0.0.1, its logs beside the session's (state-api.*). The address Ray records for its dashboard
    is put back at the end."""
    import ray.dashboard.dashboard as dashboard
    import ray.experimental.internal_kv as kv
    from ray._private import ray_constants

    node = ray_local._private.worker._global_node
    logs = node.get_logs_dir_path()
    recorded = kv._internal_kv_get(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
    port = free_port()
    server = subprocess.Popen([
        sys.executable, dashboard.__file__, "--host=127.0.0.1", f"--port={port}", "--port-retries=0",
        f"--temp-dir={node.get_temp_dir_path()}", f"--session-dir={node.get_session_dir_path()}", f"--log-dir={logs}",
        f"--gcs-address={node.gcs_address}", f"--cluster-id-hex={node.cluster_id.hex()}",
        "--node-ip-address=127.0.0.1", "--modules-to-load=StateHead",
        "--logging-filename=state-api.log", f"--stdout-filepath={logs}/state-api.out",
        f"--stderr-filepath={logs}/state-api.err"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{port}"
    try:
        from ray.util.state import list_nodes

        deadline = time.time() + 60
        while True:
            try:
                assert list_nodes(address=address)
                break
            except Exception:  # not up yet
                assert server.poll() is None, f"the state API server exited; see {logs}/state-api.err"
                assert time.time() < deadline, "the state API server did not answer within 60 s"
                time.sleep(0.5)
        yield address
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        if recorded is not None:
            kv._internal_kv_put(ray_constants.DASHBOARD_ADDRESS, recorded, overwrite=True,
                                namespace=ray_constants.KV_NAMESPACE_DASHBOARD)
        else:  # the session had none: leave no address of a server that is gone
            kv._internal_kv_del(ray_constants.DASHBOARD_ADDRESS, namespace=ray_constants.KV_NAMESPACE_DASHBOARD)


def actors(address: str, class_name: str, state: str | None = None) -> list:
    """The actors (detailed) of class `class_name`, in `state` when given."""
    from ray.util.state import list_actors

    found = list_actors(address=address, filters=[("state", "=", state)] if state else None, detail=True,
                        limit=10_000, raise_on_missing_output=False)
    return [a for a in found if a.class_name == class_name]


def actor(address: str, actor_id: str):
    from ray.util.state import get_actor

    return get_actor(actor_id, address=address)


def actor_tasks(address: str, actor_id: str, state: str | None = None) -> list:
    from ray.util.state import list_tasks

    filters = [("actor_id", "=", actor_id), *([("state", "=", state)] if state else [])]
    return list_tasks(address=address, filters=filters, limit=10_000, raise_on_missing_output=False)


def sigkill(pid: int) -> None:
    """SIGKILL a Ray worker process; refuses anything else (this process, the raylet, the GCS, a dashboard)."""
    assert pid and pid != os.getpid(), pid
    title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
    assert title.startswith(b"ray::") and not title.startswith((b"ray::Dashboard", b"ray::Runtime")), title
    os.kill(pid, signal.SIGKILL)


def gone(pid: int, within: float = 30) -> bool:
    """Whether process `pid` has ended (and been reaped by the raylet) within `within` seconds."""
    deadline = time.time() + within
    while Path(f"/proc/{pid}").exists():
        if time.time() > deadline:
            return False
        time.sleep(0.1)
    return True


@dataclass
class Killer:
    """A thread that waits until `victim()` names one (actor id, pid), SIGKILLs that pid, and records what it did,
    while the test's own thread runs the stage (as a driver would: Ray Train wants the main thread)."""

    victim: Callable[[], tuple[str, int] | None]
    timeout: float = 180
    actor_id: str | None = None
    pid: int | None = None
    killed_at: float | None = None
    error: BaseException | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._run, daemon=True, name="killer")
        self.thread.start()

    def _run(self) -> None:
        try:
            deadline = time.time() + self.timeout
            while not self.stop.is_set():
                found = self.victim()
                if found:
                    self.actor_id, self.pid = found
                    sigkill(self.pid)
                    self.killed_at = time.time()
                    return
                assert time.time() < deadline, f"nothing to kill within {self.timeout} s"
                time.sleep(0.1)
        except BaseException as err:  # reported by done()
            self.error = err

    def done(self) -> Killer:
        """Stop looking (the stage ended) and check that a worker was killed."""
        self.stop.set()
        self.thread.join(timeout=30)
        if self.error:
            raise self.error
        assert self.pid, "the stage finished before a worker could be killed: give it more work"
        return self


def busy_pool_actor(address: str, class_name: str, known: set[str]) -> Callable[[], tuple[str, int] | None]:
    """A Ray Data pool actor of `class_name` (not one of `known`, earlier runs') that is ALIVE and running a batch
    (Ray Data's `<actor repr>.submit` task, RUNNING)."""

    def find() -> tuple[str, int] | None:
        for a in actors(address, class_name, state="ALIVE"):
            if a.actor_id in known or not a.pid:
                continue
            running = [t for t in actor_tasks(address, a.actor_id, "RUNNING") if t.name.endswith(".submit")]
            if running:
                return a.actor_id, a.pid
        return None

    return find


def assert_restarted_and_retried(address: str, killer: Killer) -> None:
    """The killed actor was restarted in place (same actor, a new process) and the batches it held were run
    again on the new process."""
    assert gone(killer.pid), f"the killed worker {killer.pid} still runs"
    killed = actor(address, killer.actor_id)
    assert killed.num_restarts >= 1, killed
    deadline = time.time() + 30  # task events reach the GCS a second or so late
    while True:
        tasks = actor_tasks(address, killer.actor_id)
        retried = [t for t in tasks if t.attempt_number > 0 and t.state == "FINISHED"]
        if retried or time.time() > deadline:
            break
        time.sleep(1)
    assert retried, [(t.name, t.attempt_number, t.state, t.worker_pid) for t in tasks]
    assert all(t.worker_pid != killer.pid for t in retried)
    # each retried batch's earlier attempt failed with the actor (the batch it was running, those queued on it)
    assert all(any(f.task_id == r.task_id and f.state == "FAILED" and f.attempt_number < r.attempt_number
                   for f in tasks) for r in retried), [(t.name, t.attempt_number, t.state, t.error_type) for t in tasks]


# --- annotate and synthesize: a pool actor killed mid-batch --------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_run(ray_local, tmp_path_factory) -> dict:
    """A raw run config, the tiny model on 800 generated posts, ingested. Each stage gives its pool actor some seconds
    of work, so that it is killed mid-run: annotate scores the posts in blocks of 16; select keeps 80 posts a side,
    and the pair writer answers in up to 48 tokens (Ray Data hands it the selected posts as one block)."""
    root = tmp_path_factory.mktemp("faults-workers")
    model = build_tiny_model(TinyModelConfig(), root / "tiny")
    generate_corpus(800, root / "corpus", seed=11)
    raw = {
        "run_id": "w", "storage_root": str(root / "runs"), "tiny_model": {"out": str(model)},
        "sources": [{"name": n, "paths": [str(root / "corpus" / n)], "shape": n}
                    for n in ("truthsocial", "politosphere")],
        "annotate": {"mode": "logprob", "batch_size": 4, "rows_per_file": 16},
        "select": {"method": "quantile", "max_per_side": 80},
        "synthesize": {"max_new_tokens": 48, "batch_size": 4, "consistency_margin": 0},
    }
    ingest_corpus(build_config(raw))
    return raw


def test_an_annotator_actor_killed_mid_batch_costs_a_retry_not_a_row(pipeline_run: dict, state_api: str) -> None:
    cfg = build_config(pipeline_run)
    earlier = {a.actor_id for a in actors(state_api, ANNOTATOR)}
    killer = Killer(busy_pool_actor(state_api, ANNOTATOR, earlier))
    result = annotate_documents(cfg)
    killer.done()

    rows = pq.read_table(f"{cfg.run_uri}/annotations").to_pylist()
    documents = pq.read_table(f"{cfg.run_uri}/documents", columns=["doc_id"])["doc_id"].to_pylist()
    assert sorted(r["doc_id"] for r in rows) == sorted(documents)  # each document once, none lost or doubled
    assert result.documents == len(documents) == result.annotated_now and result.resumed_from == 0
    assert result.statuses == {"ok": len(documents), "parse_error": 0, "engine_error": 0}
    assert_restarted_and_retried(state_api, killer)


def test_a_pair_writer_actor_killed_mid_batch_costs_a_retry_not_a_pair(pipeline_run: dict, state_api: str) -> None:
    cfg = build_config(pipeline_run)
    annotate_documents(cfg)  # done already when the test above ran
    select_posts(cfg)
    selected = pq.read_table(f"{cfg.run_uri}/selected").to_pylist()
    earlier = {a.actor_id for a in actors(state_api, PAIR_WRITER)}
    killer = Killer(busy_pool_actor(state_api, PAIR_WRITER, earlier))
    result = synthesize_preferences(cfg)
    killer.done()

    out = Path(result.preferences_uri)
    kept = [r for side in ("left", "right") for split in ("train", "eval")
            for r in pq.read_table(out / side / f"{split}.parquet").to_pylist()]
    dropped = pq.read_table(out / "dropped.parquet").to_pylist()
    # one row a selected post, kept or dropped; none dropped for the lost worker
    assert sorted(r["doc_id"] for r in kept + dropped) == sorted(p["doc_id"] for p in selected)
    assert not [d for d in dropped if d["reason"] == "engine_error"]
    for side, c in result.sides.items():
        assert c.read == sum(1 for p in selected if p["side"] == side) == c.train + c.eval + sum(c.dropped.values())
    assert_restarted_and_retried(state_api, killer)


# --- train: a Ray Train worker killed mid-epoch --------------------------------------------------------------------


def test_a_training_worker_killed_mid_epoch_resumes_from_a_checkpoint_in_the_same_run(pairs_run: dict,
                                                                                     state_api: str) -> None:
    """Two workers; one is killed once the first checkpoint is recorded. Ray Train (FailureConfig(max_failures))
    replaces the whole worker group, which resumes from that checkpoint: the same train_adapter call finishes."""
    steps, every = 36, 3
    cfg = build_config(with_train(pairs_run, max_steps=steps, save_steps=every, learning_rate=0.001, num_workers=2))
    assert cfg.train.max_failures >= 1  # the default, 2
    run_folder = Path(cfg.run_uri) / "adapters" / "_train" / train_run_name(cfg, "left")
    earlier = {a.actor_id for a in actors(state_api, TRAIN_WORKER)}
    first_group: set[str] = set()

    def training_worker() -> tuple[str, int] | None:
        if not recorded_checkpoints(run_folder):  # mid-epoch, with a checkpoint to resume from
            return None
        alive = [a for a in actors(state_api, TRAIN_WORKER, state="ALIVE") if a.actor_id not in earlier and a.pid]
        if len(alive) < 2:
            return None
        first_group.update(a.actor_id for a in alive)
        return alive[0].actor_id, alive[0].pid

    killer = Killer(training_worker)
    result = train_adapter(cfg, "left")
    killer.done()

    m = result.adapter.metrics
    assert m["global_step"] == steps  # the same call finished the training
    assert 0 < m["resumed_from_step"] < steps and m["resumed_from_step"] % every == 0, m  # from a checkpoint's step
    assert gone(killer.pid)
    # a new group of two workers, in new processes, took over (and has finished: every worker is gone now)
    workers = {a.actor_id: a for a in actors(state_api, TRAIN_WORKER) if a.actor_id not in earlier}
    replacements = [a for i, a in workers.items() if i not in first_group]
    assert len(first_group) == 2 and len(replacements) == 2, workers
    assert {a.pid for a in replacements}.isdisjoint(workers[i].pid for i in first_group)
    assert all(a.state == "DEAD" for a in workers.values())
    # every checkpoint is registered once: those saved before the kill and after it
    checkpoints = assert_checkpoints_registered(cfg.run_uri, "left", save_steps=every)
    assert [c.step for c in checkpoints] == list(range(every, steps + 1, every))


# --- serve: a model replica killed under load ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_replicas(ray_local, s3_bucket: str, tmp_path_factory) -> dict:
    """The hf app with two model replicas (min = max = 2), the tiny model and two random adapters on moto S3."""
    from ray import serve

    from politune.serve.app import start_serving

    root = tmp_path_factory.mktemp("faults-serve")
    tiny = build_tiny_model(TinyModelConfig(), root / "tiny")
    raw = {"run_id": "replicas", "storage_root": f"s3://{s3_bucket}/faults-runs", "tiny_model": {"out": str(tiny)},
           "serve": {"port": free_port(), "api_key_env": SERVE_TOKEN_ENV, "min_replicas": 2, "max_replicas": 2,
                     "cpus_per_replica": 1, "max_ongoing_requests": 4, "max_queued_requests": 64}}
    cfg = build_config(raw)
    register_random_adapters(cfg.run_uri, tiny, ["left", "right"])
    serving = start_serving(cfg)
    try:
        yield {"url": serving.base_url, "ids": serving.model_ids}
    finally:
        serve.shutdown()


def complete(url: str, model: str, i: int, timeout: float = 60) -> tuple[int | str, str | None]:
    """One completion: its HTTP status and error code, or the name of the exception when there was no answer (a
    timeout, a reset connection)."""
    body = json.dumps({"model": model, "prompt": f"post {i} about taxes", "max_tokens": 8}).encode()
    request = urllib.request.Request(f"{url}/completions", data=body, headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {SERVE_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return response.status, None
    except urllib.error.HTTPError as err:
        text = err.read()
        code = json.loads(text)["error"]["code"] if text.startswith(b"{") else text.decode()[:200]
        if err.code == 503 and err.headers.get("Retry-After") != "1":
            code = f"{code}, without Retry-After"
        return err.code, code
    except Exception as err:  # noqa: BLE001 - no answer at all: recorded, and fails the test
        return type(err).__name__, str(err)[:200]


def replica_states() -> dict[str, int]:
    from ray import serve

    return dict(serve.status().applications[SERVE_APP].deployments[MODEL_DEPLOYMENT].replica_states)


def test_a_replica_killed_under_load_costs_503s_not_500s_or_hangs(two_replicas: dict, state_api: str) -> None:
    """Four clients ask without pause; one of the two model replicas is killed. The requests it held get the
    ingress's 503 (replica_failed), the others go to the replica left, and Serve starts a new one."""
    url, ids = two_replicas["url"], two_replicas["ids"]
    replica_class = f"ServeReplica:{SERVE_APP}:{MODEL_DEPLOYMENT}"
    replicas = actors(state_api, replica_class, state="ALIVE")
    assert len(replicas) == 2 and replica_states() == {"RUNNING": 2}, replicas
    answers: list[tuple[float, int | str, str | None]] = []  # (when it was sent, status, error code)
    stop = threading.Event()

    def client(n: int) -> None:
        i = 0
        while not stop.is_set():
            sent = time.time()
            answers.append((sent, *complete(url, ids[(n + i) % len(ids)], i)))
            i += 1

    clients = [threading.Thread(target=client, args=(n,), daemon=True) for n in range(4)]
    for c in clients:
        c.start()
    try:
        deadline = time.time() + 60
        while sum(1 for _, s, _ in answers if s == 200) < 20:  # under load
            assert time.time() < deadline, f"no steady stream of answers: {answers[-10:]}"
            time.sleep(0.1)
        victim = replicas[0]
        sigkill(victim.pid)
        killed_at = time.time()
        deadline = killed_at + 120
        while True:  # Serve replaces the replica; the clients keep asking meanwhile
            alive = actors(state_api, replica_class, state="ALIVE")
            if replica_states() == {"RUNNING": 2} and len(alive) == 2 and victim.actor_id not in {
                    a.actor_id for a in alive}:
                break
            assert time.time() < deadline, (replica_states(), alive)
            time.sleep(0.5)
        back_at = time.time()
        time.sleep(3)  # and the new replica answers too
    finally:
        stop.set()
        for c in clients:
            c.join(timeout=90)
    assert not any(c.is_alive() for c in clients), "a client hung"

    # never a 500, a timeout or a dropped connection; a 503 (with Retry-After) only as the ingress answers a failed
    # replica (or overload)
    assert all(s == 200 or (s, code) in ((503, "replica_failed"), (503, "overloaded")) for _, s, code in answers), {
        (s, code) for _, s, code in answers}
    assert sum(1 for sent, s, _ in answers if killed_at < sent < back_at and s == 200) >= 10  # the replica left
    after = [s for sent, s, _ in answers if sent > back_at]
    assert len(after) >= 4 and set(after) == {200}, after
    assert gone(victim.pid) and actor(state_api, victim.actor_id).state == "DEAD"
    new = [a for a in actors(state_api, replica_class, state="ALIVE") if a.actor_id != replicas[1].actor_id]
    assert len(new) == 1 and new[0].pid not in (victim.pid, replicas[1].pid), new
    # and it answered: Serve's log of the new replica (replica_<app>_<deployment>_<id>.log) has generate_many calls
    # (Serve sends no task events for requests, so the state API cannot tell)
    from politune.ray_runtime import logs_dir

    log = logs_dir() / "serve" / f"replica_{SERVE_APP}_{MODEL_DEPLOYMENT}_{new[0].name.rsplit('#', 1)[-1]}.log"
    assert "CALL generate_many OK" in log.read_text(), log
