"""Remote failures read into one message: real failures raised in a task, an actor's constructor, a Ray Data actor
pool and the train loop, on the session's local Ray."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from politune.command import failure_message
from politune.failures import RemoteFailure, StageFailed, WorkerFailure, remote_failure, worker_log
from politune.ray_runtime import logs_dir

pytestmark = pytest.mark.integration


def failing_udf(kind: str) -> type:
    """A Ray Data UDF class that fails in its batches (a scorer meeting a column it does not know) or in its
    constructor (a model load meeting a damaged file). Defined in a function, so Ray ships it by value."""

    class Scorer:
        def __call__(self, batch: dict) -> dict:
            raise KeyError("no column 'body' in this batch")

    class Loader:
        def __init__(self) -> None:
            with open("/nonexistent/model.safetensors"):
                pass

        def __call__(self, batch: dict) -> dict:
            return batch

    return {"Scorer": Scorer, "Loader": Loader}[kind]


def test_a_task_failure_names_the_task_and_the_remote_exception(ray_local) -> None:
    @ray_local.remote
    def parse() -> None:
        import json

        json.loads("{not json")

    with pytest.raises(Exception) as raised:
        ray_local.get(parse.remote())
    failure = remote_failure(raised.value)
    assert failure is not None and failure.where.startswith("Ray task") and "parse" in failure.where
    assert failure.error_type == "json.decoder.JSONDecodeError" and "Expecting property name" in failure.message
    assert failure.pid and failure.pid != os.getpid()


def test_an_actor_whose_constructor_fails(ray_local) -> None:
    @ray_local.remote
    class Engine:
        def __init__(self) -> None:
            raise RuntimeError("CUDA is not available on this node")

        def ping(self) -> int:
            return 1

    with pytest.raises(Exception) as raised:
        ray_local.get(Engine.remote().ping.remote())
    failure = remote_failure(raised.value)
    assert failure.where == "Ray actor Engine.__init__"
    assert (failure.error_type, failure.message) == ("RuntimeError", "CUDA is not available on this node")


@pytest.mark.parametrize(("kind", "error_type", "text"), [
    ("Scorer", "KeyError", "no column 'body' in this batch"),
    ("Loader", "FileNotFoundError", "/nonexistent/model.safetensors"),
])
def test_a_ray_data_actor_failure_points_at_ray_datas_log(ray_local, kind: str, error_type: str, text: str) -> None:
    udf = failing_udf(kind)
    with pytest.raises(Exception) as raised:
        # num_cpus=0: Ray 2.60 keeps a failed pipeline's actor alive (seen: over 60 s, through gc.collect), and
        # with a CPU it would starve the next test's pipeline on this 2-CPU Ray for good
        ray_local.data.range(20).map_batches(udf, compute=ray_local.data.ActorPoolStrategy(size=1),
                                             batch_size=10, num_cpus=0).materialize()
    failure = remote_failure(raised.value)
    assert failure.where == f"Ray Data actor MapBatches({udf.__name__})", failure
    assert failure.error_type == error_type and text in failure.message
    log = worker_log(failure, logs_dir())
    assert log.endswith("ray-data/ray-data.log") and text in Path(log).read_text()
    message = failure_message("annotate", raised.value)
    assert message.startswith(f"annotate failed in a Ray Data actor MapBatches({udf.__name__}) (pid ")
    assert "Traceback" not in message and message.count(text) == 1



def test_a_worker_failure_survives_pickling_and_names_its_node(ray_local) -> None:
    @ray_local.remote
    def train_step() -> None:
        try:
            raise OSError("No space left on device")
        except OSError as err:
            raise WorkerFailure.from_here(err, "Ray Train worker (rank 1, side left)") from err

    with pytest.raises(Exception) as raised:
        ray_local.get(train_step.remote())
    failure = remote_failure(raised.value)
    assert failure.where == "Ray Train worker (rank 1, side left)"
    assert (failure.error_type, failure.message) == ("OSError", "No space left on device")
    assert failure.node and failure.node != failure.node_id  # the node's address, not its id


def test_the_pipeline_names_the_stage_that_failed(ray_local) -> None:
    try:
        try:
            raise FileNotFoundError("runs/x/documents does not exist: run `politune ingest` first")
        except FileNotFoundError as err:
            raise StageFailed("annotate") from err
    except StageFailed as failed:
        message = failure_message("run", failed)
        assert message == "annotate: runs/x/documents does not exist: run `politune ingest` first"


def test_a_bug_is_not_dressed_up_as_a_failure() -> None:
    assert failure_message("train", ZeroDivisionError("division by zero")) is None


def test_a_long_message_is_trimmed_and_says_where_the_rest_is() -> None:
    failure = RemoteFailure("Ray task f", "ValueError", "\n".join(f"line {i}" for i in range(40)), pid=7)
    text = failure.describe("ingest", "/logs/worker-7.err")
    assert text.splitlines()[0] == "ingest failed in a Ray task f (pid 7):"
    assert "line 11" in text and "line 12" not in text and "28 more lines in the full log" in text
    assert text.endswith("full log: /logs/worker-7.err")


def test_a_worker_on_another_node_is_found_with_ray_logs(tmp_path: Path) -> None:
    """No file of that pid in this node's log folder: the message says how to fetch it from its node."""
    failure = RemoteFailure("Ray Train worker (rank 1, side left)", "OSError", "disk full", pid=4242,
                            node="10.0.0.7", node_id="ab12")
    assert worker_log(failure, tmp_path) == "`ray logs worker --pid 4242 --node-id ab12 --err` (or the Ray " \
                                            "dashboard's Logs tab)"
    (tmp_path / "worker-77-01000000-4242.err").write_text("Traceback (most recent call last): …")
    assert worker_log(failure, tmp_path) == str(tmp_path / "worker-77-01000000-4242.err")
