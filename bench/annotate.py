"""Benchmark: the annotate stage's overhead and memory, on the tiny model (logprob mode, CPU).

    python bench/annotate.py                                   # ratio on 4,000 posts; memory 10k vs 100k
    python bench/annotate.py --memory-sizes 100000 1000000     # the issue's sizes (about an hour here)

1. Throughput, side by side on the same posts and model: docs/s of the full Ray Data pipeline
   (`annotate_documents`: read Parquet, one actor with one CPU, write Parquet) ÷ docs/s of a plain
   loop in this process calling the same annotator on the same batches with one torch thread.
   Both times include loading the model; the pipeline's excludes starting Ray. Goal: ≥ 0.9.
2. Memory: the whole stage on two corpus sizes, each in a fresh process with its own local Ray,
   sampled as in bench/ingest.py. Goal: the larger run's peaks within 30% of the smaller's.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from memory import run_measured

from politune.config import TinyModelConfig, build_config
from politune.corpus.generate import sample_texts
from politune.models.tiny import build_tiny_model

MB = 2**20


def write_documents(run: Path, n: int) -> None:
    """A run directory whose documents/ holds n generated posts (ingest is not what is measured)."""
    folder = run / "documents"
    folder.mkdir(parents=True, exist_ok=True)
    texts = sample_texts(n, seed=1)
    ids = [hashlib.sha1(f"{i}".encode()).hexdigest()[:20] for i in range(n)]
    step = 100_000
    for part, start in enumerate(range(0, n, step)):
        pq.write_table(pa.table({"doc_id": ids[start:start + step], "source": ["bench"] * len(ids[start:start + step]),
                                 "text": texts[start:start + step]}), folder / f"part-{part:05d}.parquet")


def config(workdir: Path, model: Path, run_id: str, batch_size: int) -> dict:
    return {
        "run_id": run_id, "storage_root": str(workdir / "runs"), "tiny_model": {"out": str(model)},
        "ray": {"num_cpus": 2}, "sources": [{"name": "bench", "paths": ["unused"]}],
        "annotate": {"mode": "logprob", "batch_size": batch_size, "concurrency": 1, "num_cpus_per_actor": 1,
                     "rows_per_file": 2000},
    }


def plain_loop(model: Path, texts: list[str], batch_size: int) -> float:
    from politune.annotate.hf_engine import HFAnnotator

    start = time.perf_counter()
    annotator = HFAnnotator(str(model), "tiny", "logprob", "bench", num_threads=1)
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        annotator({"doc_id": np.array([str(j) for j in range(len(chunk))]), "text": np.array(chunk)})
    return len(texts) / (time.perf_counter() - start)


def pipeline(cfg_dict: dict) -> tuple[float, dict]:
    from politune.annotate import annotate_documents
    from politune.ray_runtime import init_ray

    cfg = build_config(cfg_dict)
    init_ray(cfg)
    start = time.perf_counter()
    result = annotate_documents(cfg)
    return result.documents / (time.perf_counter() - start), result.statuses


def memory_run(cfg_dict: dict, workdir: Path) -> dict:
    code = ("import json, sys, time; from politune.config import build_config; from politune.annotate import "
            "annotate_documents; from politune.ray_runtime import init_ray; "
            "cfg = build_config(json.loads(sys.argv[1])); init_ray(cfg); "
            "t = time.perf_counter(); r = annotate_documents(cfg); "
            "print(json.dumps({'seconds': time.perf_counter() - t, 'documents': r.documents}))")
    return run_measured(code, [json.dumps(cfg_dict)], workdir / "annotate.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=4000, help="posts for the throughput ratio")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="politune-bench-annotate-"))
    model = build_tiny_model(TinyModelConfig(), workdir / "tiny")
    print(f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; work dir {workdir}")

    texts = sample_texts(args.docs, seed=1)
    write_documents(workdir / "runs" / "ratio", args.docs)
    loop_rate = plain_loop(model, texts, args.batch_size)
    ray_rate, statuses = pipeline(config(workdir, model, "ratio", args.batch_size))
    assert statuses["ok"] == args.docs, statuses
    print(f"throughput on {args.docs:,} posts, batch {args.batch_size}, one CPU each:")
    print(f"  plain loop in this process   {loop_rate:8.1f} docs/s")
    print(f"  Ray Data pipeline, 1 actor   {ray_rate:8.1f} docs/s")
    print(f"  ratio                        {ray_rate / loop_rate:8.2f}  (goal >= 0.90)")
    import ray

    ray.shutdown()

    runs = []
    for n in args.memory_sizes:
        write_documents(workdir / "runs" / f"mem{n}", n)
        r = memory_run(config(workdir, model, f"mem{n}", args.batch_size), workdir)
        runs.append((n, r))
        print(f"{n:>10,} posts: {r['seconds']:7.1f} s = {n / r['seconds']:6.1f} docs/s | peak used "
              f"{r['peak_used_mb']:6.0f} MB, peak USS of Ray processes {r['peak_uss_mb']:6.0f} MB")
    if len(runs) >= 2:
        (small, rs), (large, rl) = runs[0], runs[-1]
        for name, key in [("peak used memory", "peak_used_mb"), ("peak USS of Ray processes", "peak_uss_mb")]:
            ratio = rl[key] / rs[key]
            print(f"  {large:,} vs {small:,}: {name:<26} ratio {ratio:5.2f} "
                  f"({'within' if ratio <= 1.3 else 'OVER'} the 1.30 goal)")


if __name__ == "__main__":
    main()
