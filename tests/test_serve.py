"""The hf Serve back end over real HTTP on 127.0.0.1: one app on the session's local Ray, the tiny model and two
adapters read from a run on the moto S3 server.

The adapters are real PEFT LoRA adapters with random weights (politune.models.random_adapters), not trained
ones: serving only needs them to differ from the base, and training has its own tests."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from conftest import SERVE_TOKEN, SERVE_TOKEN_ENV, free_port
from dashboard_check import dashboard_queries, series, unmatched

from politune.config import TinyModelConfig, build_config
from politune.models.random_adapters import register_random_adapters
from politune.world.tiny import build_tiny_model

pytestmark = pytest.mark.integration
LIMITS = {"max_prompt_tokens": 160, "max_tokens": 1000, "max_n": 2, "max_batch_size": 8, "max_ongoing_requests": 4,
          "max_queued_requests": 8, "max_adapters_per_replica": 2}


@pytest.fixture(scope="module")
def server(ray_local, s3_bucket: str, tmp_path_factory) -> dict:
    from ray import serve

    from politune.serve.app import start_serving

    root = tmp_path_factory.mktemp("serve")
    tiny = build_tiny_model(TinyModelConfig(), root / "tiny")
    raw = {"run_id": "served", "storage_root": f"s3://{s3_bucket}/serve-runs", "tiny_model": {"out": str(tiny)},
           "serve": {**LIMITS, "port": free_port(), "api_key_env": SERVE_TOKEN_ENV}}
    cfg = build_config(raw)
    register_random_adapters(cfg.run_uri, tiny, ["left", "right"])
    serving = start_serving(cfg)
    yield {"url": serving.base_url, "ids": serving.model_ids, "cfg": cfg, "tiny": tiny}
    serve.shutdown()


def call(url: str, body: dict | bytes | None = None, token: str | None = SERVE_TOKEN, method: str | None = None,
         timeout: float = 120) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        text = err.read()
        return err.code, json.loads(text) if text.startswith(b"{") else {"text": text.decode()}


def client(server: dict) -> openai.OpenAI:
    return openai.OpenAI(base_url=server["url"], api_key=SERVE_TOKEN, max_retries=0)


def test_models_lists_the_base_and_every_registered_adapter(server: dict) -> None:
    assert server["ids"] == ["tiny", "tiny:left", "tiny:right"]
    status, body = call(f"{server['url']}/models")
    assert status == 200 and body["object"] == "list"
    by_id = {m["id"]: m for m in body["data"]}
    assert sorted(by_id) == server["ids"]
    assert by_id["tiny:left"]["metadata"] | {"metrics": None} == {
        "adapter": "left", "side": "left", "method": "dpo", "base_model": "tiny", "metrics": None}
    assert by_id["tiny:right"]["metadata"]["metrics"] == {"random_init": True}  # the registry's metrics
    assert [m.id for m in client(server).models.list()] == server["ids"]


def test_base_and_adapters_answer_with_different_logprobs(server: dict) -> None:
    scored = {}
    for model in server["ids"]:
        status, body = call(f"{server['url']}/completions", {
            "model": model, "prompt": "The government should cut taxes", "max_tokens": 3, "temperature": 0,
            "logprobs": 2, "echo": True})
        assert status == 200, body
        [choice] = body["choices"]
        lp = choice["logprobs"]
        assert choice["text"].startswith("The government should cut taxes")
        assert len(lp["tokens"]) == len(lp["token_logprobs"]) == body["usage"]["prompt_tokens"] + 3
        assert lp["token_logprobs"][0] is None and all(v < 0 for v in lp["token_logprobs"][1:])
        assert all(len(top) == 2 for top in lp["top_logprobs"][1:])
        assert body["model"] == model and body["usage"]["completion_tokens"] == 3
        scored[model] = lp["token_logprobs"][1:body["usage"]["prompt_tokens"]]  # the prompt's own tokens
    # the same prompt's tokens, scored by three different models
    assert scored["tiny"] != scored["tiny:left"] != scored["tiny:right"] != scored["tiny"]


def test_a_batch_mixing_adapters_gives_each_row_its_own_adapter(server: dict) -> None:
    """Concurrent requests for the three models are batched together; each must equal its lone answer."""
    body = {"prompt": "Healthcare for everyone", "max_tokens": 0, "echo": True, "logprobs": 0}
    alone = {m: call(f"{server['url']}/completions", {**body, "model": m})[1] for m in server["ids"]}

    def answered(model: str) -> tuple[str, int, dict]:
        """As a client honouring Retry-After: a 503 (the replica's queue full on a loaded machine) is asked again."""
        for _ in range(10):
            status, answer = call(f"{server['url']}/completions", {**body, "model": model})
            if status != 503:
                break
            time.sleep(1)
        return model, status, answer

    with ThreadPoolExecutor(12) as pool:
        together = list(pool.map(answered, server["ids"] * 4))
    for model, status, answer in together:
        assert status == 200, (model, status, answer)
        assert answer["choices"][0]["logprobs"]["token_logprobs"] == pytest.approx(
            alone[model]["choices"][0]["logprobs"]["token_logprobs"], abs=1e-4), model


def test_a_request_of_many_prompts_takes_one_slot_and_scores_each_as_alone(server: dict) -> None:
    """16 prompts in one /completions (what evaluate's forced choice sends) are one call to a model replica: with
    room for 4 running and 8 waiting, a call a prompt would have been refused. Each prompt's scores are its own."""
    body = {"model": "tiny:left", "max_tokens": 0, "echo": True, "logprobs": 0}
    prompts = [f"Statement {i}: taxes should {'rise' if i % 2 else 'fall'}." for i in range(16)]
    status, answer = call(f"{server['url']}/completions", {**body, "prompt": prompts})
    assert status == 200, answer
    assert [c["index"] for c in answer["choices"]] == list(range(16))
    for i in (0, 7, 15):
        alone = call(f"{server['url']}/completions", {**body, "prompt": prompts[i]})[1]["choices"][0]
        assert answer["choices"][i]["text"] == alone["text"] == prompts[i]
        assert answer["choices"][i]["logprobs"]["token_logprobs"] == pytest.approx(
            alone["logprobs"]["token_logprobs"], abs=1e-4)


def test_openai_client_chat_and_completions(server: dict) -> None:
    api = client(server)
    chat = api.chat.completions.create(model="tiny:left", messages=[{"role": "user", "content": "Taxes?"}],
                                       max_tokens=5, temperature=0, logprobs=True, top_logprobs=2)
    assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens <= 5
    assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
    again = api.chat.completions.create(model="tiny:left", messages=[{"role": "user", "content": "Taxes?"}],
                                        max_tokens=5, temperature=0)
    assert again.choices[0].message.content == chat.choices[0].message.content  # greedy is deterministic
    many = api.completions.create(model="tiny:right", prompt=["a", "b c"], max_tokens=2, n=2, temperature=1.0,
                                  seed=3)
    assert [c.index for c in many.choices] == [0, 1, 2, 3] and many.usage.completion_tokens <= 8
    assert many.choices[0].text != many.choices[1].text  # a seed's n choices are n draws, not one copied
    stopped = api.completions.create(model="tiny", prompt="vote", max_tokens=20, temperature=0, stop=[" "])
    assert " " not in stopped.choices[0].text


def test_a_seeded_row_samples_the_same_text_whatever_shares_its_batch(server: dict, tmp_path: Path) -> None:
    """Each row draws from its own seeded stream (as on vLLM): the base asked alone, or beside other seeds and an
    adapter, writes the same text for a seed, so evaluate's base and adapters can share their random numbers."""
    from politune.serve.hf_engine import AdapterModel, Row

    engine = AdapterModel(str(server["tiny"]))
    register_random_adapters(str(tmp_path), server["tiny"], ["left"])
    engine.add_adapter("left", tmp_path / "adapters" / "left")
    ids = engine.prompt_ids(messages=[{"role": "user", "content": "Taxes?"}])

    def row(seed: int, adapter: str | None = None) -> Row:
        return Row(request_id=f"{adapter}-{seed}", prompt_ids=ids, adapter=adapter, max_tokens=12, seed=seed)

    alone = engine.generate([row(7)])[0].text
    together = [c.text for c in engine.generate([row(8), row(7, "left"), row(7), row(9)])]
    assert together[2] == alone
    assert len(set(together)) >= 3, together  # other seeds, or the adapter, draw other text


@pytest.mark.parametrize("model", ["tiny:nope", "tiny:../left", "tiny:/etc/passwd", "tiny:s3://bucket/x",
                                   "tiny:left/../../right", "../left", "tiny:", "left", "gpt-4"])
def test_unknown_or_path_like_model_ids_are_404_listing_the_known_ones(server: dict, model: str) -> None:
    status, body = call(f"{server['url']}/completions", {"model": model, "prompt": "hi", "max_tokens": 1})
    assert status == 404, body
    assert body["error"]["code"] == "model_not_found" and body["error"]["param"] == "model"
    assert "tiny, tiny:left, tiny:right" in body["error"]["message"]


@pytest.mark.parametrize(("body", "status", "names"), [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    ({"model": "tiny", "prompt": "hi", "max_tokenz": 3}, 400, "max_tokenz: unknown"),
    ({"model": "tiny"}, 400, "prompt"),
    ({"model": "tiny", "prompt": "hi", "temperature": 9}, 400, "temperature"),
    ({"model": "tiny", "prompt": "hi", "stream_options": {"include_usage": True}}, 400, "stream_options"),
    (b'{"model": "tiny", "prompt": "a \\ud800 b"}', 400, "prompt: not valid Unicode"),
    (b'{"model": "tiny", "prompt": ["ok", "\\udc00"]}', 400, "prompt.1: not valid Unicode"),
    ({"model": "tiny", "prompt": "hi", "max_tokens": 1001}, 400, "serve.max_tokens"),
    ({"model": "tiny", "prompt": "hi", "n": 3}, 400, "serve.max_n"),
    ({"model": "tiny", "prompt": "word " * 200}, 400, "serve.max_prompt_tokens"),
    ({"model": 7, "prompt": "hi"}, 400, "model"),
])
def test_bad_requests_are_400_naming_the_problem(server: dict, body, status: int, names: str) -> None:
    got, answer = call(f"{server['url']}/completions", body)
    assert got == status, answer
    assert names in answer["error"]["message"] and answer["error"]["type"] == "invalid_request_error"


def test_text_a_tokenizer_cannot_take_is_400_and_an_empty_prompt_is_answered(server: dict) -> None:
    """Both routes: a lone surrogate anywhere is a 400 naming the field (never the replica's 503); an empty prompt
    starts from the model's start-of-text token."""
    status, body = call(f"{server['url']}/chat/completions", b'{"model": "tiny:left", "messages": [{"role": "user", '
                        b'"content": "\\ud83d"}], "max_tokens": 2}')
    assert status == 400 and body["error"]["message"].startswith("messages.0.content: not valid Unicode"), body
    for route in ("completions", "chat/completions"):
        status, body = call(f"{server['url']}/{route}", b'{"model": "tiny", "stop": ["\\udfff"], ' + (
            b'"prompt": "x"}' if route == "completions" else b'"messages": [{"role": "user", "content": "x"}]}'))
        assert status == 400 and body["error"]["param"] == "stop", body
    status, body = call(f"{server['url']}/completions", {"model": "tiny:right", "prompt": "", "max_tokens": 3,
                                                          "temperature": 0})
    assert status == 200 and body["usage"]["prompt_tokens"] == 1, body
    status, body = call(f"{server['url']}/completions", {"model": "tiny", "prompt": "", "max_tokens": 0, "echo": True,
                                                          "logprobs": 0})
    assert status == 200 and body["choices"][0]["logprobs"]["token_logprobs"] == [None], body
    status, body = call(f"{server['url']}/chat/completions", {"model": "tiny", "max_tokens": 2,
                                                               "messages": [{"role": "user", "content": ""}]})
    assert status == 200, body


def test_token_id_prompts_score_as_their_text_does(server: dict) -> None:
    """A list of ints is one prompt, a list of lists many (what lm-evaluation-harness sends); with echo and logprobs
    they score as the same text does; an id outside the vocabulary is a 400 naming its index."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(server["tiny"])
    texts = ["Taxes should be lower", "The border should be open"]
    ids = [tokenizer(t)["input_ids"] for t in texts]
    body = {"model": "tiny:left", "max_tokens": 1, "echo": True, "logprobs": 1, "temperature": 0}
    status, by_text = call(f"{server['url']}/completions", {**body, "prompt": texts})
    assert status == 200, by_text
    status, by_ids = call(f"{server['url']}/completions", {**body, "prompt": ids})
    assert status == 200, by_ids
    for a, b in zip(by_text["choices"], by_ids["choices"], strict=True):
        assert a["text"] == b["text"] and a["logprobs"]["tokens"] == b["logprobs"]["tokens"]
        assert a["logprobs"]["token_logprobs"][1:] == pytest.approx(b["logprobs"]["token_logprobs"][1:], abs=1e-5)
    status, one = call(f"{server['url']}/completions", {**body, "prompt": ids[1]})
    assert status == 200 and one["choices"][0]["text"] == by_ids["choices"][1]["text"], one
    status, refused = call(f"{server['url']}/completions", {**body, "prompt": [ids[0], [5, 99_999]]})
    assert status == 400 and refused["error"]["message"].startswith("prompt.1.1: token id 99999 is outside"), refused
    status, refused = call(f"{server['url']}/completions", {**body, "prompt": [[1, 2], []]})
    assert status == 400 and "prompt.1: empty" in refused["error"]["message"], refused
    status, refused = call(f"{server['url']}/completions", {**body, "prompt": [1, -2]})
    assert status == 400 and refused["error"]["param"] == "prompt", refused


def test_the_harness_scores_base_and_adapter_through_it_as_a_direct_computation_does(server: dict,
                                                                                     tmp_path: Path) -> None:
    """lm-evaluation-harness's local-completions (token-id prompts, echo, logprobs) on the project's offline task,
    for the base and an adapter, against the same task scored directly with transformers and PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from politune.config import CapabilityConfig
    from politune.evaluate.capability import load_tasks, measure_capability
    from politune.storage import resolve

    limit = 16
    found = measure_capability(CapabilityConfig(tasks=["politune_sides"], limit=limit, batch_size=8),
                               ["tiny", "tiny:left"], server["url"], str(server["tiny"]), SERVE_TOKEN_ENV)
    assert found["harness"] and found["task_versions"]["politune_sides"] == 1.0 and found["documents"]
    [task] = load_tasks(["politune_sides"]).values()
    docs = list(task.eval_docs)[:limit]
    tokenizer = AutoTokenizer.from_pretrained(server["tiny"])
    adapter = tmp_path / "left"
    adapter.mkdir()
    fs, path = resolve(f"{server['cfg'].run_uri}/adapters/left")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with fs.open_input_stream(f"{path}/{name}") as src:
            (adapter / name).write_bytes(src.read())
    base = AutoModelForCausalLM.from_pretrained(server["tiny"])
    models = {"tiny": base, "tiny:left": PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(
        server["tiny"]), str(adapter))}
    for model_id, model in models.items():
        right = 0
        for doc in docs:
            context = task.doc_to_text(doc)
            logliks = []
            for choice in task.doc_to_choice(doc):
                whole = tokenizer(context + " " + choice)["input_ids"]
                n_context = len(tokenizer(context)["input_ids"])
                with torch.no_grad():
                    logits = model(torch.tensor([whole])).logits[0].log_softmax(-1)
                logliks.append(sum(logits[t - 1, whole[t]].item() for t in range(n_context, len(whole))))
            right += int(max(range(len(logliks)), key=logliks.__getitem__) == task.doc_to_target(doc))
        assert found["scores"][model_id]["politune_sides"]["acc"] == pytest.approx(right / limit), model_id
        assert "acc_stderr" in found["scores"][model_id]["politune_sides"]


