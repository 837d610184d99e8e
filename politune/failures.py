"""A failure in a Ray worker, told to the user once: which stage, which worker on which node, the remote
exception's type and message, and where its full log is.

Ray hands the driver a remote failure in several shapes: a RayTaskError whose text carries the worker's traceback
(a task, or a Ray Data UDF), an ActorDiedError (an actor whose constructor raised, or that was killed), Ray Train's
WorkerGroupError with each failed rank's exception, a ControllerError. `remote_failure` reads any of them into one
`RemoteFailure`; `command.py` prints it. The train loop raises `WorkerFailure`, which says where it ran, since Ray
Train hands back only the bare exception of a rank.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

# "ray::MapWorker(MapBatches(HfAnnotator)).submit() (pid=123, ip=10.0.0.2, actor_id=…, repr=…)", colours removed
_HEADER = re.compile(r"ray::(?P<name>\S+)\s+\(pid=(?P<pid>\d+), ip=(?P<ip>[^,)\s]+)")
_CHAIN = re.compile(r"\n\s*(?:The above exception was the direct cause of the following exception:|"
                    r"During handling of the above exception, another exception occurred:)\s*\n")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# exceptions Ray wraps a user's in: their text says nothing the user's does not
_RAY_WRAPPERS = ("ray.exceptions.", "UserCodeException", "RayTaskError", "RayDataUserCodeException")
MAX_MESSAGE_LINES = 12


class StageFailed(Exception):
    """Raised by a run of several stages (the pipeline) from the failure of one, so the message can name it."""

    def __init__(self, stage: str) -> None:
        super().__init__(f"stage {stage} failed")
        self.stage = stage


class WorkerFailure(Exception):
    """An exception raised in a Ray worker, with where it happened. Picklable, and it keeps no traceback object:
    the worker's log has the whole traceback (it is raised `from` the original)."""

    def __init__(self, role: str, error_type: str, message: str, pid: int, node_id: str | None) -> None:
        super().__init__(f"{role}: {error_type}: {message}")
        self.role, self.error_type, self.message, self.pid, self.node_id = role, error_type, message, pid, node_id

    def __reduce__(self) -> tuple:
        return (WorkerFailure, (self.role, self.error_type, self.message, self.pid, self.node_id))

    @classmethod
    def from_here(cls, err: BaseException, role: str) -> WorkerFailure:
        """Built inside the worker that caught `err`."""
        import ray

        node_id = ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
        return cls(role, exception_name(err), str(err), os.getpid(), node_id)


@dataclass(frozen=True)
class RemoteFailure:
    where: str                 # "Ray Train worker (rank 0)", "Ray actor MapWorker(MapBatches(HfAnnotator))"
    error_type: str            # "OSError", "safetensors_rust.SafetensorError"
    message: str
    pid: int | None = None
    node: str | None = None    # an IP address, or a node id when that is all there is
    node_id: str | None = None

    def describe(self, stage: str, log: str | None) -> str:
        """The one message a command prints."""
        at = ", ".join(([f"pid {self.pid}"] if self.pid else []) + ([f"node {self.node}"] if self.node else []))
        first, *more = _trimmed(self.message)
        lines = [f"{stage} failed in a {self.where}{f' ({at})' if at else ''}:",
                 f"  {self.error_type}: {first}" if first else f"  {self.error_type}", *(f"  {line}" for line in more)]
        return "\n".join(lines + ([f"  full log: {log}"] if log else []))


def exception_name(err: BaseException) -> str:
    """An exception's type as Python's traceback names it: builtins bare, others with their module."""
    kind = type(err)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"


def remote_failure(err: BaseException) -> RemoteFailure | None:
    """What a failure from a Ray worker says about itself; None when `err` did not come from one."""
    from ray.exceptions import RayActorError, RayError, RayTaskError
    from ray.train import ControllerError, WorkerGroupError

    if isinstance(err, WorkerFailure):
        return RemoteFailure(err.role, err.error_type, err.message, err.pid, _node_address(err.node_id), err.node_id)
    if isinstance(err, WorkerGroupError):
        if not err.worker_failures:
            return RemoteFailure("Ray Train worker group", "WorkerGroupError", str(err))
        rank, failure = min(err.worker_failures.items())  # the first failed rank speaks for the group
        return remote_failure(failure) or RemoteFailure(f"Ray Train worker (rank {rank})", exception_name(failure),
                                                        str(failure))
    if isinstance(err, ControllerError):
        inner = remote_failure(err.controller_failure)
        return inner or RemoteFailure("Ray Train controller", exception_name(err.controller_failure),
                                      str(err.controller_failure))
    if isinstance(err, (RayTaskError, RayActorError)):
        return _from_traceback_text(str(err), "Ray actor" if isinstance(err, RayActorError) else "Ray task",
                                    type(err).__name__)
    serve = sys.modules.get("ray.serve.exceptions")
    if serve is not None and isinstance(err, serve.RayServeException):  # a replica that failed to start
        return _from_traceback_text(str(err), "Ray Serve replica", "RayServeException")
    if isinstance(err, RayError):  # a worker or node that died, an object lost, out of memory
        return RemoteFailure("Ray worker", exception_name(err), str(err))
    return None


