"""The one place that connects to Ray: a cluster when RAY_ADDRESS (or ray.address) is set, else a
local Ray on 127.0.0.1 whose files live under the run directory.

Workers' output stays in Ray's log files unless POLITUNE_VERBOSE is set (`--verbose`): a failure is told once,
by the command (command.py), with the path of the failed worker's log, not once a worker, retry and node."""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path

import ray

from politune.config import RunConfig
from politune.storage import is_s3

log = logging.getLogger(__name__)

# Ray puts unix sockets under its temp dir; their paths must stay under ~107 bytes.
_MAX_TEMP_DIR_CHARS = 40
IDLE_WORKER_KEEP_MS = 60_000  # a local Ray's idle task workers live this long (Ray's default: 1 s)
# A local Ray's settings (`ray.init` here, and the loopback clusters of local_cluster.py), in the environment before it
# starts so that its processes inherit them; a user's own setting wins. Measured on this 2-core machine, a one-step
# Ray Train run took 20-25 s, about 4 s of it training; these two took 5 s off each run.
LOCAL_RAY_ENV = {
    # Ray kills a task worker idle for 1 s once more are started than there are CPUs, and each new one imports Ray
    # Data and pyarrow again (2-5 s of CPU): kept for a minute, the next stage's tasks reuse them.
    "RAY_idle_worker_killing_time_threshold_ms": str(IDLE_WORKER_KEEP_MS),
    # Ray Train's controller looks at its workers every 2 s, so a run ends up to 2 s after its workers did, and its
    # start waits in steps of 2 s too
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    # Ray Train's preemption watcher, one more actor process a run, watches for nodes being drained (spot
    # instances taken back): a local Ray has none. A cluster's runs keep it.
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
}
# Settings workers need that are not secrets, forwarded in the job's runtime env. Credentials (AWS keys and session
# token, HF_TOKEN, API keys) never go there: Ray shows a job's runtime env to anyone who reaches the dashboard or
# the state API. Workers get them the way the platform gives them: on a local Ray (`ray.init` here, or `ray start`)
# by inheritance from the process that started it; on KubeRay from the pods' environment (the manifests'
# secretKeyRefs) or a cloud workload identity.
_FORWARDED_ENV = (
    "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "HF_HOME", "HF_ENDPOINT",
)


# Set in every Ray worker unless the driver's environment says otherwise. Arrow's default allocator (jemalloc) keeps
# what a task freed for later: an ingest worker reading pieces of a 250 MB file then writing them held 518 MB
# RSS with it and 374 MB with the system allocator, which was 13% faster too (docs/benchmarks.md).
WORKER_ENV = {"ARROW_DEFAULT_MEMORY_POOL": "system"}


def ray_temp_dir(cfg: RunConfig) -> Path:
    """Local folder for Ray's session files: `<run>/_ray`, or `<work_dir>/<run_id>/_ray` when the
    run lives on S3. A path too long for Ray's sockets is replaced by a short one under the system
    temp dir, linked from the intended place so it is still found beside the run."""
    base = Path(cfg.work_dir) / cfg.run_id if is_s3(cfg.storage_root) else Path(cfg.run_uri)
    wanted = (base / "_ray").absolute()
    if len(str(wanted)) <= _MAX_TEMP_DIR_CHARS:
        wanted.mkdir(parents=True, exist_ok=True)
        return wanted
    short = Path(tempfile.gettempdir()) / f"politune-ray-{hashlib.sha1(str(wanted).encode()).hexdigest()[:8]}"
    short.mkdir(parents=True, exist_ok=True)
    wanted.parent.mkdir(parents=True, exist_ok=True)
    if not wanted.is_symlink():
        if wanted.exists():
            wanted.rmdir()
        wanted.symlink_to(short, target_is_directory=True)
    return short


def verbose() -> bool:
    """Whether Ray's and the workers' output is streamed to this console (POLITUNE_VERBOSE, `--verbose`)."""
    return os.environ.get("POLITUNE_VERBOSE", "") not in ("", "0")


def init_ray(cfg: RunConfig) -> str:
    """Connect to Ray once per process; return the address joined or 'local'."""
    if ray.is_initialized():
        return "already-initialized"
    env_vars = {k: os.environ[k] for k in _FORWARDED_ENV if k in os.environ}
    env_vars.update({k: os.environ.get(k, v) for k, v in WORKER_ENV.items()})
    runtime_env = {"env_vars": env_vars}
    address = os.environ.get("RAY_ADDRESS") or cfg.ray.address
    if address:
        ray.init(address=address, runtime_env=runtime_env, log_to_driver=verbose(), logging_level=_ray_log_level())
        _quiet_unless_verbose()
        return address
    # A laptop run stays on loopback and needs no token (nothing listens beyond 127.0.0.1).
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    for name, value in LOCAL_RAY_ENV.items():
        os.environ.setdefault(name, value)
    temp_dir = ray_temp_dir(cfg)
    ray.init(
        num_cpus=cfg.ray.num_cpus,
        include_dashboard=cfg.ray.dashboard,
        dashboard_host="127.0.0.1",
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
        runtime_env=runtime_env,
        log_to_driver=verbose(),
        logging_level=_ray_log_level(),
    )
    _quiet_unless_verbose()
    log.info("started a local Ray on 127.0.0.1 (files in %s)", temp_dir)
    return "local"


def logs_dir() -> Path | None:
    """This node's Ray log folder (`<session>/logs`) while Ray is connected; the workers' files are there."""
    node = ray._private.worker._global_node  # Ray has no public accessor; ray.data's get_log_directory reads it too
    return Path(node.get_logs_dir_path()) if node is not None else None


def _ray_log_level() -> int:
    """Ray's driver logger ("Started a local Ray instance", …): its info only when verbose."""
    return logging.INFO if verbose() else logging.WARNING


def _quiet_unless_verbose() -> None:
    """Beyond the workers' output (log_to_driver), Ray's driver prints on its own: Ray Data logs its progress every
    few seconds and each dataset's plan, each failed operator and the tracebacks it hides from users' frames, and the
    driver's error listener prints the raylet's retry notices with the worker's traceback. The command prints a
    summary a stage and tells a failure once (command.py), so unless verbose these go only to files: Ray Data's own
    ray-data.log, and `politune-driver.log` in the logs folder."""
    if verbose():
        return
    import ray._private.worker as ray_worker

    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "Started Serve", "Application … is ready"
    for handler in logging.getLogger("ray.data").handlers:  # configured when ray.data is imported, as stages do
        if isinstance(handler, logging.StreamHandler):  # the console, not its SessionFileHandler
            handler.addFilter(_nothing)
    if getattr(ray_worker.print_to_stdstream, "politune_quiet", False):
        return
    printer = ray_worker.print_to_stdstream

    def to_file(data: dict, ignore_prefix: bool) -> None:
        folder = logs_dir()
        if data.get("pid") != "raylet" or folder is None:
            printer(data, ignore_prefix)
            return
        with open(folder / "politune-driver.log", "a") as out:
            out.writelines(f"{line}\n" for line in data.get("lines", []))

    to_file.politune_quiet = True  # type: ignore[attr-defined]
    # the listener looks the function up at each message (ray 2.60, ray/_private/worker.py listen_error_messages)
    ray_worker.print_to_stdstream = to_file


def _nothing(record: logging.LogRecord) -> bool:
    return False