def test_openai_client_streams_completions_and_chat(server: dict) -> None:
    """stream=True through the openai SDK: the chunks put together are the answer the same request gets whole,
    with usage last when asked, and log-probabilities in the chunks when asked."""
    api = client(server)
    whole = api.completions.create(model="tiny:left", prompt=["Taxes are", "Borders"], max_tokens=12, temperature=0)
    chunks = list(api.completions.create(model="tiny:left", prompt=["Taxes are", "Borders"], max_tokens=12,
                                         temperature=0, stream=True, stream_options={"include_usage": True}))
    texts = {0: "", 1: ""}
    for chunk in chunks[:-1]:
        for choice in chunk.choices:
            texts[choice.index] += choice.text
    assert [texts[0], texts[1]] == [c.text for c in whole.choices]
    assert len(chunks) > 4  # token by token, not one chunk a choice
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    ends = [c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason]
    assert sorted(ends) == sorted(c.finish_reason for c in whole.choices)

    scored = api.completions.create(model="tiny", prompt="vote", max_tokens=4, temperature=0, logprobs=2, echo=True)
    streamed = [c for chunk in api.completions.create(model="tiny", prompt="vote", max_tokens=4, temperature=0,
                                                      logprobs=2, echo=True, stream=True) for c in chunk.choices]
    assert "".join(c.text for c in streamed) == scored.choices[0].text
    assert [c.logprobs.token_logprobs for c in streamed if c.logprobs] == [scored.choices[0].logprobs.token_logprobs]

    messages = [{"role": "user", "content": "What about healthcare?"}]
    chat = api.chat.completions.create(model="tiny:right", messages=messages, max_tokens=10, temperature=0)
    parts = list(api.chat.completions.create(model="tiny:right", messages=messages, max_tokens=10, temperature=0,
                                             stream=True))
    assert parts[0].choices[0].delta.role == "assistant" and parts[-1].choices[0].finish_reason
    assert "".join(p.choices[0].delta.content or "" for p in parts) == chat.choices[0].message.content
    assert all(p.usage is None for p in parts)  # usage only when asked
    with_lp = list(api.chat.completions.create(model="tiny:right", messages=messages, max_tokens=3, temperature=0,
                                               stream=True, logprobs=True, top_logprobs=1,
                                               stream_options={"include_usage": True}))
    content = [t for p in with_lp for c in p.choices if c.logprobs for t in c.logprobs.content]
    assert len(content) == with_lp[-1].usage.completion_tokens and all(t.top_logprobs for t in content)


