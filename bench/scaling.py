"""Benchmark: each Ray stage's throughput at 1 and 2 workers, on one node and on two.

    python bench/scaling.py                                  # every stage: about 30 minutes on 2 cores
    python bench/scaling.py --stages annotate train          # some of them
    python bench/scaling.py --stages ingest --repeats 3      # each configuration 3 times: median and range
    python bench/scaling.py --address 10.0.0.5:6379 --storage-root s3://bucket/scaling --workers 1 8

Here, each configuration runs in a fresh Ray on loopback addresses (politune/local_cluster.py): one node
with 4 logical CPUs, or two nodes with 2 each (a head on 127.0.0.2, a node on 127.0.0.3). This machine has 2
cores, so 2 workers can at best go 2.0x as fast as one, on one node or on two. With --address, every
configuration runs on that cluster, with the worker counts given.

A stage's "workers": ingest's CPUs (Ray Data read tasks; the cluster's CPUs are capped at that), annotate's
and synthesize's engine actors (hf), train's Ray Train workers (SPREAD: one a node where there are two),
evaluate's Serve model replicas (its HTTP request actors scale with them).

Each run is a fresh driver process that runs the stage alone, on a copy of a prepared run. While the stage
runs the driver reads the run's progress board four times a second (the counts every stage publishes:
politune/engines/progress.py), which splits the run into:
- start-up: from the stage's start to its first finished item (workers starting, the model loading, the
  first batch). "model load" is the time one process takes to load the stage's model, for scale;
- steady state: items/s between 10% and 90% of the items, the figure the ratios compare;
- tail: from the last item to the stage's return (the last writes, the manifest, the pool shutting down).
It also reads every process's CPU time on this machine once a second and reports, for the steady window, the
cores used by the stage's workers, by its other Ray work and by Ray's own processes and the driver: a low ratio
is then workers that do not get the cores, or cores that go elsewhere.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
STAGES = ("ingest", "annotate", "synthesize", "train", "evaluate")
# what a stage's progress is counted in: (board stage, kind, unit shown)
COUNTED = {"ingest": ("ingest", "rows_read", "rows"), "annotate": ("annotate", "documents", "docs"),
           "synthesize": ("synthesize", "pair_drafts", "posts"), "train": ("train", "steps", "pairs"),
           "evaluate": ("serve", "requests", "requests")}
SAMPLE_S = 0.25
# Whose CPU time a stage's workers are (process titles Ray sets: `ray::<actor or task>`); any other `ray::` process
# is the stage's other Ray work (Ray Data's read/write tasks, HTTP request actors, Serve's proxy and ingress),
# and raylet, GCS, dashboard, agents and this driver are Ray's own.
WORKER_TITLES = {"ingest": ("ray::",), "annotate": ("MapBatches(_HFAnnotatorTable)",),
                 "synthesize": ("MapBatches(HFPairWriter)",), "train": ("RayTrainWorker",),
                 "evaluate": ("ServeReplica:politune:model",)}
SYSTEM_TITLES = ("raylet", "gcs_server", "dashboard", "DashboardAgent", "RuntimeEnvAgent", "log_monitor",
                 "monitor.py", "ray::IDLE")
CPU_ROLES = ("workers", "other", "system")
CPU_SAMPLE_EVERY = 4  # board samples a CPU sample (reading every process's times costs the driver CPU too)
TRAIN = {"sides": ["left"], "lora": {"rank": 8, "alpha": 16}, "learning_rate": 0.005, "warmup_steps": 0,
         "per_device_batch_size": 8, "gradient_accumulation_steps": 1, "max_length": 128, "logging_steps": 5,
         "save_steps": 1000, "cpus_per_worker": 1, "num_epochs": 1, "placement_strategy": "SPREAD"}


@dataclass
class Setup:
    name: str
    workers: int
    nodes: int


LOCAL_SETUPS = [Setup("1 worker, 1 node", 1, 1), Setup("2 workers, 1 node", 2, 1), Setup("2 workers, 2 nodes", 2, 2)]


# --- the driver: one stage, one configuration, in a process of its own --------------------------------------
def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `spec["stage"]` alone on the config, joined to RAY_ADDRESS; sample its progress board."""
    import ray

    from politune.config import build_config
    from politune.engines.progress import open_board
    from politune.ray_runtime import init_ray
    from politune.stages import build
    from politune.stages import stage as stage_named

    cfg = build_config(spec["config"])
    stage = spec["stage"]
    board_stage, kind, _ = COUNTED[stage]
    init_ray(cfg)
    board = open_board(cfg.run_id)
    samples: list[tuple[float, float]] = []
    cpu = CpuByRole(stage)
    nodes: set[str] = set()
    stop = threading.Event()
    start = time.perf_counter()

    def sample() -> None:
        from ray.util.state import list_actors

        last_nodes = 0.0
        while not stop.wait(SAMPLE_S):
            items, _ = ray.get(board.read.remote(board_stage))
            samples.append((time.perf_counter() - start, items.get(kind, 0)))
            if len(samples) % CPU_SAMPLE_EVERY == 1:
                cpu.sample(samples[-1][0])
            if spec.get("nodes", True) and time.perf_counter() - last_nodes > 3:  # where the stage's workers are
                last_nodes = time.perf_counter()
                actors = list_actors(filters=[("state", "=", "ALIVE")], limit=1000, raise_on_missing_output=False)
                nodes.update(a.node_id for a in actors if any(
                    k in a.class_name for k in ("MapWorker", "RayTrainWorker", "ServeReplica:politune:HFModel")))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    build(stage_named(stage), cfg)
    seconds = time.perf_counter() - start
    stop.set()
    sampler.join()
    items, _ = ray.get(board.read.remote(board_stage))  # the last counts, once the stage has returned
    samples.append((seconds, items.get(kind, 0)))
    return {"seconds": seconds, "samples": samples, "nodes": len(nodes) if spec.get("nodes", True) else None,
            "cpu": cpu.series}


