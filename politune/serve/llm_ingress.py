"""The vllm back end's front door: ray.serve.llm's OpenAI ingress, made safe to expose. Needs vLLM (ray.serve.llm
imports it); llm_app.py imports this module only when it builds the application.

What it adds to ray.serve.llm's `OpenAiIngress`, which routes any `<base>:<anything>` to S3:
- `model` must name the base or an adapter of the run's registry (guard.ModelCatalog), checked before the request
  reaches an LLMServer: `tiny:../x` or `tiny:s3://...` is a 404 listing the served ids, never an S3 lookup;
- /v1/models lists the base and every registered adapter, with the registry's side, method and metrics;
- the bearer token ($<serve.api_key_env>, read in the replica) is checked before anything else runs (401);
- max_tokens and n over the serve section's limits are a 400; malformed JSON and bad fields a 400; so is text no
  tokenizer can take (a lone surrogate, anywhere in the request), before it reaches vLLM (an empty prompt is
  vLLM's own 400);
- every error is OpenAI's `{"error": {message, type, param, code}}`, not `{"detail": ...}`.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from ray.llm._internal.serve.core.configs.openai_api_models import ModelCard, ModelList, OpenAIHTTPException
from ray.llm._internal.serve.core.ingress.ingress import init as ray_llm_fastapi_app
from ray.serve.exceptions import BackPressureError
from ray.serve.llm.ingress import OpenAiIngress
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from politune.registry import AdapterEntry
from politune.serve.guard import APIError, ModelCatalog, bearer_check, overloaded
from politune.serve.protocol import not_text


class GuardedIngress(OpenAiIngress):
    """ray.serve.llm's OpenAI ingress for one base model, serving only the registry's adapters."""

    def __init__(self, llm_deployments: dict[str, Any], model_cards: dict[str, ModelCard], *, run_uri: str,
                 base_model: str, max_tokens: int, max_n: int, vocab_size: int | None = None) -> None:
        # no lora_paths: which adapters exist is the registry's word, not a listing of the S3 folder
        super().__init__(llm_deployments, model_cards)
        (base_id,) = model_cards
        self.catalog = ModelCatalog(run_uri, base_id, base_model)
        self.max_tokens, self.max_n, self.vocab_size = max_tokens, max_n, vocab_size

    async def _get_model_id(self, model: str | None) -> str:
        # an unknown id re-reads the registry (from S3): off the event loop
        return (await asyncio.to_thread(self.catalog.resolve, model)).model_id

    async def _get_response(self, *, body: Any, call_method: str, raw_request: Request | None = None):
        sent = body.model_dump(exclude_unset=True)
        where = not_text(sent)
        if where is not None:
            raise APIError(400, f"{where}: not valid Unicode text (a lone surrogate such as \\ud800); send UTF-8 text",
                           param=where.split(".")[0])
        self._check_token_ids(sent.get("prompt"))
        for field, limit, setting in (("max_tokens", self.max_tokens, "max_tokens"),
                                      ("max_completion_tokens", self.max_tokens, "max_tokens"),
                                      ("n", self.max_n, "max_n")):
            value = getattr(body, field, None)
            if value is not None and value > limit:
                raise APIError(400, f"{field}: {value} is over this server's limit of {limit} (serve.{setting})",
                               param=field)
        async for response in super()._get_response(body=body, call_method=call_method, raw_request=raw_request):
            yield response

    def _check_token_ids(self, prompt: Any) -> None:
        """Token-id prompts (a list of ints, or a list of such lists): an id the model has no embedding for is a
        400 naming its index, as on the hf back end."""
        if not self.vocab_size or not isinstance(prompt, list) or not prompt or isinstance(prompt[0], str):
            return
        for where, ids in [("prompt", prompt)] if isinstance(prompt[0], int) else [
                (f"prompt.{i}", p) for i, p in enumerate(prompt)]:
            for k, token in enumerate(ids):
                if isinstance(token, int) and not 0 <= token < self.vocab_size:
                    raise APIError(400, f"{where}.{k}: token id {token} is outside the vocabulary (0 to "
                                   f"{self.vocab_size - 1})", param="prompt")

    def _card(self, model_id: str, adapter: AdapterEntry | None) -> ModelCard:
        base = self._model_cards[self.catalog.base_id]
        if adapter is None:
            return base
        return ModelCard(id=model_id, object="model", owned_by=base.owned_by, permission=list(base.permission),
                         metadata={**base.metadata, "model_id": model_id, "base_model_id": base.id,
                                   "adapter": adapter.name, "side": adapter.side, "method": adapter.method,
                                   "metrics": adapter.metrics, "registered_at": adapter.registered_at})

    async def model(self, model_id: str) -> ModelCard | None:
        try:
            served = await asyncio.to_thread(self.catalog.resolve, model_id)
        except APIError:
            return None
        return self._card(served.model_id, served.adapter)

    async def models(self) -> ModelList:
        await asyncio.to_thread(self.catalog.refresh)  # throttled: an adapter registered since start shows up
        base_id = self.catalog.base_id
        adapters = sorted(self.catalog.adapters.items())
        return ModelList(data=[self._card(base_id, None),
                               *(self._card(f"{base_id}:{name}", entry) for name, entry in adapters)])

    async def model_data(self, model: str) -> ModelCard:
        served = await asyncio.to_thread(self.catalog.resolve, model)
        return self._card(served.model_id, served.adapter)


class BearerAuth:
    """ASGI middleware: when $<env_name> is set in the replica, a request without that bearer token gets a 401
    before anything else runs (body parsing included)."""

    def __init__(self, app: ASGIApp, env_name: str) -> None:
        self.app, self.env_name = app, env_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] != "OPTIONS":  # CORS preflights carry no token
            try:
                bearer_check(Headers(scope=scope).get("authorization"), os.environ.get(self.env_name), self.env_name)
            except APIError as err:
                return await _response(err)(scope, receive, send)
        await self.app(scope, receive, send)


def _response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


async def _api_error(request: Request, err: APIError) -> JSONResponse:
    return _response(err)


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """ray.serve.llm's and Starlette's own `{"detail": ...}` errors (unknown route, wrong method ...)."""
    kind = "server_error" if err.status_code >= 500 else "invalid_request_error"
    return _response(APIError(err.status_code, str(err.detail), type=kind))


async def _engine_error(request: Request, err: OpenAIHTTPException) -> JSONResponse:
    """What vLLM refused (a prompt over max_model_len ...) or the ingress timed out on, with vLLM's message."""
    return _response(APIError(err.status_code, err.message, type=err.type))


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {}
    if first.get("type") == "json_invalid":
        return _response(APIError(400, f"the request body is not valid JSON: {first.get('msg', '')}"))
    field = ".".join(str(part) for part in first.get("loc", ())[1:]) or None  # loc starts with "body"
    return _response(APIError(400, f"{field or 'body'}: {first.get('msg', 'invalid request')}", param=field))


async def _overloaded(request: Request, err: BackPressureError) -> JSONResponse:
    return _response(overloaded(err.message.rstrip(".")))


def guarded_fastapi_app(api_key_env: str) -> FastAPI:
    """ray.serve.llm's FastAPI app (its error middleware, CORS, metrics, request ids) with the bearer check in
    front and every error in OpenAI's shape. Exception handlers run before ray.serve.llm's error middleware."""
    app = ray_llm_fastapi_app()
    app.add_middleware(BearerAuth, env_name=api_key_env)  # the last one added runs first
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(OpenAIHTTPException, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(BackPressureError, _overloaded)
    return app
