"""Any OpenAI-compatible chat endpoint (vLLM's server, a Ray Serve LLM app, a hosted API) through
ray.data.llm's HTTP processor (HttpRequestProcessorConfig + build_processor).

The processor's actors POST one chat/completions request a row, retrying 429/5xx answers and lost
connections with exponential back-off. Any other HTTP error comes back as the endpoint's JSON error
body: `chat_reply` turns it into an error string, so the row is recorded, not lost.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from functools import partial
from typing import Any


class EndpointError(RuntimeError):
    """The endpoint cannot be used: unreachable, or it does not serve the model. `status`: the HTTP status
    it answered with, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def auth_headers(api_key_env: str) -> dict[str, str]:
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def list_models(base_url: str, api_key_env: str, timeout_s: float = 10) -> list[str]:
    """The model ids the endpoint lists under /models; EndpointError naming the URL when it cannot be read."""
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers=auth_headers(api_key_env))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return [m.get("id") for m in json.load(response).get("data", [])]
    except urllib.error.HTTPError as err:
        raise EndpointError(f"cannot list the models of the OpenAI-compatible endpoint {url}: HTTP {err.code} "
                            f"{err.reason}" + (f" (is ${api_key_env} set to its token?)" if err.code == 401 else ""),
                            err.code) from None
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise EndpointError(f"cannot list the models of the OpenAI-compatible endpoint {url}: {err}") from None


def check_endpoint(base_url: str, model: str, api_key_env: str, timeout_s: float = 10) -> None:
    """Fail before any work is sent if the endpoint is down or does not list `model` under /models."""
    url = base_url.rstrip("/") + "/models"
    listed = list_models(base_url, api_key_env, timeout_s)
    if model not in listed:
        raise EndpointError(f"{url} does not serve model {model!r}; it serves {listed}. Set openai_model to one "
                            "of them.")


def http_processor_config(base_url: str, api_key_env: str, batch_size: int, concurrency: int, qps: int | None,
                          max_retries: int, route: str = "/chat/completions", num_cpus: float | None = None) -> Any:
    """ray.data.llm's HTTP processor for `base_url + route`, its batches sent together (ConcurrentPosts)."""
    from ray.data.llm import HttpRequestProcessorConfig

    stage = {"num_cpus": num_cpus} if num_cpus is not None else True
    return HttpRequestProcessorConfig(
        url=base_url.rstrip("/") + route, headers=auth_headers(api_key_env), batch_size=batch_size,
        concurrency=concurrency, qps=qps, max_retries=max_retries, http_request_stage=stage,
        session_factory=partial(ConcurrentPosts, limit=batch_size, max_retries=max_retries))


def chat_payload(model: str, messages: list[dict[str, str]], max_tokens: int, temperature: float = 0.0,
                 seed: int | None = None) -> dict[str, Any]:
    """A chat/completions request: greedy, or sampled at `temperature` (with `seed` where the server takes one)."""
    payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
    if temperature > 0 and seed is not None:
        payload["seed"] = seed
    return payload


def chat_reply(response: dict[str, Any]) -> tuple[str | None, bool, str | None]:
    """(text, stopped at max_tokens, error) of a chat/completions response or an error body."""
    choices = response.get("choices")
    if not choices:
        error = response.get("error") or response.get("message") or response
        return None, False, f"endpoint error: {json.dumps(error)[:2000]}"
    choice = choices[0]
    return (choice.get("message") or {}).get("content") or "", choice.get("finish_reason") == "length", None


# --- any route, raw JSON answers ---------------------------------------------------------------------------
def post_all(base_url: str, route: str, payloads: dict[str, dict[str, Any]], *, api_key_env: str,
             batch_size: int, concurrency: int, qps: int | None, max_retries: int,
             num_cpus: float) -> dict[str, tuple[dict[str, Any] | None, str | None]]:
    """POST every payload (key -> JSON body) to `base_url + route` through ray.data.llm's HTTP processor;
    key -> (response JSON, None), or (None, error) for a request that failed after its retries or that the
    endpoint refused (its error body). Every key gets exactly one answer."""
    import ray.data
    from ray.data.llm import build_processor

    if not payloads:
        return {}
    config = http_processor_config(base_url, api_key_env, batch_size, concurrency, qps, max_retries, route, num_cpus)
    stage_kwargs = {"num_cpus": num_cpus}
    processor = build_processor(config, preprocess=_to_http_request, postprocess=_from_http_response,
                                preprocess_map_kwargs=stage_kwargs, postprocess_map_kwargs=stage_kwargs)
    requests = [{"key": key, "payload_json": json.dumps(body)} for key, body in payloads.items()]
    try:
        rows = processor(ray.data.from_items(requests)).map_batches(
            _answers, batch_format="pyarrow", num_cpus=num_cpus).take_all()
    except Exception as err:  # the HTTP stage raises once a request has used up its retries: the run stops
        if "Reached maximum retries" not in str(err):
            raise
        cause = str(err).split("Reached maximum retries", 1)[-1].split("Full Traceback", 1)[0]
        raise EndpointError(f"{config.url}: a request still failed after {max_retries} retries; nothing was "
                            f"written (last error: {cause.strip()[-300:]})") from None
    answers: dict[str, tuple[dict[str, Any] | None, str | None]] = {}
    for row in rows:
        response = json.loads(row["response_json"]) if row["response_json"] else None
        error = row["error"]
        if response is not None and not response.get("choices"):
            error = f"endpoint error: {json.dumps(response.get('error') or response)[:2000]}"
            response = None
        answers[row["key"]] = (response, error)
    missing = set(payloads) - set(answers)
    if missing or len(rows) != len(answers):
        raise RuntimeError(f"the HTTP processor answered {len(answers)} of {len(payloads)} requests "
                           f"({len(missing)} missing, {len(rows) - len(answers)} repeated)")
    return answers


