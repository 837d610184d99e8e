"""Benchmark: the hf engines and LoRA-DPO on one GPU, against the GPU's own measured matmul rate.

    python bench/gpu.py                               # one GPU: a Llama-3-8B shape, bf16 (about 8 minutes)
    python bench/gpu.py --device cpu --size tiny      # this machine: the same code on the tiny model (a minute)

In one run:
1. the ceiling: a square matmul in the run's dtype, timed (TFLOP/s), what every share below is of;
2. a model of the size's shape with random weights, built on the device and saved (the 8B shape: 4096 wide,
   32 layers, GQA 8, a 128,256 vocabulary; the tiny tokenizer, since no weights or tokenizers reach the GPU
   machine);
3. the hf annotator (annotate's logprob mode, `HFAnnotator`): posts/s, and 2 x parameters FLOPs a prompt token as
   a share of the ceiling;
4. the synthesize hf writer (`HFPairWriter`): pairs/s;
5. LoRA-DPO on the paper's recipe (LoRA r16 alpha32 on q, v and the MLP, max_length 1024, an effective batch of 64
   pairs) through plain TRL (the trainer a Ray worker builds, in this process) and through Ray Train (1 worker):
   tokens/s (TRL's own count over its train_runtime), 6 x parameters FLOPs a token as a share of the ceiling,
   peak memory, and Ray Train / plain TRL;
6. with --serve, the Serve hf app on the same model (bf16 on the GPU, one replica of one GPU, two random LoRA
   adapters): bench/serve.py's concurrency sweep, forced-choice scoring and 64-token generations, one adapter and a
   mix of three, requests/s, tokens/s and p50/p99 latency from 1 to 64 open requests;
7. with --sweep, the training levers (LEVERS: Liger's kernels and flash-attention against sdpa, larger per-device
   batches at the same effective batch, activation checkpointing) in short plain-TRL runs, each as a share of the
   ceiling; with --profile, plain TRL under torch's profiler, its time summarised by kernel.

It prints a table and writes JSON (`--json`; on a GPU with the 8B shape, bench/results/gpu.json by default: what
`politune plan` reads its measured MFUs from). Not measured here: the vllm engines (vLLM cannot travel to the GPU
machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from politune.config import TinyModelConfig, build_config
from politune.models.loading import resolve_dtype
from politune.world.tiny import build_tiny_model

RESULTS = Path(__file__).resolve().parent / "results" / "gpu.json"
SHAPES = {  # LlamaConfig fields
    "8b": {"hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 8, "vocab_size": 128256, "max_position_embeddings": 8192, "rope_theta": 500000.0},
}
# per size: posts annotated and written, annotate batch, training steps, per-device batch x accumulation = 64 pairs
WORK = {"8b": {"posts": 1024, "pairs_posts": 64, "batch": 64, "steps": 6, "per_device": 4, "accumulation": 16,
               "sweep_steps": 3},
        "tiny": {"posts": 128, "pairs_posts": 16, "batch": 32, "steps": 2, "per_device": 8, "accumulation": 8,
                 "sweep_steps": 1}}
# --sweep: the training levers compared, each a plain-TRL run at the same effective batch; (name, per-device batch
# multiple, train-section changes). The recipe's own run (kernels auto) is the first row.
LEVERS = [("recipe (kernels auto)", 1, {}),
          ("no GPU kernels (sdpa, no Liger)", 1, {"liger_kernels": False, "attn_implementation": "sdpa"}),
          ("2 x per-device batch", 2, {}),
          ("4 x per-device batch", 4, {}),
          ("4 x per-device batch, checkpointing", 4, {"gradient_checkpointing": True})]


def matmul_ceiling(device: str, dtype: torch.dtype) -> float:
    """TFLOP/s of a square matmul in `dtype` on `device`: the rate every share here is of."""
    n = 8192 if device.startswith("cuda") else 1024
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    sync(device)
    runs, start = 10, time.perf_counter()
    for _ in range(runs):
        a @ b
    sync(device)
    return 2 * n**3 * runs / (time.perf_counter() - start) / 1e12


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def peak_memory_gb(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 1e9 if device.startswith("cuda") else None


def build_model(size: str, device: str, dtype: torch.dtype, folder: Path) -> tuple[Path, float]:
    """A model of the size's shape with random weights, saved with the tiny tokenizer; (folder, parameters)."""
    tiny = build_tiny_model(TinyModelConfig(), folder / "tiny")
    if size == "tiny":
        from transformers import AutoModelForCausalLM

        return tiny, float(sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny).parameters()))
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(**SHAPES[size], bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    out = folder / size
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    params = float(sum(p.numel() for p in model.parameters()))
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return out, params


def posts(n: int) -> list[str]:
    from politune.corpus.generate import sample_texts

    return sample_texts(n, seed=3)


def bench_annotator(model: Path, device: str, dtype: str, texts: list[str], batch: int) -> dict[str, Any]:
    from politune.contracts.annotator.hf_engine import HFAnnotator

    annotator = HFAnnotator(str(model), "bench", "logprob", "bench", device=device, dtype=dtype)
    annotator({"doc_id": np.array(["w"]), "text": np.array(texts[:1])})  # warm-up
    tokens = 0
    start = time.perf_counter()
    for i in range(0, len(texts), batch):
        chunk = texts[i:i + batch]
        rows = annotator({"doc_id": np.array([str(k) for k in range(len(chunk))]), "text": np.array(chunk)})
        assert set(rows["status"]) == {"ok"}, rows["raw_output"][:1]
    sync(device)
    seconds = time.perf_counter() - start
    from politune.contracts.annotator.prompts import SCALES, scale_messages

    for text in texts:  # prompt tokens as the annotator reads them: three scales a post
        for scale in SCALES:
            tokens += len(annotator.tokenizer.apply_chat_template(scale_messages(text, scale), tokenize=True,
                                                                  add_generation_prompt=True))
    del annotator
    return {"posts": len(texts), "seconds": seconds, "posts_per_s": len(texts) / seconds, "prompt_tokens": tokens}


def bench_writer(model: Path, device: str, dtype: str, texts: list[str]) -> dict[str, Any]:
    import pyarrow as pa

    from politune.synthesize.hf_writer import HFPairWriter

    writer = HFPairWriter(str(model), chosen_from="post", max_new_tokens=32, max_prompt_tokens=512, device=device,
                          dtype=dtype, run_id="bench")
    batch = pa.table({"doc_id": [str(i) for i in range(len(texts))], "side": ["left"] * len(texts), "text": texts})
    start = time.perf_counter()
    out = writer(batch)
    sync(device)
    seconds = time.perf_counter() - start
    del writer
    return {"pairs": out.num_rows, "seconds": seconds, "pairs_per_s": out.num_rows / seconds}


def train_config(workdir: Path, model: Path, size: str, device: str) -> dict[str, Any]:
    from politune.corpus.generate import labelled_pairs
    from politune.synthesize.formats import write_pairs

    w = WORK[size]
    files = {}
    for side, rows in labelled_pairs(max(160, 4 * w["per_device"] * w["accumulation"]), seed=11).items():
        files[side] = [str(workdir / f"{side}.jsonl")]
        write_pairs(rows, files[side][0])
    use_gpu = device.startswith("cuda")
    return {"run_id": "bench-gpu", "storage_root": str(workdir / "runs"), "tiny_model": {"out": str(model)},
            "ray": {"num_cpus": os.cpu_count() if use_gpu else 2}, "dtype": "auto",
            "synthesize": {"source": "released", "released": files, "eval_share": 0.05},
            "train": {"base_model": str(model), "use_gpu": use_gpu, "num_workers": 1, "max_steps": w["steps"],
                      "per_device_batch_size": w["per_device"], "gradient_accumulation_steps": w["accumulation"],
                      "max_length": 1024, "warmup_steps": 0, "logging_steps": 1, "save_steps": 1000,
                      "lora": {"rank": 16, "alpha": 32}, "cpus_per_worker": 1 if not use_gpu else 4}}


def bench_plain_trl(raw: dict[str, Any], workdir: Path, device: str, profile: bool = False) -> dict[str, Any]:
    """One plain-TRL run of the trainer a Ray worker builds; with `profile`, under torch's profiler, and the
    time summarised by kernel (`profile_summary`)."""
    from politune.train.worker import build_trainer, gpu_kernels

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    cfg = build_config(raw)
    trainer, _, _ = build_trainer(cfg, "left", str(workdir / "plain"), [])
    if profile:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if device.startswith("cuda"):
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        with torch.profiler.profile(activities=activities) as profiler:
            output = trainer.train()
    else:
        output = trainer.train()
    tokens = max(e["num_tokens"] for e in trainer.state.log_history if "num_tokens" in e)
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    attention, liger = gpu_kernels(cfg.train)
    result = {"tokens": tokens, "train_runtime": output.metrics["train_runtime"], "steps": trainer.state.global_step,
              "losses": losses, "peak_memory_gb": peak_memory_gb(device), "attn_implementation": attention,
              "liger_kernels": liger, "per_device_batch_size": cfg.train.per_device_batch_size,
              "gradient_accumulation_steps": cfg.train.gradient_accumulation_steps}
    if profile:
        result["profile"] = profile_summary(profiler, device)
    del trainer
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def profile_summary(profiler: Any, device: str, top: int = 15) -> dict[str, Any]:
    """Where a profiled run's time went: the kernels (on a GPU; CPU ops on a CPU) that took the most self time,
    each with its share of all of it, and the share of the matrix multiplications (gemm) among them."""
    on_gpu = device.startswith("cuda")
    events = [e for e in profiler.key_averages()
              if (e.device_type == torch.autograd.DeviceType.CUDA) == on_gpu or not on_gpu]
    self_us = (lambda e: e.self_device_time_total) if on_gpu else (lambda e: e.self_cpu_time_total)
    total = sum(self_us(e) for e in events) or 1
    ranked = sorted(events, key=self_us, reverse=True)
    return {"measured": "device kernels" if on_gpu else "CPU operators", "total_s": total / 1e6,
            "matmul_share": sum(self_us(e) for e in events if MATMUL_KERNEL.search(e.key)) / total,
            "top": [{"name": e.key[:120], "self_s": self_us(e) / 1e6, "share": self_us(e) / total, "calls": e.count}
                    for e in ranked[:top]]}


# cuBLAS/cuBLASLt kernel names (gemm, nvjet, xmma, cutlass) and torch's matmul operators on a CPU
MATMUL_KERNEL = re.compile(r"gemm|nvjet|xmma|cutlass|aten::(?:mm|addmm_?|bmm|baddbmm)$", re.IGNORECASE)


def sweep_levers(raw: dict[str, Any], workdir: Path, device: str, size: str) -> list[dict[str, Any]]:
    """LEVERS, each a plain-TRL run of the size's sweep_steps at the recipe's effective batch; a lever that runs out
    of GPU memory is recorded as such."""
    w, rows = WORK[size], []
    for name, multiple, changes in LEVERS:
        per_device = w["per_device"] * multiple
        lever = {**raw, "train": {**raw["train"], **changes, "max_steps": w["sweep_steps"],
                                  "per_device_batch_size": per_device,
                                  "gradient_accumulation_steps": max(1, w["per_device"] * w["accumulation"]
                                                                     // per_device)}}
        try:
            rows.append({"lever": name, **bench_plain_trl(lever, workdir, device)})
        except torch.OutOfMemoryError as err:
            rows.append({"lever": name, "error": f"out of GPU memory: {str(err).splitlines()[0]}"})
            torch.cuda.empty_cache()
    return rows


def bench_ray_train(raw: dict[str, Any]) -> dict[str, Any]:
    from politune.train import train_adapter

    start = time.perf_counter()
    result = train_adapter(build_config(raw), "left")
    log = [json.loads(line) for line in (Path(result.adapter.path) / "log_history.jsonl").read_text().splitlines()]
    return {"tokens": max(e["num_tokens"] for e in log if "num_tokens" in e),
            "train_runtime": result.metrics["train_runtime"], "steps": result.metrics["global_step"],
            "losses": [e["loss"] for e in log if "loss" in e], "wall": time.perf_counter() - start}


def bench_serve(model: Path, workdir: Path, device: str, dtype: str, concurrencies: list[int]) -> dict[str, Any]:
    """bench/serve.py's sweep against the hf Serve app on this model: one replica (a GPU on cuda), two adapters."""
    import sys

    from ray import serve

    from politune.models.random_adapters import register_random_adapters
    from politune.serve.app import start_serving

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve import print_sweep, sweep  # bench/serve.py

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    on_gpu = device.startswith("cuda")
    cfg = build_config({"run_id": "bench-serve", "storage_root": str(workdir / "runs"), "dtype": dtype,
                        "serve": {"base_model": str(model), "model_id": "bench", "port": port, "max_tokens": 64,
                                  "gpus_per_replica": 1 if on_gpu else 0}})
    register_random_adapters(cfg.run_uri, model, ["left", "right"], base_model=str(model))
    serving = start_serving(cfg)
    try:
        rows = sweep(f"{serving.base_url}/completions", {"one adapter": ["bench:left"],
                                                         "mix of three": ["bench:left", "bench:right", "bench"]},
                     tuple(concurrencies), scale=1.0 if on_gpu else 0.25)
    finally:  # Serve whole, its HTTP proxy too: one left bound to this port would take the next app's requests
        serve.shutdown()
    print_sweep(rows, f"Serve hf app on this model ({dtype}), one replica")
    return {"rows": rows}


def shares(run: dict[str, Any], params: float, ceiling: float) -> None:
    """A training run's tokens/s, its TFLOP/s at 6 x parameters FLOPs a token, and that as a share of the ceiling."""
    run["tokens_per_s"] = run["tokens"] / run["train_runtime"]
    run["tflops"] = 6 * params * run["tokens_per_s"] / 1e12
    run["share_of_ceiling"] = run["tflops"] / ceiling


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", choices=["8b", "tiny"], default="8b")
    parser.add_argument("--dtype", default="auto", help="the config's dtype: auto, float32, bfloat16, float16")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Train run")
    parser.add_argument("--sweep", action="store_true",
                        help="also compare the training levers (LEVERS: kernels, per-device batch, checkpointing) in "
                        "short plain-TRL runs (about 4 more minutes on the 8B shape)")
    parser.add_argument("--serve", action="store_true",
                        help="also sweep the Serve hf app on the model from 1 to 64 open requests (bench/serve.py)")
    parser.add_argument("--serve-concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32, 64])
    parser.add_argument("--profile", action="store_true",
                        help="run plain TRL under torch's profiler and summarise where its time went, by kernel")
    parser.add_argument("--json", type=Path, default=None,
                        help=f"where to write the figures (default on a GPU with --size 8b: {RESULTS})")
    args = parser.parse_args(argv)
    on_gpu = args.device.startswith("cuda")
    out_json = args.json or (RESULTS if on_gpu and args.size == "8b" else None)
    dtype = resolve_dtype(args.dtype, args.device)
    os.environ.pop("RAY_ADDRESS", None)
    w = WORK[args.size]
    figures: dict[str, Any] = {
        "date": date.today().isoformat(), "device": torch.cuda.get_device_name() if on_gpu else platform.processor()
        or platform.machine(), "size": args.size, "dtype": str(dtype).removeprefix("torch."),
        "versions": {"torch": torch.__version__, **_versions("transformers", "trl", "peft", "ray")}}
    figures["ceiling_tflops"] = matmul_ceiling(args.device, dtype)
    with tempfile.TemporaryDirectory(prefix="politune-bench-gpu-") as tmp:
        workdir = Path(tmp)
        start = time.perf_counter()
        model, params = build_model(args.size, args.device, dtype, workdir)
        figures.update(parameters=params, build_seconds=time.perf_counter() - start)
        texts = posts(w["posts"])
        annotate = bench_annotator(model, args.device, args.dtype, texts, w["batch"])
        annotate["tflops"] = 2 * params * annotate["prompt_tokens"] / annotate["seconds"] / 1e12
        annotate["share_of_ceiling"] = annotate["tflops"] / figures["ceiling_tflops"]
        figures["annotate"] = annotate
        figures["synthesize"] = bench_writer(model, args.device, args.dtype, texts[:w["pairs_posts"]])
        if args.serve:
            figures["serve"] = bench_serve(model, workdir, args.device, args.dtype, args.serve_concurrency)
        raw = train_config(workdir, model, args.size, args.device)
        from politune.synthesize import synthesize_preferences

        synthesize_preferences(build_config(raw))
        runs: dict[str, Any] = {"plain_trl": bench_plain_trl(raw, workdir, args.device, profile=args.profile)}
        if not args.no_ray:
            runs["ray_train"] = bench_ray_train(raw)
        for run in runs.values():
            shares(run, params, figures["ceiling_tflops"])
        if "ray_train" in runs:
            runs["ray_over_plain"] = runs["ray_train"]["tokens_per_s"] / runs["plain_trl"]["tokens_per_s"]
        if args.sweep:
            runs["levers"] = sweep_levers(raw, workdir, args.device, args.size)
            for run in runs["levers"]:
                if "error" not in run:
                    shares(run, params, figures["ceiling_tflops"])
        figures["train"] = runs
    print_table(figures)
    if out_json:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        out_json.write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")
        print(f"\nwritten: {out_json}")
    return figures


def _versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


def print_table(f: dict[str, Any]) -> None:
    a, s, t = f["annotate"], f["synthesize"], f["train"]
    print(f"\n{f['size']} shape ({f['parameters'] / 1e9:.3g}B parameters, random weights) in {f['dtype']} on "
          f"{f['device']}; matmul ceiling {f['ceiling_tflops']:.3g} TFLOP/s; model built in {f['build_seconds']:.0f} s")
    print(f"{'what':<34} {'rate':>16} {'TFLOP/s':>9} {'of ceiling':>11} {'peak GB':>8}")
    print(f"{'hf annotator (logprob)':<34} {a['posts_per_s']:>10.1f} post/s {a['tflops']:>9.3g} "
          f"{a['share_of_ceiling']:>11.1%} {'':>8}")
    print(f"{'synthesize hf writer':<34} {s['pairs_per_s']:>9.2f} pairs/s {'':>9} {'':>11} {'':>8}")
    for key, name in (("plain_trl", "LoRA-DPO, plain TRL"), ("ray_train", "LoRA-DPO, Ray Train (1 worker)")):
        if key in t:
            r = t[key]
            peak = f"{r['peak_memory_gb']:.1f}" if r.get("peak_memory_gb") else ""
            print(f"{name:<34} {r['tokens_per_s']:>8,.0f} tokens/s {r['tflops']:>9.3g} {r['share_of_ceiling']:>11.1%} "
                  f"{peak:>8}")
    if "ray_over_plain" in t:
        print(f"\nRay Train / plain TRL: {t['ray_over_plain']:.2f}")
    print("training loss, plain TRL:", " ".join(f"{x:.3f}" for x in t["plain_trl"]["losses"]))
    if "levers" in t:
        print(f"\n{'lever (plain TRL, same effective batch)':<40} {'batch x acc':>11} {'tokens/s':>10} "
              f"{'of ceiling':>11} {'peak GB':>8}")
        for r in t["levers"]:
            if "error" in r:
                print(f"{r['lever']:<40} {r['error']}")
                continue
            peak = f"{r['peak_memory_gb']:.1f}" if r.get("peak_memory_gb") else ""
            batch = f"{r['per_device_batch_size']} x {r['gradient_accumulation_steps']}"
            print(f"{r['lever']:<40} {batch:>11} {r['tokens_per_s']:>10,.0f} {r['share_of_ceiling']:>11.1%} {peak:>8}")
    if "profile" in t["plain_trl"]:
        p = t["plain_trl"]["profile"]
        print(f"\nwhere plain TRL's time went ({p['measured']}, {p['total_s']:.1f} s; "
              f"matmuls {p['matmul_share']:.0%}):")
        for k in p["top"]:
            print(f"  {k['share']:>6.1%} {k['self_s']:>8.2f} s {k['calls']:>7} calls  {k['name']}")


if __name__ == "__main__":
    main()
