"""The hf back end's model replica: the base loaded once, adapters through `@serve.multiplexed` (LRU), and
concurrent requests batched with `@serve.batch` into one generate call.

Adapter lifetime: the multiplexer decides which adapters a replica holds (`held`); the weights themselves are
added and deleted only under the replica's model lock, between forward passes. An adapter the multiplexer
evicts is deleted after the pass that may still be using it, and one a batch needs that was evicted meanwhile
is added back for that pass from its downloaded copy. So no forward pass ever loses an adapter mid-way.
"""

from __future__ import annotations

import asyncio
import functools
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import torch
from ray import serve

from politune.config import RunConfig
from politune.engines.metrics import StageMetrics
from politune.registry import load_registry
from politune.serve.guard import ADAPTER_NAME
from politune.serve.hf_engine import AdapterModel, Row, choice_seed
from politune.serve.protocol import GeneratedChoice, Generation, GenerationRequest
from politune.storage import resolve

COALESCED_BATCHES = 64
StreamEvent = tuple  # ("accepted",) | ("error", status, message, param) | ("text", choice, delta) | ("done", [...])
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what PEFT's load_adapter reads


class ServeMetrics:
    """On Ray's metrics endpoint (and so the dashboard), tagged by model id."""

    def __init__(self) -> None:
        from ray.util.metrics import Counter, Histogram

        tags = ("model",)
        self.requests = Counter("politune_serve_requests", "Requests answered, by model id and HTTP status.",
                                tag_keys=("model", "status"))
        self.tokens_in = Counter("politune_serve_tokens_in", "Prompt tokens, by model id.", tag_keys=tags)
        self.tokens_out = Counter("politune_serve_tokens_out", "Generated tokens, by model id.", tag_keys=tags)
        self.latency = Histogram("politune_serve_request_seconds", "Request latency, by model id.",
                                 boundaries=[0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60], tag_keys=tags)
        self.adapter_loads = Counter("politune_serve_adapter_loads", "Adapters loaded into a replica, by model id.",
                                     tag_keys=tags)
        self.cancelled = Counter("politune_serve_cancelled_requests",
                                 "Requests whose client went away before the answer, by model id.", tag_keys=tags)
        self.adapter_evictions = Counter("politune_serve_adapter_evictions",
                                         "Adapters evicted from a replica (LRU), by model id.", tag_keys=tags)
        self.queue_wait = Histogram("politune_serve_queue_wait_seconds",
                                    "Time a request waited in a model replica before its forward pass, by model id.",
                                    boundaries=[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
                                    tag_keys=tags)
        self.first_token = Histogram("politune_serve_time_to_first_token_seconds",
                                     "Time from a request's arrival at a model replica to its first generated "
                                     "token, by model id.",
                                     boundaries=[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
                                     tag_keys=tags)


class _HeldAdapter:
    """What the multiplexer caches for an adapter; its eviction tells the replica to free the weights."""

    def __init__(self, name: str, replica: HFModelServer) -> None:
        self.name, self.replica = name, replica

    async def __del__(self) -> None:  # called by @serve.multiplexed on LRU eviction
        self.replica.held.discard(self.name)
        self.replica.metrics.adapter_evictions.inc(tags={"model": self.replica.adapter_id(self.name)})


@serve.deployment(name="model")
class HFModelServer:
    def __init__(self, cfg: dict[str, Any], model_path: str) -> None:
        """`model_path`: the base's folder or hub id, resolved where the app was built (resolve_model)."""
        run = RunConfig.model_validate(cfg)
        s = run.serve
        torch.set_num_threads(s.num_threads or max(1, int(s.cpus_per_replica)))
        self.serve_cfg, self.run_uri = s, run.run_uri
        self.stage_metrics = StageMetrics(run.run_id, "serve")
        self.engine = AdapterModel(model_path, "cuda" if s.gpus_per_replica else "cpu", run.dtype)
        self.downloads = Path(tempfile.mkdtemp(prefix="politune-adapters-"))
        self.held: set[str] = set()
        self.cancelled: set[str] = set()
        self.streams: dict[str, Callable[[Row, list[int]], None]] = {}  # request id -> its streamer
        self.lock = asyncio.Lock()  # the model: one forward pass, adapter load or removal at a time
        self.waiting: deque[tuple[list[Row], asyncio.Future]] = deque()
        self.metrics = ServeMetrics()

        async def load(name: str) -> _HeldAdapter:
            return await self._load_adapter(name)

        self.get_adapter = serve.multiplexed(max_num_models_per_replica=s.max_adapters_per_replica)(load)
        self._batched.set_max_batch_size(s.max_batch_size)
        self._batched.set_batch_wait_timeout_s(s.batch_wait_timeout_s)

    def adapter_id(self, name: str | None) -> str:
        return self.serve_cfg.served_id if name is None else f"{self.serve_cfg.served_id}:{name}"

    async def _load_adapter(self, name: str) -> _HeldAdapter:
        """Fetch an adapter named in the registry (local or s3://) and add it to the model."""
        entry = load_registry(self.run_uri).get(name) if ADAPTER_NAME.match(name) else None
        if entry is None:
            raise LookupError(f"adapter {name!r} is not in the registry")
        folder = await asyncio.to_thread(self._download, entry.path, name)
        async with self.lock:
            await asyncio.to_thread(self.engine.add_adapter, name, folder)
        self.held.add(name)
        self.metrics.adapter_loads.inc(tags={"model": self.adapter_id(name)})
        return _HeldAdapter(name, self)

    def _download(self, uri: str, name: str) -> Path:
        fs, path = resolve(uri)
        folder = self.downloads / name
        folder.mkdir(parents=True, exist_ok=True)
        for file in ADAPTER_FILES:
            with fs.open_input_stream(f"{path}/{file}") as src:
                (folder / file).write_bytes(src.read())
        return folder

    async def generate_many(self, requests: list[GenerationRequest]) -> list[Generation]:
        """Several requests in one call (a /completions request's prompts): one round trip from the ingress
        instead of one a prompt; they still enter the batcher one by one, and share a forward pass."""
        arrived = time.perf_counter()
        for request in requests:
            request.arrived = request.arrived or arrived
        try:
            return list(await asyncio.gather(*(self._batched(r) for r in requests)))
        except asyncio.CancelledError:  # the client went away: stop its rows at the next token
            for request in requests:
                self.cancelled.add(request.request_id)
                self.metrics.cancelled.inc(tags={"model": self.adapter_id(request.adapter)})
            raise

    async def generate_stream(self, requests: list[GenerationRequest]) -> AsyncIterator[StreamEvent]:
        """generate_many, streamed: first ("accepted",) or ("error", status, message, param) once the prompts are
        checked, then ("text", choice, delta) as each choice's text grows, then ("done", generations). A choice
        is prompt i's k-th of n: index i * n + k. Rows asking for logprobs send no deltas (their log-probabilities
        come from a pass after generation): their text comes whole with the end."""
        arrived = time.perf_counter()
        for request in requests:
            request.arrived = arrived
            try:
                self._rows(request, Generation())
            except ValueError as err:
                yield ("error", 400, str(err), request.where.split(".")[0])
                return
        yield ("accepted",)
        loop, events = asyncio.get_running_loop(), asyncio.Queue()
        for i, request in enumerate(requests):
            if request.logprobs is None:
                self.streams[request.request_id] = self._streamer(request, i, loop, events)
        task = asyncio.ensure_future(self.generate_many(requests))
        task.add_done_callback(lambda _: events.put_nowait(None))
        try:
            while (event := await events.get()) is not None:
                yield event
            yield ("done", task.result())
        finally:
            task.cancel()  # the client went away (this generator was closed): its rows stop at the next token
            for request in requests:
                self.streams.pop(request.request_id, None)

    def _streamer(self, request: GenerationRequest, index: int, loop: asyncio.AbstractEventLoop,
                  events: asyncio.Queue) -> Callable[[Row, list[int]], None]:
        """Called from the generating thread with a row and its tokens so far: queues what its text gained."""
        sent: dict[int, int] = {}
        echo = self._prompt_text(request) if request.echo else ""

        def on_tokens(row: Row, tokens: list[int]) -> None:
            choice = index * request.n + row.choice
            text = echo + self.engine.streamed_text(row, tokens)
            if len(text) > sent.get(choice, 0):
                loop.call_soon_threadsafe(events.put_nowait, ("text", choice, text[sent.get(choice, 0):]))
                sent[choice] = len(text)
        return on_tokens

    # Several batches may be in here at once (Serve's default is one, held for the whole call): they wait for the
    # model together and _generate_coalesced runs them as one pass
    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01, max_concurrent_batches=COALESCED_BATCHES)
    async def _batched(self, requests: list[GenerationRequest]) -> list[Generation]:
        started = time.perf_counter()
        results: list[Generation] = [Generation() for _ in requests]
        rows: list[tuple[int, Row]] = []
        for i, req in enumerate(requests):
            try:
                rows.extend((i, row) for row in self._rows(req, results[i]))
            except ValueError as err:
                results[i].error = (400, str(err), req.where.split(".")[0])
        for name in sorted({row.adapter for _, row in rows if row.adapter}):
            try:
                await self.get_adapter(name)
            except Exception as err:  # an adapter that cannot be loaded fails its own requests only
                for i, row in rows:
                    if row.adapter == name:
                        results[i].error = (503, f"adapter {name!r} could not be loaded: {err}", "model")
        rows = [(i, row) for i, row in rows if results[i].error is None]
        if rows:
            choices = await self._generate_coalesced([row for _, row in rows])
            for (i, _), choice in zip(rows, choices, strict=True):
                results[i].choices.append(choice)
        for req in requests:
            self.cancelled.discard(req.request_id)
        elapsed = time.perf_counter() - started
        first_rows = {}
        for _, row in rows:
            first_rows.setdefault(row.request_id, row)
        for req, result in zip(requests, results, strict=True):
            if result.error is None:
                model = self.adapter_id(req.adapter)
                row = first_rows.get(req.request_id)
                if row is not None and row.started is not None and req.arrived:
                    self.metrics.queue_wait.observe(max(0.0, row.started - req.arrived), tags={"model": model})
                    if row.first_token is not None:
                        self.metrics.first_token.observe(row.first_token - req.arrived, tags={"model": model})
                out = sum(c.completion_tokens for c in result.choices)
                for counter, n in (self.metrics.tokens_in, result.prompt_tokens), (self.metrics.tokens_out, out):
                    if n:  # Ray's counters refuse 0
                        counter.inc(n, tags={"model": model})
                self.metrics.latency.observe(elapsed, tags={"model": model})
        self.stage_metrics.count("requests", sum(1 for r in results if r.error is None))
        return results

    def _prompt_text(self, req: GenerationRequest) -> str:
        """What echo puts before the answer: the prompt as sent, or its token ids decoded."""
        if req.prompt_ids is not None:
            return self.engine.tokenizer.decode(req.prompt_ids)
        return req.prompt or ""

    def _rows(self, req: GenerationRequest, result: Generation) -> list[Row]:
        """A request's n rows; ValueError when its prompt is over the limits."""
        s = self.serve_cfg
        ids = self.engine.prompt_ids(req.prompt, req.messages) if req.prompt_ids is None else req.prompt_ids
        if req.prompt_ids is not None:  # text the tokenizer made is in the vocabulary
            self.engine.check_ids(ids, req.where)
        result.prompt_tokens = len(ids)
        if len(ids) > s.max_prompt_tokens:
            raise ValueError(f"the prompt is {len(ids)} tokens; this server takes at most {s.max_prompt_tokens} "
                             "(serve.max_prompt_tokens)")
        limit = self.engine.max_positions
        if limit and len(ids) + req.max_tokens > limit:
            raise ValueError(f"the prompt ({len(ids)} tokens) plus max_tokens ({req.max_tokens}) is over the "
                             f"model's context of {limit} tokens")
        rows = [Row(request_id=req.request_id, prompt_ids=ids, adapter=req.adapter, max_tokens=req.max_tokens,
                    temperature=req.temperature, top_p=req.top_p, seed=choice_seed(req.seed, k), stop=req.stop,
                    logprobs=req.logprobs, echo=req.echo, choice=k,
                    prompt_text=self._prompt_text(req))
                for k in range(req.n)]
        streamer = self.streams.get(req.request_id)
        if streamer is not None:
            for row in rows:
                row.on_tokens = functools.partial(streamer, row)
        return rows

    async def _generate_coalesced(self, rows: list[Row]) -> list[GeneratedChoice]:
        """Generate a batch's rows together with every other batch waiting for the model.

        Serve closes a batch `batch_wait_timeout_s` after its first request, even while the model is still busy
        with the one before, so under load each batch holds only what arrived in those milliseconds. Whichever
        batch gets the model takes all that wait, first come first, up to max_batch_size rows (and at least the
        oldest batch); with adapter_batching per_adapter, only those of the oldest batch's adapter."""
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((rows, done))
        async with self.lock:
            if not done.done():
                taken = self._take_waiting()
                try:
                    choices = await asyncio.to_thread(self._generate_locked, [r for group, _ in taken for r in group])
                except Exception as err:
                    for _, future in taken:
                        if not future.done():
                            future.set_exception(err)
                else:
                    at = 0
                    for group, future in taken:
                        if not future.done():  # its caller may have been cancelled meanwhile
                            future.set_result(choices[at: at + len(group)])
                        at += len(group)
        return await done

    def _take_waiting(self) -> list[tuple[list[Row], asyncio.Future]]:
        first = self.waiting.popleft()
        taken, kept, size = [first], deque(), len(first[0])
        adapters = {r.adapter for r in first[0]}
        while self.waiting:
            group = self.waiting.popleft()
            fits = size + len(group[0]) <= self.serve_cfg.max_batch_size
            if fits and (self.serve_cfg.adapter_batching == "mixed" or {r.adapter for r in group[0]} == adapters):
                taken.append(group)
                size += len(group[0])
            else:
                kept.append(group)
        self.waiting = kept
        return taken

    def _generate_locked(self, rows: list[Row]) -> list[GeneratedChoice]:
        """Runs with the model lock held: make sure this batch's adapters are present, generate, then free the
        adapters the multiplexer no longer holds."""
        for name in {r.adapter for r in rows if r.adapter} - self.engine.adapters:
            self.engine.add_adapter(name, self.downloads / name)  # evicted since it was fetched
        started = time.perf_counter()
        for row in rows:
            row.started = started
        try:
            return self.engine.generate(rows, self.cancelled.__contains__)
        finally:
            for name in self.engine.adapters - self.held:
                self.engine.remove_adapter(name)
