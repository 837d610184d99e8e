"""The hf back end's Serve application: an OpenAI-compatible FastAPI ingress in front of the model replicas.

    GET  /v1/models             the base and every registered adapter, with side, method and metrics
    POST /v1/completions        prompt(s) -> text; `logprobs` and `echo` score a prompt in one pass
    POST /v1/chat/completions   messages through the model's chat template
                                (both: `stream: true` answers in server-sent events, OpenAI's chunks)
    GET  /-/healthz             Serve's own health check (answered by the HTTP proxy)

The ingress does the checks (bearer token, model id against the registry, request shape, limits) and turns
every refusal into OpenAI's error shape; the replicas (hf_model.py) only ever see valid requests for registered
adapters.
"""

# no `from __future__ import annotations`: FastAPI must see the route parameters' real types

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from openai.types import Model
from ray import serve
from ray.serve import Application
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator
from starlette.exceptions import HTTPException

from politune.config import RunConfig
from politune.models import resolve_model
from politune.serve.guard import APIError, ModelCatalog, ServedModel, bearer_check, overloaded
from politune.serve.hf_model import HFModelServer, ServeMetrics
from politune.serve.protocol import (
    ChatRequest,
    CompletionRequest,
    Generation,
    GenerationRequest,
    StreamChunks,
    chat_response,
    completion_response,
    parse_request,
)

log = logging.getLogger("ray.serve")
api = FastAPI(title="PoliTune", docs_url=None, redoc_url=None, openapi_url=None)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """FastAPI's own refusals (an unknown route, a wrong method) in OpenAI's error shape too."""
    message = f"{request.method} {request.url.path}: {err.detail}"
    return JSONResponse(APIError(err.status_code, message).body(), status_code=err.status_code)


def _raise_refusal(generation: Generation) -> None:
    if generation.error:
        status, message, param = generation.error
        raise APIError(status, message, param=param)


