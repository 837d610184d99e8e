"""Which Serve application a config asks for, and starting it: `politune serve`, `serve run serve/local.yaml`
and the KubeRay RayService all come through here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ray.serve import Application

from politune.config import RunConfig, resolve_config
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


@prepares("serve")
def start_serving(cfg: RunConfig) -> Serving:
    """Deploy the app on the configured Ray (a local one on 127.0.0.1 unless RAY_ADDRESS is set), its HTTP proxy
    bound to serve.host:serve.port; returns once every replica is up."""
    from ray import serve

    from politune.ray_runtime import init_ray

    s = cfg.serve
    catalog = ModelCatalog(cfg.run_uri, s.served_id, s.base_model)  # a missing or unreadable registry fails here
    init_ray(cfg)
    serve.start(http_options={"host": s.host, "port": s.port, "request_timeout_s": s.request_timeout_s})
    serve.run(serve_app(cfg), name=APP_NAME, route_prefix="/")
    host = "127.0.0.1" if s.host in ("0.0.0.0", "::") else s.host
    return Serving(f"http://{host}:{s.port}/v1", catalog.model_ids())