class CpuByRole:
    """CPU seconds used so far on this machine, by role (CPU_ROLES), sampled with the progress counts: the
    steady window's difference says how many cores the stage's workers had, and how many went elsewhere.
    On a real cluster (--address) it sees only this machine's processes."""

    def __init__(self, stage: str) -> None:
        self.workers = WORKER_TITLES[stage]
        self.last: dict[int, float] = {}
        self.totals = dict.fromkeys(CPU_ROLES, 0.0)
        self.series: list[tuple[float, dict[str, float]]] = []

    def role(self, title: str, pid: int) -> str:
        if pid == os.getpid() or any(t in title for t in SYSTEM_TITLES) or not title.startswith("ray::"):
            return "system"
        return "workers" if any(t in title for t in self.workers) else "other"

    def sample(self, at: float) -> None:
        import psutil

        first = not self.series  # what processes used before the first sample is not the stage's
        for proc in psutil.process_iter():
            try:
                with proc.oneshot():
                    title = " ".join(proc.cmdline())
                    used = sum(proc.cpu_times()[:2])
            except psutil.Error:
                continue
            if "ray" not in title and proc.pid != os.getpid():
                continue  # not Ray's and not this driver: the machine's other load
            delta = 0.0 if first else used - self.last.get(proc.pid, 0.0)  # a new process: all it used
            self.last[proc.pid] = used
            self.totals[self.role(title, proc.pid)] += max(delta, 0.0)
        self.series.append((at, dict(self.totals)))


# --- the bench: prepare inputs, run every configuration, print the table ------------------------------------
def breakdown(result: dict[str, Any], scale: float) -> dict[str, float]:
    """start-up, steady items/s (x scale: pairs a step for train), tail, from the sampled counts."""
    samples, seconds = result["samples"], result["seconds"]
    total = max(c for _, c in samples)
    if total <= 0:
        raise RuntimeError(f"the stage counted nothing: {result}")

    def first_at(share: float) -> tuple[float, float]:
        return next((t, c) for t, c in samples if c >= share * total)

    (t_first, _), (t10, c10), (t90, c90) = first_at(1e-9), first_at(0.1), first_at(0.9)
    t_last = first_at(1.0)[0]
    rate = (c90 - c10) / (t90 - t10) if t90 > t10 else total / max(t_last - t_first, 1e-9)
    out = {"items": total * scale, "startup": t_first, "steady": rate * scale, "tail": seconds - t_last,
           "seconds": seconds}
    series = result.get("cpu") or []
    if t90 > t10 and series:  # cores each role used during the steady window
        at10 = next(v for t, v in series if t >= t10)
        at90 = next(v for t, v in series if t >= t90)
        out.update({f"cores_{role}": (at90[role] - at10[role]) / (t90 - t10) for role in CPU_ROLES})
    return out


