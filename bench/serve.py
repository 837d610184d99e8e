"""Benchmark: serving LoRA adapters against serving a model with the adapter merged into its weights (hf back end).

    python bench/serve.py                       # a 6-layer, 768-wide random Llama (43M); concurrency 1, 8, 32
    python bench/serve.py --size small          # 4 layers, 256 wide (4.7M): LoRA's fixed costs dominate
    python bench/serve.py --size tiny           # the embedded tiny model

In one run, on one local Ray (2 CPUs), over HTTP on 127.0.0.1, the same completions (16 greedy tokens of a short
prompt), each app deployed alone with one model replica:
1. merged: one model whose weights have the `left` adapter merged in (PEFT merge_and_unload), no adapters;
2. adapters, mixed batches: `base:left` and `base:right` interleaved, a batch running both in one forward pass
   (PEFT adapter_names); the default, `adapter_batching: mixed`;
3. adapters, per-adapter batches: the same requests, Serve splitting each batch by adapter
   (`adapter_batching: per_adapter`).
Requests/s at each concurrency, and the ratios 2 ÷ 1 (goal ≥ 0.8) and 2 ÷ 3. Then the latency of a first request
to an adapter the replica has not loaded (download from the run's storage, add to the model), p50 and p95 over
`--cold` adapters, beside a warm request's.

The base here has random weights: what is measured is the cost of serving, not what the model says.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from politune.config import TinyModelConfig, build_config
from politune.models.random_adapters import register_random_adapters
from politune.world.tiny import build_tiny_model

PROMPT = "What should the government do about taxes and healthcare?"
SIZES = {  # random Llamas of the tiny model's family (its tokenizer, vocabulary 1,024)
    "tiny": {},
    "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024},
    "medium": {"hidden_size": 768, "num_layers": 6, "num_heads": 12, "intermediate_size": 3072},
}


def post(url: str, body: dict) -> float:
    """One request; its latency in seconds (raises on any status but 200)."""
    start = time.perf_counter()
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        json.loads(response.read())
    return time.perf_counter() - start


def throughput(url: str, models: list[str], concurrency: int, requests: int, tokens: int) -> float:
    """Requests/s of `requests` completions, `concurrency` at a time, cycling through `models`."""
    bodies = [{"model": models[i % len(models)], "prompt": f"{PROMPT} ({i})", "max_tokens": tokens,
               "temperature": 0, "stop": []} for i in range(requests)]
    post(url, bodies[0])  # warm: the adapters are loaded and the first batch compiled before timing
    post(url, bodies[1 % len(bodies)])
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda b: post(url, b), bodies))
    return requests / (time.perf_counter() - start)


def deploy(raw: dict, port: int) -> str:
    """Deploy one app (replacing the last one) behind the one HTTP proxy of this run."""
    from ray import serve

    from politune.serve.app import APP_NAME, serve_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(serve_app(build_config(raw)), name=APP_NAME, route_prefix="/")
    return f"http://127.0.0.1:{port}/v1/completions"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="medium", help="the random base model's shape")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=48, help="requests a measurement (x2 at concurrency > 1)")
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--cold", type=int, default=12, help="adapters for the first-request latency")
    args = parser.parse_args()

    import ray

    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    root = Path(tempfile.mkdtemp(prefix="politune-bench-serve-"))
    base = build_tiny_model(TinyModelConfig(**SIZES[args.size]), root / "base")
    run_uri = str(root / "runs" / "bench")
    register_random_adapters(run_uri, base, ["left", "right"])
    merged = root / "merged"  # the left adapter folded into the weights: what serving it costs with no LoRA at all
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), f"{run_uri}/adapters/left"
                              ).merge_and_unload().save_pretrained(merged)
    AutoTokenizer.from_pretrained(base).save_pretrained(merged)
    params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(base).parameters())

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(root / "ray"),
             log_to_driver=False)
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    common = {"run_id": "bench", "storage_root": str(root / "runs"), "tiny_model": {"out": str(base)},
              "serve": {"max_batch_size": 32, "max_ongoing_requests": 64, "max_queued_requests": 256,
                        "cpus_per_replica": 2, "max_tokens": 64}}
    apps = {
        "merged": ({**common, "serve": {**common["serve"], "base_model": str(merged), "model_id": "merged"}},
                   ["merged"]),
        "mixed": ({**common, "serve": {**common["serve"], "adapter_batching": "mixed"}}, ["tiny:left", "tiny:right"]),
        "per_adapter": ({**common, "serve": {**common["serve"], "adapter_batching": "per_adapter"}},
                        ["tiny:left", "tiny:right"]),
    }
    rates: dict[str, dict[int, float]] = {}
    for name, (raw, models) in apps.items():
        url = deploy(raw, port)
        rates[name] = {c: throughput(url, models, c, args.requests * (2 if c > 1 else 1), args.tokens)
                       for c in args.concurrency}
        serve.delete("politune")

    # first request to an adapter the replica has not loaded, against a warm one
    register_random_adapters(run_uri, base, [f"cold{i}" for i in range(args.cold)], seed=500)
    url = deploy({**common, "serve": {**common["serve"], "max_adapters_per_replica": 4}}, port)
    post(url, {"model": "tiny:left", "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0})
    cold = [post(url, {"model": f"tiny:cold{i}", "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0})
            for i in range(args.cold)]
    warm = [post(url, {"model": "tiny:left", "prompt": PROMPT, "max_tokens": args.tokens, "temperature": 0})
            for _ in range(args.cold)]
    serve.shutdown()
    ray.shutdown()

    print(f"\nbase: random Llama, {params:,} parameters; adapters LoRA rank 8 on q,v,gate,up,down; "
          f"{args.tokens} greedy tokens a request; one replica, 2 CPUs")
    print(f"{'concurrency':>11} {'merged req/s':>13} {'mixed req/s':>12} {'per-adapter':>12} "
          f"{'mixed÷merged':>13} {'mixed÷per-adapter':>18}")
    for c in args.concurrency:
        m, x, p = rates["merged"][c], rates["mixed"][c], rates["per_adapter"][c]
        print(f"{c:>11} {m:>13.1f} {x:>12.1f} {p:>12.1f} {x / m:>13.2f} {x / p:>18.2f}")
    print("goal: two adapters interleaved ÷ one merged model ≥ 0.8 at every concurrency")

    def pct(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000

    print(f"first request to an unloaded adapter ({args.cold} adapters, 4 held a replica): "
          f"p50 {pct(cold, 50):.0f} ms, p95 {pct(cold, 95):.0f} ms; a loaded adapter: p50 {pct(warm, 50):.0f} ms, "
          f"p95 {pct(warm, 95):.0f} ms")


if __name__ == "__main__":
    main()
