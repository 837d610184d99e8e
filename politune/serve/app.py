"""Which Serve application a config asks for, and starting it: `politune serve`, `serve run serve/local.yaml`
and the KubeRay RayService all come through here."""

from __future__ import annotations

import ipaddress
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ray.serve import Application

from politune.config import RunConfig, ServeConfig, resolve_config
from politune.prepare import prepares
from politune.serve.guard import ModelCatalog

APP_NAME = "politune"


def serve_app(cfg: RunConfig) -> Application:
    """The Serve application for `serve.backend`: hf (transformers + PEFT) or vllm (ray.serve.llm)."""
    cfg = cfg.with_absolute_paths()  # replicas run in folders of their own
    if cfg.serve.backend == "vllm":
        from politune.serve.llm_app import build_llm_app

        return build_llm_app(cfg)
    from politune.serve.hf_app import build_hf_app

    return build_hf_app(cfg)


def build_app(args: dict[str, Any]) -> Application:
    """Application builder for Serve config files (`import_path: politune.serve.app:build_app`).
    args: `config` (a run config file), or `preset` (default local), and `set` (a list of FIELD.PATH=VALUE)."""
    return serve_app(resolve_config(args.get("config"), args.get("preset"), list(args.get("set") or [])))


@dataclass
class Serving:
    base_url: str         # what an OpenAI client takes as base_url
    model_ids: list[str]
    backend: str = ""     # serve.backend
    run_uri: str = ""     # the run whose adapters it serves
    warning: str | None = None  # said first: served beyond this machine without a token, as the config allows


def serve_summary(serving: Serving) -> list[str]:
    """Where the app serves, what, and how to ask it."""
    return [*([f"WARNING: {serving.warning}"] if serving.warning else []),
            f"serving at {serving.base_url}  (backend {serving.backend}, run {serving.run_uri})",
            *(f"  model: {model_id}" for model_id in serving.model_ids),
            f'probe:   politune probe "What do you think of taxes?" --url {serving.base_url} '
            f"--model {serving.model_ids[-1]}"]


def serve_models(cfg: RunConfig) -> list[tuple[str, str]]:
    """The model the run's app loads: (config field, reference)."""
    return [("serve.base_model", cfg.serve.base_model)]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def exposure(s: ServeConfig) -> str | None:
    """Refuse to serve beyond this machine without a token: a ValueError naming the variable to set, unless
    `serve.allow_unauthenticated` says so, in which case the warning to repeat. None on loopback or with a token."""
    if is_loopback(s.host) or os.environ.get(s.api_key_env):
        return None
    open_to = f"serve.host={s.host} serves beyond this machine, and ${s.api_key_env} is unset or empty"
    if not s.allow_unauthenticated:
        raise ValueError(f"{open_to}: anyone who reaches it could use every model. Set {s.api_key_env} to a token "
                         "(clients send it as their API key), serve on 127.0.0.1, or set "
                         "serve.allow_unauthenticated: true to serve it open on purpose")
    return f"{open_to}: anyone who reaches it can use every model (serve.allow_unauthenticated: true)"


def start_serving(cfg: RunConfig) -> Serving:
    """Deploy the app on the configured Ray (a local one on 127.0.0.1 unless RAY_ADDRESS is set), its HTTP proxy
    bound to serve.host:serve.port; returns once every replica is up. Serving beyond this machine without a token
    is refused first, before any model is built or Ray started (exposure)."""
    warning = exposure(cfg.serve)
    serving = _start_serving(cfg)
    serving.warning = warning
    return serving


@prepares(serve_models)
def _start_serving(cfg: RunConfig) -> Serving:
    from ray import serve

    from politune.ray_runtime import init_ray

    s = cfg.serve
    catalog = ModelCatalog(cfg.run_uri, s.served_id, s.base_model)  # a missing or unreadable registry fails here
    init_ray(cfg)
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s})
    serve.run(serve_app(cfg), name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    base_url = f"http://{host}:{s.port}/v1"
    wait_until_every_proxy_answers(base_url, s.api_key_env, proxies=len(serve.status().proxies))
    return Serving(base_url, catalog.model_ids(), s.backend, cfg.run_uri)


@contextmanager
def serving(cfg: RunConfig) -> Iterator[str]:
    """The run's app served for the length of a block (evaluate's own endpoint): yields its base URL; on the way out
    the app is deleted, and Serve shut down when it was started for it (its proxy goes too, freeing serve.port)."""
    from ray import serve

    from politune.ray_runtime import init_ray

    init_ray(cfg)
    serve_was_up = serve_is_running()
    started = start_serving(cfg)
    try:
        yield started.base_url
    finally:
        if serve_was_up:
            serve.delete(APP_NAME)  # other applications may be served beside it: only ours goes
        else:
            serve.shutdown()


def serve_is_running() -> bool:
    """Whether this Ray cluster already runs Serve (its controller actor exists)."""
    import ray
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return False
    return True


def wait_until_every_proxy_answers(base_url: str, api_key_env: str, proxies: int, timeout_s: float = 120) -> None:
    """serve.run returns once the replicas are up, but a proxy on another node may not have the route table
    yet and answers 404 (Ray Serve's proxies tell only on /-/healthz). Proxies of nodes sharing one machine
    share its port (SO_REUSEPORT), and a load balancer in front of a cluster spreads connections the same way:
    so ask on fresh connections until 8 a proxy in a row have listed the models."""
    from politune.engines.openai_http import EndpointError, list_models

    needed, in_a_row, last = 8 * max(proxies, 1), 0, ""
    deadline = time.monotonic() + timeout_s
    while in_a_row < needed:
        try:
            list_models(base_url, api_key_env)
            in_a_row += 1
        except EndpointError as err:
            in_a_row, last = 0, str(err)
            if err.status in (401, 403) or time.monotonic() > deadline:
                raise EndpointError(f"the Serve app is deployed but does not answer: {last}", err.status) from None
            time.sleep(0.25)
