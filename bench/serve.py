"""Benchmark: the hf Serve back end under load, and serving LoRA adapters against a model with one merged in.

    python bench/serve.py --sweep               # the tiny model: 1 to 64 open requests, scoring and generation
    python bench/serve.py                       # adapters vs merged: a 6-layer, 768-wide random Llama (43M)
    python bench/serve.py --size small          # 4 layers, 256 wide (4.7M): LoRA's fixed costs dominate

--sweep: one app with the serve section's defaults (one replica, 1 CPU, max_batch_size 32) on a local Ray of 2 CPUs,
over HTTP on 127.0.0.1. At each concurrency (1, 4, 8, 16, 32, 64 requests open at once, each client sending its
next as soon as the last is answered), two kinds of request: evaluate's forced-choice scoring (one /completions
request of 4 prompts, echo, max_tokens 0, logprobs 0) and a 64-token greedy generation; sent to one adapter, and
to a mix of three (two adapters and the base). It prints requests/s, tokens/s (prompt tokens scored, or tokens
generated), p50 and p99 latency and any request that failed, for `serve.max_ongoing_requests` at its default and,
side by side in the same run, at the old default of 16 (`--ongoing`).

Adapters vs merged (the default mode):

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
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from politune.config import ServeConfig, TinyModelConfig, build_config
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


SWEEP = (1, 4, 8, 16, 32, 64)
KINDS = ("score", "generate")
QUESTION = "Proposition: the rich should pay more in taxes. Do you agree or disagree?\nAnswer:"


def sweep_body(kind: str, model: str, i: int, tokens: int = 64) -> dict:
    """Request i of a kind: evaluate's forced choice (4 options scored in one request), or a greedy generation."""
    if kind == "score":
        return {"model": model, "prompt": [f"{QUESTION} ({i}) {option}" for option in
                                           ("Strongly disagree", "Disagree", "Agree", "Strongly agree")],
                "max_tokens": 0, "echo": True, "logprobs": 0}
    return {"model": model, "prompt": f"{QUESTION} ({i})", "max_tokens": tokens, "temperature": 0, "stop": []}


def measure(url: str, models: list[str], kind: str, concurrency: int, requests: int, tokens: int = 64,
            api_key: str | None = None) -> dict:
    """`requests` of a kind, `concurrency` open at once, cycling through `models`: requests/s, tokens/s
    (prompt tokens scored, or tokens generated), p50/p99 latency, and failures by HTTP status."""
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}

    def one(i: int) -> tuple[int, float, int]:
        body = sweep_body(kind, models[i % len(models)], i, tokens)
        start = time.perf_counter()
        request = urllib.request.Request(url, data=json.dumps(body).encode(), headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=600) as response:
                usage = json.loads(response.read())["usage"]
            done = usage["prompt_tokens"] if kind == "score" else usage["completion_tokens"]
            return 200, time.perf_counter() - start, done
        except urllib.error.HTTPError as err:
            err.read()
            return err.code, time.perf_counter() - start, 0

    for i in range(min(2, requests)):  # warm: adapters loaded before timing
        one(i)
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(one, range(requests)))
    seconds = time.perf_counter() - start
    ok = sorted(latency for status, latency, _ in results if status == 200)
    failed: dict[str, int] = {}
    for status, _, _ in results:
        if status != 200:
            failed[str(status)] = failed.get(str(status), 0) + 1

    def pct(q: int) -> float:
        return statistics.quantiles(ok, n=100, method="inclusive")[q - 1] * 1000 if len(ok) > 1 else float("nan")

    return {"kind": kind, "models": models, "concurrency": concurrency, "requests": requests, "ok": len(ok),
            "failed": failed, "seconds": seconds, "req_per_s": len(ok) / seconds,
            "tokens_per_s": sum(done for *_, done in results) / seconds, "p50_ms": pct(50), "p99_ms": pct(99)}