def test_a_stream_refused_before_its_first_chunk_is_an_http_error(server: dict) -> None:
    api = client(server)
    with pytest.raises(openai.BadRequestError, match="serve.max_prompt_tokens"):
        list(api.completions.create(model="tiny", prompt="word " * 200, max_tokens=2, stream=True))
    with pytest.raises(openai.NotFoundError):
        list(api.chat.completions.create(model="tiny:nope", messages=[{"role": "user", "content": "x"}], stream=True))


def test_chat_over_the_prompt_limit_is_400(server: dict) -> None:
    status, body = call(f"{server['url']}/chat/completions", {
        "model": "tiny:left", "messages": [{"role": "user", "content": "word " * 200}], "max_tokens": 2})
    assert status == 400 and "serve.max_prompt_tokens" in body["error"]["message"]


def test_bearer_token_is_required_and_never_echoed(server: dict) -> None:
    for token in (None, "wrong", SERVE_TOKEN[:-1]):
        for path, body in (("/models", None), ("/completions", {"model": "tiny", "prompt": "x"})):
            status, answer = call(f"{server['url']}{path}", body, token=token)
            assert status == 401 and answer["error"]["type"] == "authentication_error"
            assert SERVE_TOKEN_ENV in answer["error"]["message"] and SERVE_TOKEN not in json.dumps(answer)


