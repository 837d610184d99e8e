"""Benchmark: does ingest stream? Peak memory and throughput for 100k vs 1M posts from Parquet, and for one big file.

    python bench/ingest.py                      # 100,000 then 1,000,000 posts
    python bench/ingest.py --sizes 20000 200000 # quicker
    python bench/ingest.py --big                # one JSON-lines file of 0.25, 1 and 4 GB, and 1 GB as zstd
    python bench/ingest.py --big --big-gb 0.25 1  # quicker

Each size runs in a fresh process with its own local Ray, while this process samples memory every
0.25 s: the machine's used memory above its level before the run, and the sum of the unique memory
(USS) of the ingest process and every process under it (driver, GCS, raylet, Ray workers).
The corpus generator's own peak RSS is printed too (it must not grow with N either).
Goal: the largest run's peaks within 30% of the smallest run's.
"""

from __future__ import annotations

import argparse
import json
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


def ingest_one_file(path: Path, workdir: Path, cpus: int) -> dict:
    """Ingest one file as a Politosphere source on `cpus` CPUs, in a fresh process, sampling every process's RSS."""
    overrides = ["run_id=big", f"storage_root={workdir / 'runs'}", "corpus=null", f"ray.num_cpus={cpus}",
                 f"sources=[{{name: reddit, paths: [{path}], shape: politosphere}}]"]
    code = ("import json, sys, time; from politune.config import load_preset; "
            "from politune.ingest import ingest_corpus; from politune.ray_runtime import init_ray; "
            "cfg = load_preset('local', sys.argv[1:]); init_ray(cfg); "
            "t = time.perf_counter(); r = ingest_corpus(cfg); "
            "print(json.dumps({'seconds': time.perf_counter() - t, 'counts': r.counts['reddit']}))")
    # RSS only, twice a second: sampling every process's unique memory took 13% of a core, which the 2-CPU run
    # missed more than the 1-CPU one
    return run_measured(code, overrides, workdir / "ingest-big.log", uss=False, interval=0.5)


def big_files(sizes_gb: list[float], ratio_gb: float, zst_gb: float, workdir: Path,
              cpu_breakdown: bool = False) -> None:
    """One generated JSON-lines file a size (and one compressed with zstd, unless zst_gb is 0), each ingested on 2
    CPUs; the file of `ratio_gb` on 1 CPU too. Every count is checked against what the generator wrote."""
    from politune.corpus.generate import write_big_jsonl

    runs = [(gb, "jsonl", 2) for gb in sizes_gb]
    if ratio_gb in sizes_gb:
        runs.insert(sizes_gb.index(ratio_gb) + 1, (ratio_gb, "jsonl", 1))
    if zst_gb:
        runs.append((zst_gb, "zst", 2))
    print(f"{'file':>26} {'CPUs':>4} {'rows':>11} {'seconds':>8} {'rows/s':>8} {'MB/s':>6} "
          f"{'worker RSS MB':>13} {'driver RSS MB':>13}  (peak; the worker is the largest of any one Ray worker)")
    speeds = {}
    for gb, kind, cpus in runs:
        path = workdir / f"comments-{gb:g}GB.jsonl"
        if not path.exists():
            written = write_big_jsonl(path, int(gb * 2**30))
            (workdir / f"{path.name}.counts.json").write_text(json.dumps(written))
        written = json.loads((workdir / f"{path.name}.counts.json").read_text())
        if kind == "zst":
            packed = path.with_suffix(".jsonl.zst")
            if not packed.exists():
                import zstandard

                with open(path, "rb") as src, open(packed, "wb") as dst:  # zstd's default level and window
                    zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, dst)
            path = packed
        r = ingest_one_file(path, workdir, cpus)
        c = r["counts"]
        assert c["read"] == written["lines"] == c["kept"] + c["duplicates"] + c["quarantined"], (c, written)
        assert c["quarantined"] == written["bad_lines"] + written["deleted"], (c, written)
        assert c["duplicates"] == written["repeated"], (c, written)
        speeds[(gb, kind, cpus)] = c["read"] / r["seconds"]
        print(f"{path.name:>26} {cpus:>4} {c['read']:>11,} {r['seconds']:>8.1f} {c['read'] / r['seconds']:>8,.0f} "
              f"{path.stat().st_size / 2**20 / r['seconds']:>6.1f} {r['peak_worker_rss_mb']:>13.0f} "
              f"{r['peak_driver_rss_mb']:>13.0f}  ({r['peak_worker']})", flush=True)
        if cpu_breakdown:
            cpu = r["cpu_s_by_name"]
            print("    CPU seconds by process: " + ", ".join(f"{k} {v:.0f}" for k, v in list(cpu.items())[:8])
                  + f"; all {sum(cpu.values()):.0f} in {r['seconds']:.0f} s", flush=True)
    if ratio_gb in sizes_gb:
        ratio = speeds[(ratio_gb, "jsonl", 2)] / speeds[(ratio_gb, "jsonl", 1)]
        print(f"\n{ratio_gb:g} GB JSON lines, 2 CPUs against 1: {ratio:.2f}x the rows/s (goal: at least 1.6)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=None, help="keeps corpora between runs when given")
    parser.add_argument("--codecs", action="store_true",
                        help="instead: the read pass's MB/s per core, jsonl vs gzip, bz2, zstd (bench/compressed.py)")
    parser.add_argument("--big", action="store_true", help="instead: one big file (see --big-gb, --zst-gb)")
    parser.add_argument("--big-gb", type=float, nargs="+", default=[0.25, 1, 4], help="JSON-lines files' GB")
    parser.add_argument("--ratio-gb", type=float, default=1, help="the JSON-lines file read on 1 CPU against 2")
    parser.add_argument("--zst-gb", type=float, default=1, help="GB (before compression) of the zstd file; 0: none")
    parser.add_argument("--cpu", action="store_true", help="--big: where each run's CPU went, by process")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="politune-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; work dir {workdir}")
    if args.codecs:
        codecs_bench(args.sizes[0] if args.sizes != parser.get_default("sizes") else 200_000, workdir)
        return
    if args.big:
        big_files(args.big_gb, args.ratio_gb, args.zst_gb, workdir, args.cpu)
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