@serve.deployment(name="openai", max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
@serve.ingress(api)
class OpenAIIngress:
    def __init__(self, model: DeploymentHandle, cfg: dict[str, Any]) -> None:
        run = RunConfig.model_validate(cfg)
        self.cfg = run.serve
        self.model = model
        self.catalog = ModelCatalog(run.run_uri, self.cfg.served_id, self.cfg.base_model)
        self.token = os.environ.get(self.cfg.api_key_env) or None  # read here, where it is used
        self.metrics = ServeMetrics()

    @api.get("/v1/models")
    async def models(self, request: Request) -> Response:
        return await self._answer(request, self._list_models)

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        return await self._answer(request, self._complete)

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        return await self._answer(request, self._chat)

    async def _answer(self, request: Request, handler: Callable[[Request, dict], Awaitable[dict | Response]]
                      ) -> Response:
        """Run a route's handler; any refusal becomes OpenAI's error shape. Counts every answer by status and by
        the model id the handler resolved (in `tags`), "-" before it did; a stream counts itself when it ends."""
        tags = {"model": "-"}
        try:
            bearer_check(request.headers.get("authorization"), self.token, self.cfg.api_key_env)
            body = await handler(request, tags)
            if isinstance(body, Response):
                return body
            status = 200
            response = JSONResponse(body)
        except APIError as err:
            status, response = err.status, JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        except asyncio.CancelledError:
            self.metrics.requests.inc(tags={**tags, "status": "499"})  # the client went away
            raise
        except Exception:  # a defect of ours: logged here, and no internals in the answer
            log.exception("%s %s failed", request.method, request.url.path)
            err = APIError(500, "internal server error (logged on the server)", type="server_error")
            status, response = err.status, JSONResponse(err.body(), status_code=err.status, headers=err.headers)
        self.metrics.requests.inc(tags={**tags, "status": str(status)})
        return response

    async def _list_models(self, request: Request, tags: dict) -> dict:
        await asyncio.to_thread(self.catalog.refresh)  # an S3 read, off the event loop
        created = int(time.time())
        data = [Model(id=self.cfg.served_id, created=created, object="model", owned_by="politune",
                      root=self.cfg.base_model, parent=None,
                      metadata={"base_model": self.cfg.base_model, "adapter": None})]
        for name, entry in sorted(self.catalog.adapters.items()):
            data.append(Model(id=f"{self.cfg.served_id}:{name}", created=created, object="model", owned_by="politune",
                              root=self.cfg.base_model, parent=self.cfg.served_id,
                              metadata={"adapter": name, "side": entry.side, "method": entry.method,
                                        "base_model": entry.base_model, "metrics": entry.metrics}))
        return {"object": "list", "data": [m.model_dump() for m in data]}

    def _resolve(self, data: CompletionRequest | ChatRequest, max_tokens: int | None, default: int, tags: dict
                 ) -> tuple[ServedModel, int]:
        served = self.catalog.resolve(data.model)
        tags["model"] = served.model_id
        max_tokens = default if max_tokens is None else max_tokens
        if max_tokens > self.cfg.max_tokens:
            raise APIError(400, f"max_tokens: {max_tokens} is over this server's limit of {self.cfg.max_tokens} "
                           "(serve.max_tokens)", param="max_tokens")
        if data.n > self.cfg.max_n:
            raise APIError(400, f"n: {data.n} is over this server's limit of {self.cfg.max_n} (serve.max_n)",
                           param="n")
        return served, max_tokens

    async def _complete(self, request: Request, tags: dict) -> dict | Response:
        data = parse_request(await request.body(), CompletionRequest)
        served, max_tokens = self._resolve(data, data.max_tokens, 16, tags)
        if max_tokens == 0 and not data.echo:
            raise APIError(400, "max_tokens: 0 needs echo: true (to score the prompt)", param="max_tokens")
        requests = [GenerationRequest(
            request_id=uuid.uuid4().hex, adapter=served.adapter_name, where=field,
            prompt=prompt if isinstance(prompt, str) else None, prompt_ids=None if isinstance(prompt, str) else prompt,
            max_tokens=max_tokens, temperature=data.temperature, top_p=data.top_p, n=data.n, stop=data.stop,
            seed=data.seed, logprobs=data.logprobs, echo=data.echo) for field, prompt in data.prompts()]
        if data.stream:
            chunks = StreamChunks(served.model_id, False, data.logprobs is not None)
            return await self._stream(request, served, requests, chunks, data, tags)
        generations = await self._generate(served, requests)
        return completion_response(served.model_id, generations, data.logprobs is not None).model_dump()

    async def _chat(self, request: Request, tags: dict) -> dict | Response:
        data = parse_request(await request.body(), ChatRequest)
        served, max_tokens = self._resolve(data, data.max_completion_tokens or data.max_tokens, self.cfg.max_tokens,
                                           tags)
        top = data.top_logprobs if data.logprobs else None
        requests = [GenerationRequest(
            request_id=uuid.uuid4().hex, adapter=served.adapter_name, where="messages",
            messages=[m.model_dump(exclude_none=True)
                                                                             for m in data.messages],
            max_tokens=max_tokens, temperature=data.temperature, top_p=data.top_p, n=data.n, stop=data.stop,
            seed=data.seed, logprobs=(top or 0) if data.logprobs else None)]
        if data.stream:
            chunks = StreamChunks(served.model_id, True, data.logprobs)
            return await self._stream(request, served, requests, chunks, data, tags)
        [generation] = await self._generate(served, requests)
        return chat_response(served.model_id, generation, data.logprobs).model_dump()

    def _handle(self, served: ServedModel) -> DeploymentHandle:
        if self.cfg.adapter_batching == "per_adapter" and served.adapter_name:
            # the name the replica's multiplexer loads it under: Serve routes the request to a replica holding
            # the adapter, and its batcher splits every batch by this id (the base's requests have none)
            return self.model.options(multiplexed_model_id=served.adapter_name)
        return self.model

    def _failed(self, err: Exception) -> APIError:
        if isinstance(err, BackPressureError):
            return overloaded(f"more than {self.cfg.max_queued_requests} requests are waiting")
        # a replica that died or failed: the message is Serve's, never a secret
        return APIError(503, f"the model replica failed: {type(err).__name__}; retry", type="server_error",
                        code="replica_failed")

    async def _generate(self, served: ServedModel, requests: list[GenerationRequest]) -> list[Generation]:
        """A request's prompts in one call to a model replica; the first refusal among them answers for all."""
        try:
            generations: list[Generation] = await self._handle(served).generate_many.remote(requests)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            raise self._failed(err) from None
        for generation in generations:
            _raise_refusal(generation)
        return generations

    async def _stream(self, request: Request, served: ServedModel, requests: list[GenerationRequest],
                      chunks: StreamChunks, data: CompletionRequest | ChatRequest, tags: dict) -> StreamingResponse:
        """`stream: true`: the replica's events as server-sent events. A refusal before the first chunk (a prompt
        over the limits, overload) is still an HTTP error; one after it is an error event, never a stream that
        looks finished."""
        events = self._handle(served).options(stream=True).generate_stream.remote(requests)
        try:
            first = await events.__anext__()
        except asyncio.CancelledError:
            events.cancel()
            raise
        except Exception as err:
            raise self._failed(err) from None
        if first[0] == "error":
            raise APIError(first[1], first[2], param=first[3])
        usage = bool(data.stream_options and data.stream_options.include_usage)
        choices = len(requests) * data.n
        return StreamingResponse(self._events(request, events, chunks, choices, usage, tags),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _events(self, request: Request, events: DeploymentResponseGenerator, chunks: StreamChunks,
                      choices: int, usage: bool, tags: dict) -> AsyncIterator[str]:
        status, finished = "499", False  # until it ends otherwise, the client went away
        gone = asyncio.Event()

        async def watch() -> None:
            # Starlette notices a hang-up only when a write fails, and writes to Serve's proxy never fail: the
            # proxy's http.disconnect, read here, is how this replica learns of it
            while (await request.receive())["type"] != "http.disconnect":
                pass
            gone.set()
            events.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            for line in chunks.start(choices):
                yield line
            async for event in events:
                if event[0] == "text":
                    yield chunks.text(event[1], event[2])
                elif event[0] == "done":
                    for generation in event[1]:
                        _raise_refusal(generation)
                    for line in chunks.finish(event[1], usage):
                        yield line
                    status, finished = "200", True
        except APIError as err:
            status, finished = str(err.status), True
            yield chunks.error(err)
        except Exception as err:
            if gone.is_set():
                return  # cancelled by the watcher: nobody to tell
            log.exception("a stream failed")
            failure = self._failed(err)
            status, finished = str(failure.status), True
            yield chunks.error(failure)
        finally:
            watcher.cancel()
            if not finished:
                events.cancel()  # the replica stops the rows at their next token
            self.metrics.requests.inc(tags={**tags, "status": status})


def build_hf_app(cfg: RunConfig) -> Application:
    """The ingress bound to the model deployment, both configured from `serve:`."""
    s = cfg.serve
    data = cfg.model_dump(mode="json")
    model = HFModelServer.options(
        autoscaling_config={"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                            "target_ongoing_requests": s.target_ongoing_requests},
        max_ongoing_requests=s.max_ongoing_requests, max_queued_requests=s.max_queued_requests,
        ray_actor_options={"num_cpus": s.cpus_per_replica, "num_gpus": s.gpus_per_replica},
    ).bind(data, resolve_model(s.base_model, cfg))
    return OpenAIIngress.bind(model, data)