def _node_address(node_id: str | None) -> str | None:
    """A node's address as Ray registered it (its id when Ray is gone or does not know it)."""
    import ray

    if node_id and ray.is_initialized():
        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                return node.get("NodeManagerAddress") or node_id
    return node_id


def _from_traceback_text(text: str, kind: str, fallback_type: str) -> RemoteFailure:
    """Read a RayTaskError's or ActorDiedError's text: the first `ray::…` header says which worker, the last
    exception in the chain that is not Ray's own wrapper says what went wrong."""
    text = _ANSI.sub("", text)
    header = _HEADER.search(text)
    where = _worker_name(kind, header["name"]) if header else kind
    raised = [_raised(block) for block in _CHAIN.split(text)]
    raised = [r for r in raised if r is not None]
    own = [r for r in raised if not r[0].startswith(_RAY_WRAPPERS)]
    error_type, message = (own or raised or [(fallback_type, text.strip())])[-1]
    return RemoteFailure(where, error_type, message, int(header["pid"]) if header else None,
                         header["ip"] if header else None)


def _worker_name(kind: str, name: str) -> str:
    """"Ray Data actor MapBatches(HfAnnotator)" for a Ray Data map actor, else e.g. "Ray actor A.__init__"."""
    data_actor = re.fullmatch(r"MapWorker\((?P<op>.*)\)\.\w+(?:\(\))?", name)
    if data_actor:
        return f"Ray Data actor {data_actor['op']}"
    return f"{kind} {name.removesuffix('()')}"


def _raised(block: str) -> tuple[str, str] | None:
    """The exception a traceback block ends with: (type, message), or None when the block has none."""
    lines = block.rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    start = frames[-1] + 1 if frames else 0
    while start < len(lines) and (lines[start].startswith("    ") or not lines[start].strip()):
        start += 1  # the frame's source line and its ^^^ markers
    rest = [line for line in lines[start:] if not _HEADER.search(line) and not line.startswith("Traceback (")]
    if not rest:
        return None
    first = re.match(r"^([A-Za-z_][\w.]*)(?::\s?(.*))?$", rest[0].strip())
    if not first:
        return None
    return first[1], "\n".join([first[2] or "", *rest[1:]]).strip()


def _trimmed(message: str) -> list[str]:
    lines = [line.rstrip() for line in message.strip().splitlines()] or [""]
    if len(lines) > MAX_MESSAGE_LINES:
        lines = [*lines[:MAX_MESSAGE_LINES], f"… ({len(lines) - MAX_MESSAGE_LINES} more lines in the full log)"]
    return [line if len(line) <= 400 else line[:400] + " …" for line in lines]


def worker_log(failure: RemoteFailure, logs_dir: Path | None) -> str | None:
    """Where the failure's full traceback is: Ray Data's log for a Ray Data operator (on the driver's node), the
    worker's own output file when it ran on this node, Serve's logs for a replica, else the `ray logs` command
    that fetches the worker's log from its node."""
    if logs_dir is not None:
        data_log = logs_dir / "ray-data" / "ray-data.log"
        if failure.where.startswith("Ray Data") and data_log.is_file():
            return str(data_log)
        if failure.pid:
            for suffix in ("err", "out"):
                found = [f for f in sorted(logs_dir.glob(f"worker-*-{failure.pid}.{suffix}")) if f.stat().st_size]
                if found:
                    return str(found[-1])
        if failure.where.startswith("Ray Serve") and (logs_dir / "serve").is_dir():
            return str(logs_dir / "serve")
    if failure.pid:
        node = (f" --node-id {failure.node_id}" if failure.node_id
                else f" --node-ip {failure.node}" if failure.node else "")
        return f"`ray logs worker --pid {failure.pid}{node} --err` (or the Ray dashboard's Logs tab)"
    return str(logs_dir) if logs_dir is not None else None