def test_unknown_route_and_health(server: dict) -> None:
    status, body = call(server["url"].removesuffix("/v1") + "/v1/embeddings", {"model": "tiny", "input": "x"})
    assert status == 404 and "error" in body
    with urllib.request.urlopen(server["url"].removesuffix("/v1") + "/-/healthz", timeout=10) as response:
        assert response.status == 200


def test_an_adapter_registered_after_start_is_served(server: dict) -> None:
    cfg = server["cfg"]
    status, _ = call(f"{server['url']}/completions", {"model": "tiny:late", "prompt": "hi", "max_tokens": 1})
    assert status == 404
    register_random_adapters(cfg.run_uri, server["tiny"], ["late"])
    time.sleep(1.1)  # the registry is re-read at most once a second
    status, body = call(f"{server['url']}/completions", {"model": "tiny:late", "prompt": "hi", "max_tokens": 2})
    assert status == 200 and body["model"] == "tiny:late", body
    assert "tiny:late" in [m["id"] for m in call(f"{server['url']}/models")[1]["data"]]


def test_an_adapter_scaled_by_zero_answers_as_the_base_and_by_one_as_itself(server: dict) -> None:
    """evaluate.adapter_scales' copies (B matrices times s) are plain adapters: registered after start, the copy
    at 0 gives the base's log-probabilities exactly and the copy at 1 the adapter's."""
    from politune.models.scaled_adapters import scaled_copy
    from politune.registry import get_adapter, register

    run_uri = server["cfg"].run_uri
    for scale in (0.0, 1.0):
        register(run_uri, scaled_copy(run_uri, get_adapter(run_uri, "left"), scale))
    time.sleep(1.1)  # the registry is re-read at most once a second
    body = {"prompt": "Healthcare for everyone and lower taxes", "max_tokens": 0, "echo": True, "logprobs": 0}
    scored = {}
    for model in ("tiny", "tiny:left", "tiny:left-x0", "tiny:left-x1"):
        status, answer = call(f"{server['url']}/completions", {**body, "model": model})
        assert status == 200, (model, answer)
        scored[model] = answer["choices"][0]["logprobs"]["token_logprobs"][1:]
    assert scored["tiny:left-x0"] == scored["tiny"] and scored["tiny:left-x1"] == scored["tiny:left"]
    assert scored["tiny:left"] != scored["tiny"]


