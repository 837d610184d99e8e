"""Benchmark: does ingest stream? Peak memory and throughput for 100k vs 1M posts from Parquet.

    python bench/ingest.py                      # 100,000 then 1,000,000 posts
    python bench/ingest.py --sizes 20000 200000 # quicker

Each size runs in a fresh process with its own local Ray, while this process samples memory every
0.25 s: the machine's used memory above its level before the run, and the sum of the unique memory
(USS) of the ingest process and every process under it (driver, GCS, raylet, Ray workers).
The corpus generator's own peak RSS is printed too (it must not grow with N either).
Goal: the largest run's peaks within 30% of the smallest run's.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from compressed import codecs_bench
from memory import run_measured

MB = 2**20


def generate(n: int, out: Path) -> tuple[float, float]:
    """Generate n posts (Parquet) in a child process; return (seconds, child peak RSS MB)."""
    code = ("import sys, resource; from politune.corpus.generate import generate_corpus; "
            "generate_corpus(int(sys.argv[1]), sys.argv[2], seed=0, fmt='parquet', rows_per_file=100_000); "
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, str(n), str(out)], capture_output=True, text=True, check=True)
    return time.perf_counter() - start, int(done.stdout.strip().splitlines()[-1]) / 1024


def ingest(corpus: Path, workdir: Path) -> dict:
    """Ingest the corpus in a fresh process (fresh local Ray) while sampling memory. The time
    excludes Ray's start-up; the memory peaks include it."""
    overrides = [
        "run_id=bench", f"storage_root={workdir / 'runs'}", "corpus=null", "ray.num_cpus=2",
        f"sources.0.paths=[{corpus / 'truthsocial'}]", f"sources.1.paths=[{corpus / 'politosphere'}]",
    ]
    code = ("import json, sys, time; from politune.config import load_preset; "
            "from politune.ingest import ingest_corpus; from politune.ray_runtime import init_ray; "
            "cfg = load_preset('local', sys.argv[1:]); init_ray(cfg); "
            "t = time.perf_counter(); r = ingest_corpus(cfg); "
            "print(json.dumps({'seconds': time.perf_counter() - t, 'totals': r.totals, 'buckets': r.num_buckets}))")
    return run_measured(code, overrides, workdir / "ingest.log")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None, help="keeps corpora between runs when given")
    parser.add_argument("--codecs", action="store_true",
                        help="instead: the read pass's MB/s per core, jsonl vs gzip, bz2, zstd (bench/compressed.py)")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="politune-bench-"))
    print(f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; work dir {workdir}")
    if args.codecs:
        codecs_bench(args.sizes[0] if args.sizes != parser.get_default("sizes") else 200_000, workdir)
        return

    rows = []
    for n in args.sizes:
        corpus = workdir / f"corpus-{n}"
        gen_s, gen_rss = generate(n, corpus)
        r = ingest(corpus, workdir)
        t = r["totals"]
        assert t["read"] == n == t["kept"] + t["duplicates"] + t["quarantined"], t
        rows.append((n, r, gen_rss))
        print(f"{n:>10,} posts: generate {gen_s:6.1f} s (peak RSS {gen_rss:6.0f} MB) | ingest {r['seconds']:6.1f} s "
              f"= {n / r['seconds']:8,.0f} posts/s, {r['buckets']} buckets | peak used {r['peak_used_mb']:7.0f} MB, "
              f"peak USS of Ray processes {r['peak_uss_mb']:7.0f} MB")

    (small, rs, gs), (large, rl, gl) = rows[0], rows[-1]
    print(f"\n{large:,} vs {small:,} posts ({large // small}x the data):")
    for name, a, b in [("peak used memory", rs["peak_used_mb"], rl["peak_used_mb"]),
                       ("peak USS of Ray processes", rs["peak_uss_mb"], rl["peak_uss_mb"]),
                       ("generator peak RSS", gs, gl)]:
        ratio = b / a
        print(f"  {name:<28} ratio {ratio:5.2f}  ({'within' if ratio <= 1.3 else 'OVER'} the 1.30 goal)")
    print(f"  throughput ratio              {large / rl['seconds'] / (small / rs['seconds']):5.2f}")
    print(f"(this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB peak RSS)")


if __name__ == "__main__":
    main()
