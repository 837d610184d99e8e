"""Benchmark: LoRA-DPO under Ray Train against plain TRL, on the tiny model and the same pairs (CPU).

    python bench/train.py                      # 480 pairs a side, 2 epochs
    python bench/train.py --pairs 960 --epochs 1

In one run, on the same preference pairs and config:
1. plain TRL: the DPOTrainer that a Ray worker builds (politune.train.worker.build_trainer), run in this
   process with one torch thread and no Ray;
2. Ray Train with 1 worker (1 CPU, so one thread);
3. Ray Train with 2 workers (1 CPU each, gloo DDP; each worker takes half the batches).

Tokens/s = the tokens TRL counted (`num_tokens`, prompt + both answers, summed over workers) ÷ the
trainer's own train_runtime (the training loop: no Ray start-up, no model load). Each run's wall time
with its start-up is printed too. Goals: 1 worker ÷ plain ≥ 0.9; 2 workers above 1 worker.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from politune.config import TinyModelConfig, build_config
from politune.corpus.generate import labelled_pairs
from politune.synthesize import synthesize_preferences
from politune.synthesize.formats import write_pairs
from politune.train import train_adapter
from politune.train.worker import build_trainer
from politune.world.tiny import build_tiny_model

TRAIN = {"lora": {"rank": 8, "alpha": 16}, "learning_rate": 0.005, "warmup_steps": 0, "per_device_batch_size": 8,
         "gradient_accumulation_steps": 1, "max_length": 128, "logging_steps": 5, "save_steps": 1000,
         "cpus_per_worker": 1}


def run_config(workdir: Path, model: Path, pairs: int, epochs: float) -> dict:
    files = {}
    for side, rows in labelled_pairs(pairs, seed=11).items():
        files[side] = [str(workdir / f"{side}.jsonl")]
        write_pairs(rows, files[side][0])
    return {"run_id": "bench", "storage_root": str(workdir / "runs"), "tiny_model": {"out": str(model)},
            "ray": {"num_cpus": 2}, "synthesize": {"source": "released", "released": files, "eval_share": 0.05},
            "train": {**TRAIN, "num_epochs": epochs}}


def plain_trl(raw: dict, workdir: Path) -> dict:
    torch.set_num_threads(1)
    start = time.perf_counter()
    trainer, _, _ = build_trainer(build_config(raw), "left", str(workdir / "plain"), [])
    output = trainer.train()
    tokens = max(e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e)
    return {"tokens": tokens, "train_runtime": output.metrics["train_runtime"],
            "wall": time.perf_counter() - start, "steps": trainer.state.global_step}


def ray_train(raw: dict, workers: int) -> dict:
    raw = {**raw, "run_id": f"bench-{workers}w", "train": {**raw["train"], "num_workers": workers}}
    cfg = build_config(raw)
    synthesize_preferences(cfg)
    start = time.perf_counter()
    result = train_adapter(cfg, "left")
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (Path(result.adapter.path) / "log_history.jsonl").read_text().splitlines()]
    tokens = max(e["num_tokens"] for e in log if "num_tokens" in e)
    return {"tokens": tokens, "train_runtime": result.metrics["train_runtime"], "wall": wall,
            "steps": result.metrics["global_step"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=480, help="pairs a side (5% held out)")
    parser.add_argument("--epochs", type=float, default=2)
    args = parser.parse_args()
    os.environ.pop("RAY_ADDRESS", None)
    with tempfile.TemporaryDirectory(prefix="politune-bench-train-") as tmp:
        workdir = Path(tmp)
        model = build_tiny_model(TinyModelConfig(), workdir / "tiny")
        raw = run_config(workdir, model, args.pairs, args.epochs)
        synthesize_preferences(build_config(raw))
        runs = {"plain TRL, 1 thread": plain_trl(raw, workdir)}
        runs["Ray Train, 1 worker"] = ray_train(raw, 1)
        runs["Ray Train, 2 workers"] = ray_train(raw, 2)

    rate = {name: r["tokens"] / r["train_runtime"] for name, r in runs.items()}
    print(f"\nLoRA-DPO on the tiny model, {args.pairs} pairs, {args.epochs:g} epochs, batch 8 a worker")
    print(f"{'run':<24} {'steps':>6} {'tokens':>9} {'train s':>8} {'tokens/s':>9} {'wall s':>7}")
    for name, r in runs.items():
        print(f"{name:<24} {r['steps']:>6} {r['tokens']:>9,.0f} {r['train_runtime']:>8.1f} {rate[name]:>9,.0f} "
              f"{r['wall']:>7.1f}")
    one, two, plain = rate["Ray Train, 1 worker"], rate["Ray Train, 2 workers"], rate["plain TRL, 1 thread"]
    print(f"\nRay Train 1 worker ÷ plain TRL:  {one / plain:.2f}   (goal ≥ 0.9)")
    print(f"Ray Train 2 workers ÷ 1 worker:  {two / one:.2f}   (goal > 1)")


if __name__ == "__main__":
    main()
