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
from typing import Any


class EndpointError(RuntimeError):
    """The endpoint cannot be used: unreachable, or it does not serve the model."""


def chat_url(base_url: str) -> str:
    return base_url.rstrip("/") + "/chat/completions"


def auth_headers(api_key_env: str) -> dict[str, str]:
    key = os.environ.get(api_key_env)
    return {"Authorization": f"Bearer {key}"} if key else {}


def check_endpoint(base_url: str, model: str, api_key_env: str, timeout_s: float = 10) -> None:
    """Fail before any work is sent if the endpoint is down or does not list `model` under /models."""
    url = base_url.rstrip("/") + "/models"
    request = urllib.request.Request(url, headers=auth_headers(api_key_env))
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            listed = [m.get("id") for m in json.load(response).get("data", [])]
    except (urllib.error.URLError, OSError, ValueError) as err:
        raise EndpointError(f"cannot list the models of the OpenAI-compatible endpoint {url}: {err}") from None
    if model not in listed:
        raise EndpointError(f"{url} does not serve model {model!r}; it serves {listed}. Set openai_model to one "
                            "of them.")


def http_processor_config(base_url: str, api_key_env: str, batch_size: int, concurrency: int, qps: int | None,
                          max_retries: int) -> Any:
    from ray.data.llm import HttpRequestProcessorConfig

    return HttpRequestProcessorConfig(
        url=chat_url(base_url), headers=auth_headers(api_key_env), batch_size=batch_size,
        concurrency=concurrency, qps=qps, max_retries=max_retries)


def chat_payload(model: str, messages: list[dict[str, str]], max_tokens: int) -> dict[str, Any]:
    """A greedy chat/completions request."""
    return {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0}


def chat_reply(response: dict[str, Any]) -> tuple[str | None, bool, str | None]:
    """(text, stopped at max_tokens, error) of a chat/completions response or an error body."""
    choices = response.get("choices")
    if not choices:
        error = response.get("error") or response.get("message") or response
        return None, False, f"endpoint error: {json.dumps(error)[:2000]}"
    choice = choices[0]
    return (choice.get("message") or {}).get("content") or "", choice.get("finish_reason") == "length", None