def sweep(url: str, model_sets: dict[str, list[str]], concurrencies: tuple[int, ...] = SWEEP, tokens: int = 64,
          api_key: str | None = None, scale: float = 1.0) -> list[dict]:
    """Every kind x model set x concurrency; each cell sends enough requests to keep its clients busy a while."""
    rows = []
    for kind in KINDS:
        for name, models in model_sets.items():
            for c in concurrencies:
                n = max(8, int((max(48, 4 * c) if kind == "score" else max(16, 2 * c)) * scale))
                rows.append({"set": name, **measure(url, models, kind, c, n, tokens, api_key)})
    return rows


def print_sweep(rows: list[dict], label: str = "") -> None:
    print(f"\n{label}")
    print(f"{'kind':<9} {'models':<14} {'open':>5} {'req/s':>7} {'tok/s':>8} {'p50 ms':>8} {'p99 ms':>8}  failed")
    for r in rows:
        unit = "scored" if r["kind"] == "score" else "made"
        print(f"{r['kind']:<9} {r['set']:<14} {r['concurrency']:>5} {r['req_per_s']:>7.1f} {r['tokens_per_s']:>8.0f} "
              f"{r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f}  {r['failed'] or '-'}  ({unit})")
    for kind in KINDS:
        for name in dict.fromkeys(r["set"] for r in rows):
            at = {r["concurrency"]: r["req_per_s"] for r in rows if r["kind"] == kind and r["set"] == name}
            if 4 in at and 32 in at:
                print(f"{kind}, {name}: requests/s at 32 open / at 4: {at[32] / at[4]:.2f}")


def run_sweep(args: argparse.Namespace) -> None:
    import ray

    os.environ.update(RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0", RAY_AUTH_MODE="disabled")
    root = Path(tempfile.mkdtemp(prefix="politune-bench-serve-"))
    base = build_tiny_model(TinyModelConfig(**SIZES[args.size or "tiny"]), root / "base")
    run_uri = str(root / "runs" / "bench")
    register_random_adapters(run_uri, base, ["left", "right"])
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=str(root / "ray"),
             log_to_driver=False)
    from ray import serve

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    sets = {"one adapter": ["tiny:left"], "mix of three": ["tiny:left", "tiny:right", "tiny"]}
    results = {}
    for ongoing in args.ongoing:
        raw = {"run_id": "bench", "storage_root": str(root / "runs"), "tiny_model": {"out": str(base)},
               "serve": {"max_ongoing_requests": ongoing, "max_queued_requests": 256}}
        url = deploy(raw, port)
        results[ongoing] = sweep(url, sets, tuple(args.concurrency), args.tokens)
        serve.delete("politune")
    serve.shutdown()
    ray.shutdown()
    for ongoing, rows in results.items():
        defaults = ServeConfig()
        print_sweep(rows, f"serve.max_ongoing_requests {ongoing} (one replica, {defaults.cpus_per_replica:g} CPU, "
                          f"max_batch_size {defaults.max_batch_size}; {args.tokens}-token generations)")
    if args.json:
        args.json.write_text(json.dumps({str(k): v for k, v in results.items()}, indent=2) + "\n")


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
    parser.add_argument("--sweep", action="store_true", help="throughput and latency from 1 to 64 open requests")
    parser.add_argument("--ongoing", type=int, nargs="+", default=[ServeConfig().max_ongoing_requests, 16],
                        help="--sweep: serve.max_ongoing_requests values, each swept in turn")
    parser.add_argument("--json", type=Path, default=None, help="--sweep: write the rows here too")
    parser.add_argument("--size", choices=sorted(SIZES), default=None,
                        help="the random base model's shape (default: medium; tiny with --sweep)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None,
                        help=f"default: 1 8 32 ({' '.join(map(str, SWEEP))} with --sweep)")
    parser.add_argument("--requests", type=int, default=48, help="requests a measurement (x2 at concurrency > 1)")
    parser.add_argument("--tokens", type=int, default=None, help="tokens a generation (default 16; 64 with --sweep)")
    parser.add_argument("--cold", type=int, default=12, help="adapters for the first-request latency")
    args = parser.parse_args()
    if args.sweep:
        args.concurrency, args.tokens = args.concurrency or list(SWEEP), args.tokens or 64
        return run_sweep(args)
    args.size, args.concurrency, args.tokens = args.size or "medium", args.concurrency or [1, 8, 32], args.tokens or 16

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