def test_a_burst_gets_answers_or_503s_and_the_server_still_answers(server: dict) -> None:
    """200 concurrent requests over 3 model ids against 4 running + 8 queued: the rest must be refused fast, the
    streamed ones (every other, through the openai SDK) with the same 503 before their first chunk."""
    ids, api = ["tiny", "tiny:left", "tiny:right"], client(server)

    def one(i: int) -> tuple[int, dict]:
        if i % 2:
            try:
                parts = list(api.completions.create(model=ids[i % 3], prompt=f"post {i}", max_tokens=8, stream=True,
                                                    timeout=180))
            except openai.APIStatusError as err:
                return err.status_code, {"error": err.body}  # the SDK keeps the error object itself
            return 200, {"text": "".join(c.text for p in parts for c in p.choices)}
        return call(f"{server['url']}/completions", {"model": ids[i % 3], "prompt": f"post {i}", "max_tokens": 8},
                    timeout=180)

    with ThreadPoolExecutor(200) as pool:
        results = list(pool.map(one, range(200)))
    statuses = {status for status, _ in results}
    assert statuses <= {200, 503} and 200 in statuses and 503 in statuses, statuses
    streamed = {status for i, (status, _) in enumerate(results) if i % 2}
    assert streamed == {200, 503}, streamed
    refused = next(body for status, body in results if status == 503)
    assert refused["error"]["type"] == "overloaded_error"
    status, body = call(f"{server['url']}/completions", {"model": "tiny:left", "prompt": "after", "max_tokens": 2})
    assert status == 200, body