def run_driver(spec: dict[str, Any], env: dict[str, str], log: Path) -> dict[str, Any]:
    with log.open("a") as out:
        done = subprocess.run([sys.executable, __file__, "--drive", json.dumps(spec)], env=env, stdout=subprocess.PIPE,
                              stderr=out, text=True, cwd=REPO)
    if done.returncode:
        raise RuntimeError(f"the {spec['stage']} driver failed: see {log}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def base_raw(root: str, run_id: str, model: Path) -> dict[str, Any]:
    return {"base": "local-random", "run_id": run_id, "storage_root": root, "work_dir": str(model.parent / "work"),
            "tiny_model": {"out": str(model)}, "corpus": None}


def prepare(workdir: Path, root: str, model: Path, posts: int, ingest_posts: int, pairs: int,
            env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """What each stage reads, made once with a local Ray: a corpus for ingest, a run annotated, selected,
    synthesized and trained for the others (annotate, synthesize and evaluate redo one stage on a copy),
    and released-shape pairs for train."""
    from politune.config import TinyModelConfig
    from politune.corpus.generate import generate_corpus, labelled_pairs
    from politune.local_cluster import free_port
    from politune.synthesize.formats import write_pairs
    from politune.world.tiny import build_tiny_model

    if not (model / "config.json").exists():
        build_tiny_model(TinyModelConfig(), model)
    big, small = workdir / "corpus-ingest", workdir / "corpus"
    generate_corpus(ingest_posts, big, seed=7, rows_per_file=max(1000, ingest_posts // 40))
    generate_corpus(posts, small, seed=8)
    sources = lambda corpus: [{"name": s, "paths": [str(corpus / s)], "shape": s}  # noqa: E731
                              for s in ("truthsocial", "politosphere")]
    released = {}
    for side, rows in labelled_pairs(pairs, seed=11).items():
        released[side] = [str(workdir / f"pairs-{side}.jsonl")]
        write_pairs(rows, released[side][0])
    base = {**base_raw(root, "base", model), "sources": sources(small), "ray": {"num_cpus": 2},
            "train": {**TRAIN, "max_steps": 4, "placement_strategy": "PACK"},
            "serve": {"port": free_port()}, "evaluate": {"probes": False}}
    print(f"preparing: a run of {posts:,} posts through train (a few minutes) ...", flush=True)
    for stage in ("ingest", "annotate", "select", "synthesize", "train"):
        if stage == "select":  # no Ray: in this process
            _select(base)
        else:
            run_driver({"stage": stage, "config": base, "nodes": False}, env, workdir / "prepare.log")
    return {
        "ingest": {**base_raw(root, "ingest", model), "sources": sources(big)},
        "annotate": {**base, "run_id": "annotate", "annotate": {"batch_size": 16}},
        "synthesize": {**base, "run_id": "synthesize"},
        "train": {**base_raw(root, "train", model), "synthesize": {"source": "released", "released": released,
                                                                   "eval_share": 0.05}, "train": TRAIN},
        "evaluate": {**base, "run_id": "evaluate", "evaluate": {"probes": False, "phrasings": 3,
                                                                "checkpoints": "final"}},
    }


def _select(raw: dict[str, Any]) -> None:
    from politune.config import build_config
    from politune.select import select_posts

    select_posts(build_config(raw))


def stage_config(stage: str, raw: dict[str, Any], setup: Setup, port: int) -> dict[str, Any]:
    """The stage's config for a setup: its worker count, and a fresh copy of the prepared run."""
    raw = json.loads(json.dumps(raw))
    run_id = f"{stage}-{setup.workers}w{setup.nodes}n"
    if stage in ("annotate", "synthesize", "evaluate"):  # the prepared run without what the stage makes
        _copy_run(raw["storage_root"], "base", run_id, leave_out={"annotate": {"annotations"},
                                                                  "synthesize": {"preferences"},
                                                                  "evaluate": {"eval", "report"}}[stage])
    raw["run_id"] = run_id
    w = setup.workers
    if stage == "annotate":
        raw["annotate"] = {**raw.get("annotate", {}), "concurrency": w, "num_cpus_per_actor": 1}
    elif stage == "synthesize":
        raw["synthesize"] = {**raw.get("synthesize", {}), "concurrency": w, "num_cpus_per_actor": 1}
    elif stage == "train":
        raw["train"] = {**raw["train"], "num_workers": w}
        _copy_run(raw["storage_root"], _imported_pairs(raw), run_id, leave_out={"adapters"})
    elif stage == "evaluate":
        raw["serve"] = {"port": port, "min_replicas": w, "max_replicas": w, "cpus_per_replica": 1}
        raw["evaluate"] = {**raw["evaluate"], "concurrency": 2 * w, "batch_size": 2}
    return raw


def _imported_pairs(raw: dict[str, Any]) -> str:
    """A run holding the released-shape pairs, imported once (synthesize.source: released runs without Ray)."""
    from politune.config import build_config
    from politune.storage import exists, join
    from politune.synthesize import synthesize_preferences

    run_id = "train-pairs"
    if not exists(join(raw["storage_root"], run_id, "manifest.json")):
        synthesize_preferences(build_config({**raw, "run_id": run_id}))
    return run_id


def _copy_run(root: str, src: str, dst: str, leave_out: set[str]) -> None:
    """Copy a run folder but its Ray session files and `leave_out` (which its manifest then forgets)."""
    import pyarrow.fs as pafs

    from politune.storage import Manifest, delete_dir, join, resolve

    delete_dir(join(root, dst))
    fs, source = resolve(join(root, src))
    _, target = resolve(join(root, dst))
    fs.create_dir(target)
    for entry in fs.get_file_info(pafs.FileSelector(source)):
        if entry.base_name in leave_out | {"_ray"}:
            continue
        if entry.type == pafs.FileType.Directory:
            fs.create_dir(f"{target}/{entry.base_name}", recursive=True)
            pafs.copy_files(entry.path, f"{target}/{entry.base_name}", source_filesystem=fs,
                            destination_filesystem=fs)
        else:
            fs.copy_file(entry.path, f"{target}/{entry.base_name}")
    Manifest(join(root, dst)).forget(*leave_out)


def model_load_seconds(model: Path) -> float:
    from politune.models.loading import load_causal_lm

    start = time.perf_counter()
    load_causal_lm(str(model), device="cpu")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", nargs="*", choices=STAGES, default=list(STAGES))
    parser.add_argument("--posts", type=int, default=1600, help="posts of the run annotate, synthesize and "
                        "evaluate start from")
    parser.add_argument("--ingest-posts", type=int, default=200_000)
    parser.add_argument("--pairs", type=int, default=480, help="train: pairs a side")
    parser.add_argument("--address", help="a Ray cluster's GCS address: run every configuration there")
    parser.add_argument("--storage-root", help="with --address: where the runs go (s3://…, shared by the nodes)")
    parser.add_argument("--workers", type=int, nargs=2, default=[1, 2], metavar=("FEW", "MANY"),
                        help="with --address: the two worker counts compared")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each configuration: the table shows the "
                        "median and the range of the ratios (this machine's speed varies between runs)")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--drive", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.drive:
        print(json.dumps(drive(json.loads(args.drive))))
        return
    if args.address and not args.storage_root:
        parser.error("--address needs --storage-root: the cluster's nodes must all reach the runs")

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="politune-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    root = args.storage_root or str(workdir / "runs")
    model = workdir / "tiny"
    env = {**os.environ, "RAY_ADDRESS": args.address or ""}
    local_env = {k: v for k, v in env.items() if k != "RAY_ADDRESS"}
    prepared = workdir / "prepared.json"  # a rerun with the same --workdir starts from what is prepared
    if prepared.exists():
        inputs = json.loads(prepared.read_text())
    else:
        inputs = prepare(workdir, root, model, args.posts, args.ingest_posts, args.pairs, local_env)
        prepared.write_text(json.dumps(inputs))
    load_s = model_load_seconds(model)
    setups = ([Setup(f"{n} workers, cluster", n, 0) for n in args.workers] if args.address else LOCAL_SETUPS)

    from politune.local_cluster import free_port, loopback_cluster

    results = workdir / "results.json"  # a rerun with the same --workdir keeps the stages measured before
    done = {row[0]: row for row in json.loads(results.read_text())} if results.exists() else {}
    rows = []
    for stage in args.stages:
        if stage in done:
            rows.append(done[stage])
            continue
        unit = COUNTED[stage][2]
        runs: dict[str, list[dict[str, Any]]] = {setup.name: [] for setup in setups}
        for repeat in range(args.repeats):  # interleaved, so each repeat's configurations share the machine's mood
            for setup in setups:
                raw = stage_config(stage, inputs[stage], setup, free_port())
                if stage == "ingest" and not args.address:
                    cpus = [setup.workers] if setup.nodes == 1 else [1] * setup.nodes
                else:
                    cpus = [2 * setup.workers] if setup.nodes == 1 else [2] * setup.nodes
                print(f"{stage}: {setup.name}{f' (run {repeat + 1} of {args.repeats})' if args.repeats > 1 else ''}"
                      " ...", flush=True)
                cluster = nullcontext(None) if args.address else loopback_cluster(cpus)
                with cluster as head:
                    run_env = env if args.address else {**head.env, "RAY_ADDRESS": head.gcs}
                    result = run_driver({"stage": stage, "config": raw}, run_env, workdir / f"{stage}.log")
                scale = TRAIN["per_device_batch_size"] * setup.workers if stage == "train" else 1
                runs[setup.name].append({**breakdown(result, scale), "nodes_used": result["nodes"]})
        measured = {name: median_run(got) for name, got in runs.items()}
        rows.append((stage, unit, measured))
        results.write_text(json.dumps(rows, indent=1))
    print_table(rows, setups, load_s)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median steady rate, with every run's steady rate (in run order) beside it."""
    middle = sorted(runs, key=lambda r: r["steady"])[(len(runs) - 1) // 2]
    return {**middle, "steady_runs": [r["steady"] for r in runs]}


def ratio_text(many: dict[str, Any], one: dict[str, Any]) -> str:
    """2 ÷ 1 of the median runs; with repeats, the range of the ratios of runs made side by side."""
    text = f"{many['steady'] / one['steady']:.2f} x"
    pairs = list(zip(many.get("steady_runs", []), one.get("steady_runs", []), strict=False))
    if len(pairs) > 1:
        ratios = sorted(m / o for m, o in pairs)
        text += f" ({ratios[0]:.2f}-{ratios[-1]:.2f} over {len(pairs)} runs)"
    return text


def print_table(rows: list, setups: list[Setup], load_s: float) -> None:
    print(f"\nmodel load in one process: {load_s:.1f} s (the tiny model)")
    header = f"{'stage':<11} {'configuration':<20} {'items':>8} {'start-up s':>10} {'steady /s':>10} " \
             f"{'tail s':>7} {'total s':>8} {'nodes':>5} {'cores w/o/s':>13}  ratio (steady)"
    print(header)
    print("-" * len(header))
    for stage, unit, measured in rows:
        one = measured[setups[0].name]
        for setup in setups:
            m = measured[setup.name]
            ratio = "" if setup is setups[0] else ratio_text(m, one)
            cores = "/".join(f"{m[f'cores_{r}']:.1f}" for r in CPU_ROLES) if "cores_workers" in m else "-"
            print(f"{stage:<11} {setup.name:<20} {m['items']:>8,.0f} {m['startup']:>10.1f} {m['steady']:>8.1f} "
                  f"{unit[:1]} {m['tail']:>7.1f} {m['seconds']:>8.1f} {m['nodes_used'] or '-':>5} {cores:>13}  {ratio}")
    print("\nitems: rows (ingest), docs (annotate), posts (synthesize), pairs (train: steps x batch x workers), "
          "requests (evaluate: the Serve replicas').")
    print("cores w/o/s: CPU cores used in the steady window (this machine's processes) by the stage's workers (w: "
          "read tasks, engine actors, Train workers, model replicas), by its other Ray work (o: Ray Data's other "
          "tasks, HTTP request actors, Serve's proxy and ingress) and by Ray's own processes and the driver (s).")


if __name__ == "__main__":
    main()
