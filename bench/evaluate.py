"""Benchmark: answering a compass by forced choice (logprob) against free text (generate), on the same model.

    python bench/evaluate.py                    # the embedded tiny model
    python bench/evaluate.py --size small       # a 4.7M random Llama of the same family (see bench/serve.py)

In one run, on one local Ray (2 CPUs), through the run's own Serve app over HTTP on 127.0.0.1: the 62 Political
Compass propositions (../shared/data/pct; without it, the first 62 of the project's own instrument) answered
1. by logprob: one scored completion a proposition (four option prompts, echo, no decoding);
2. by generate: a free-text answer of up to 300 tokens, as the paper asked, then the judge's mapping of it.
The Serve app is started once and a warm-up evaluation runs first, so neither pass pays for start-up the other
does not. It prints the time of each pass, the ratio generate ÷ logprob (goal >= 10), the fixed cost of any pass
(a one-request ray.data.llm processor run), and the share of items on which both modes give the same option
(among the items both answered). The model has random weights: the times are what the two methods cost; the
agreement of a random model's answers means nothing, and its judge maps almost nothing.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import ray

from politune.config import TinyModelConfig, build_config
from politune.world.tiny import build_tiny_model

PCT = Path(__file__).resolve().parents[2] / "shared" / "data" / "pct" / "propositions.jsonl"
SIZES = {"tiny": {}, "small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024},
         "medium": {"hidden_size": 768, "num_layers": 6, "num_heads": 12, "intermediate_size": 3072}}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--max-tokens", type=int, default=300)
    args = parser.parse_args()

    from politune.engines.openai_http import post_all
    from politune.evaluate import evaluate_models
    from politune.evaluate.asking import Question, logprob_payload
    from politune.evaluate.endpoint import Target
    from politune.report import build_report
    from politune.serve.app import serving as serve_run
    from politune.serve.app import start_serving

    with tempfile.TemporaryDirectory(prefix="politune-bench-") as tmp:
        root = Path(tmp)
        tiny = build_tiny_model(TinyModelConfig(**SIZES[args.size]), root / "model")
        instrument = "pct" if PCT.is_file() else "politune"
        cfg = build_config({
            "run_id": "bench", "storage_root": str(root / "runs"), "tiny_model": {"out": str(tiny)},
            "ray": {"num_cpus": 2}, "serve": {"port": free_port(), "max_batch_size": 16},
            "evaluate": {"instruments": [instrument], "pct_path": str(PCT) if PCT.is_file() else None,
                         "modes": ["logprob", "generate"], "phrasings": 1, "max_tokens": args.max_tokens,
                         "probes": False, "checkpoints": "final", "bootstrap": 100}})
        if instrument == "politune":
            print("../shared/data/pct not found: the project's own instrument (64 items) stands in")
        serving = start_serving(cfg)  # evaluate finds it up and reuses it
        evaluate_models(cfg.model_copy(update={"evaluate": cfg.evaluate.model_copy(
            update={"modes": ["logprob"], "max_tokens": 4})}))  # warm-up: workers import what the passes need
        start = time.perf_counter()
        one = Question(Target(cfg.serve.served_id, "base", serving.base_url, "POLITUNE_API_KEY"), "politune", "x",
                       "Taxes should be lower.", 0, 0, "logprob")
        post_all(serving.base_url, "/completions", {"one": logprob_payload([one])}, api_key_env="POLITUNE_API_KEY",
                 batch_size=1, concurrency=cfg.evaluate.concurrency, qps=None, max_retries=0, num_cpus=0.25)
        fixed = time.perf_counter() - start
        result = evaluate_models(cfg, serve_run=serve_run)
        answers = build_report(cfg.run_uri).scores
        s = result.seconds
        free_text = s["generate"] + s["judge"]
        agreement = [a for a in answers.agreement if a.instrument == instrument]
        n_items = answers.position("tiny", instrument, "logprob").asked
        mapped = answers.position("tiny", instrument, "generate").answered
        print(f"{n_items} propositions on the {args.size} model, max_tokens {args.max_tokens} for free text")
        print(f"{'pass':<22}{'seconds':>9}")
        print(f"{'logprob':<22}{s['logprob']:>9.1f}")
        print(f"{'generate':<22}{s['generate']:>9.1f}")
        print(f"{'judge (maps the text)':<22}{s['judge']:>9.1f}")
        print(f"{'(fixed cost of a pass)':<22}{fixed:>9.1f}")
        print(f"generate ÷ logprob: {s['generate'] / s['logprob']:.1f}x (answers alone), "
              f"{free_text / s['logprob']:.1f}x (with the judge); goal >= 10x")
        print(f"net of the fixed cost: {(s['generate'] - fixed) / (s['logprob'] - fixed):.1f}x (answers alone)")
        for a in agreement:
            shown = f"{a.agreement:.2f}" if a.agreement is not None else "n/a"
            print(f"same option in both modes: {shown} of the {a.items} items both answered "
                  f"(the judge mapped {mapped} free-text answers of {n_items})")
    ray.shutdown()


if __name__ == "__main__":
    main()