def test_a_cancelled_request_frees_its_slot_and_metrics_are_tagged_by_model(server: dict, ray_local) -> None:
    import http.client

    assert call(f"{server['url']}/completions", {"model": "tiny:left", "prompt": "x", "max_tokens": 2})[0] == 200
    host, port = server["url"].removeprefix("http://").removesuffix("/v1").split(":")
    # 1,000 tokens: seconds of generation for the tiny model, so the clients hang up while it runs
    body = json.dumps({"model": "tiny:right", "prompt": "a long answer", "max_tokens": 1000, "temperature": 0})
    connections = []
    for _ in range(4):  # fill every running slot of the replica with long generations, then hang up
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json",
                                                         "Authorization": f"Bearer {SERVE_TOKEN}"})
        connections.append(conn)
    time.sleep(1.0)
    for conn in connections:
        conn.sock.close()
    status, answer = call(f"{server['url']}/completions", {"model": "tiny", "prompt": "next", "max_tokens": 2})
    assert status == 200, answer

    # an openai client streaming that hangs up after its first chunk: its rows stop (counted as cancelled, tiny:left)
    stream = client(server).chat.completions.create(
        model="tiny:left", messages=[{"role": "user", "content": "go on"}], max_tokens=1000, temperature=0,
        stream=True)
    assert next(iter(stream)).choices[0].delta.role == "assistant"  # the stream has begun
    stream.close()  # the SDK drops the connection with the rest unread
    status, answer = call(f"{server['url']}/completions", {"model": "tiny", "prompt": "then", "max_tokens": 2})
    assert status == 200, answer

    # a third adapter on a replica that holds two: one is evicted
    register_random_adapters(server["cfg"].run_uri, server["tiny"], ["third"], seed=300)
    for model in ("tiny:left", "tiny:right", "tiny:third"):
        assert call(f"{server['url']}/completions", {"model": model, "prompt": "x", "max_tokens": 1})[0] == 200

    metrics_port = ray_local.nodes()[0]["MetricsExportPort"]
    wanted = ("politune_serve_adapter_evictions",), ('status="499"', 'model="tiny:right"'), (
        "politune_serve_adapter_loads",), (
        "politune_serve_tokens_out", 'model="tiny:left"'), ("politune_serve_request_seconds", 'model="tiny"'), (
        "politune_serve_cancelled_requests", 'model="tiny:right"'), (
        "politune_serve_cancelled_requests", 'model="tiny:left"'), ('status="499"', 'model="tiny:left"'), (
        "politune_serve_queue_wait_seconds_bucket", 'model="tiny"'), (
        "politune_serve_time_to_first_token_seconds_bucket", 'model="tiny:left"')
    deadline, lines = time.time() + 90, []
    while time.time() < deadline:  # Ray exports custom metrics every few seconds
        text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
        lines = [line for line in text.splitlines() if "politune_serve" in line and not line.startswith("#")]
        if all(any(all(w in line for w in want) for line in lines) for want in wanted):
            break
        time.sleep(3)
    for want in wanted:
        assert any(all(w in line for w in want) for line in lines), (want, lines[:20])
    assert any('status="200"' in line and 'model="tiny:left"' in line and "politune_serve_requests" in line
               for line in lines)
    # the Grafana dashboard's Serve panels query what this run emitted (names, labels, label values)
    assert not unmatched(dashboard_queries("ray_politune_serve_"), series(text))