class ConcurrentPosts:
    """The aiohttp session ray.data.llm's HTTP stage posts through, with its batch's requests sent together, and a
    request that fails its last retry answered with an error body.

    The stage (Ray 2.60) creates every request of a batch and then awaits them one by one; aiohttp sends a request
    only once it is awaited, so a batch went out one request at a time (measured here: 7 req/s through the
    processor against 48 req/s from 16 concurrent clients on the same Serve app). Here post() starts sending at
    once. At most `limit` requests of one actor are open together, so `concurrency` x `batch_size` bounds what an
    endpoint is sent at a time.

    When a request's last attempt (1 + `max_retries`) fails too, by a lost connection or a retryable status (429,
    408, 5xx), the stage raises, and Ray Data fails the whole dataset: every answer already received is lost. Here
    that attempt is answered with an OpenAI-shaped error body instead (FailedRequest), which post_all turns into
    that one request's error: a failed request is a recorded row, and the others' answers are kept."""

    _open: dict[int, Any] = {}  # event loop -> its semaphore
    RETRYABLE = frozenset({429, 408, 502, 503, 504})  # the stage's RETRYABLE_STATUS_CODES

    def __init__(self, limit: int, max_retries: int = 0) -> None:
        import aiohttp

        self.limit = limit
        self.max_retries = max_retries
        self.attempts: dict[Any, int] = {}  # request body -> attempts so far (the stage resends the same body)
        self.session = aiohttp.ClientSession()

    async def __aenter__(self) -> ConcurrentPosts:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.session.close()

    def post(self, url: str, **kwargs: Any) -> Any:
        import asyncio

        return asyncio.ensure_future(self._post(url, kwargs))

    async def _post(self, url: str, kwargs: dict[str, Any]) -> Any:
        import asyncio

        import aiohttp

        body = kwargs.get("data")
        attempt = self.attempts[body] = self.attempts.get(body, 0) + 1
        last = attempt > self.max_retries
        slots = self._open.setdefault(id(asyncio.get_running_loop()), asyncio.Semaphore(self.limit))
        async with slots:
            try:
                response = await self.session.post(url, **kwargs)
                await response.read()  # the body is kept: the stage's response.json() reads it later
            except (asyncio.TimeoutError, aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as err:
                if not last:
                    raise
                return FailedRequest(f"{type(err).__name__}: {err}", attempt)
            if last and response.status in self.RETRYABLE:
                return FailedRequest(f"HTTP {response.status} {response.reason}: {(await response.text())[:300]}",
                                     attempt)
            return response


class FailedRequest:
    """What ConcurrentPosts answers for a request whose last attempt failed: a response the HTTP stage reads like
    any other (status 599, not one it retries), whose JSON body is an OpenAI-shaped error saying why."""

    status, reason = 599, "request failed after its retries"

    def __init__(self, why: str, attempts: int) -> None:
        self.body = {"error": {"message": f"no answer after {attempts} attempt{'s' * (attempts > 1)}: {why}",
                               "type": "request_failed", "code": 599}}

    async def __aenter__(self) -> FailedRequest:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def json(self) -> dict[str, Any]:
        return self.body


def _to_http_request(row: dict[str, Any]) -> dict[str, Any]:
    return {"key": row["key"], "payload": json.loads(row["payload_json"])}


def _from_http_response(row: dict[str, Any]) -> dict[str, Any]:
    # as JSON text: Arrow would otherwise try to unify the shapes of different answers
    return {"key": row["key"], "response_json": json.dumps(row["http_response"]), "error": None}


def _answers(batch: Any) -> Any:
    """Processor rows (answers, and error rows that skipped the postprocess) -> {key, response_json, error}."""
    import pyarrow as pa

    from politune.engines.rows import rows_with
    from politune.engines.vllm_processor import ERROR_COLUMN

    rows = []
    for r in rows_with(batch, ("key", "response_json", "error", ERROR_COLUMN)):
        error = r["error"] or (str(r[ERROR_COLUMN]) if r[ERROR_COLUMN] else None)
        rows.append({"key": r["key"], "response_json": None if error else r["response_json"], "error": error})
    return pa.Table.from_pylist(rows, schema=pa.schema([("key", pa.string()), ("response_json", pa.string()),
                                                       ("error", pa.string())]))