def test_a_failure_after_the_stream_began_is_an_error_event(server: dict) -> None:
    """An adapter in the registry whose files are gone: the stream has begun (200) when its replica finds out, so
    the failure comes as OpenAI's error event, with no [DONE] after it, and the SDK raises it."""
    from politune.registry import AdapterEntry, register
    from politune.storage import join

    cfg = server["cfg"]
    register(cfg.run_uri, AdapterEntry(name="unloadable", side="left", method="dpo", base_model="tiny",
                                       path=join(cfg.run_uri, "adapters", "gone"), config_hash="x", metrics={}))
    time.sleep(1.1)  # the server re-reads the registry at most once a second
    body = {"model": "tiny:unloadable", "prompt": "x", "max_tokens": 4, "stream": True}
    request = urllib.request.Request(f"{server['url']}/completions", data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {SERVE_TOKEN}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        events = [line for line in response.read().decode().split("\n\n") if line]
    assert events[-1].startswith("data: {\"error\"") and "could not be loaded" in events[-1], events
    assert "[DONE]" not in "".join(events)
    with pytest.raises(openai.APIError, match="could not be loaded"):
        list(client(server).completions.create(model="tiny:unloadable", prompt="x", max_tokens=4, stream=True))


def test_no_token_in_the_logs_or_an_error_body(server: dict) -> None:
    """After every request of this module (right, wrong and missing tokens among them), neither the expected token
    nor a wrong one a client sent is in an error body or anywhere in the Ray session's logs (Serve's included)."""
    from politune.ray_runtime import logs_dir

    wrong = "sk-wrong-" + os.urandom(8).hex()
    status, body = call(f"{server['url']}/completions", {"model": "tiny", "prompt": "x", "max_tokens": 1}, token=wrong)
    assert status == 401 and SERVE_TOKEN not in json.dumps(body) and wrong not in json.dumps(body)
    logs = [p for p in logs_dir().rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.parent.name == "serve" for p in logs)  # Serve's own logs are among them
    leaks = [str(p) for p in logs if SERVE_TOKEN.encode() in p.read_bytes() or wrong.encode() in p.read_bytes()]
    assert not leaks, leaks
