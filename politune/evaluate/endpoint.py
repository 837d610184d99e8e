"""Which models are evaluated and where they answer: the run's own Serve app (started for the evaluation when
it is not already up, and shut down after) or any OpenAI-compatible endpoint, plus the config's extra models."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from politune.config import RunConfig
from politune.contracts.compass.schema import ADAPTER, BASE, CHECKPOINT, EXTERNAL, SCALED
from politune.engines.openai_http import EndpointError, list_models
from politune.registry import load_registry, right_share


@dataclass(frozen=True)
class Target:
    """One model to evaluate: the id its endpoint knows it by, and what it is in the run."""

    model: str
    role: str                   # base | adapter | checkpoint | scaled | external
    base_url: str
    api_key_env: str
    adapter: str | None = None
    checkpoint_of: str | None = None
    step: int | None = None
    scale_of: str | None = None  # scaled: the adapter it is at strength `scale`
    scale: float | None = None
    right_share: float | None = None  # the share of right pairs the adapter was trained on
    label: str | None = None    # external: the config's name for it, shown in the report


def own_url(cfg: RunConfig) -> str:
    host = "127.0.0.1" if cfg.serve.host in ("0.0.0.0", "::") else cfg.serve.host
    return f"http://{host}:{cfg.serve.port}/v1"


def key_env(cfg: RunConfig) -> str:
    """The variable holding the evaluated endpoint's token: the run's own app reads serve.api_key_env."""
    return cfg.evaluate.api_key_env if cfg.evaluate.base_url else cfg.serve.api_key_env


def run_targets(cfg: RunConfig, base_url: str) -> list[Target]:
    """The base and every adapter of the run's registry trained on it (with checkpoints: all, every saved
    checkpoint of each; with adapter_scales, each one's copy at every scale), as the endpoint names them; then the
    extra models."""
    e, base_id, token_env = cfg.evaluate, cfg.serve.served_id, key_env(cfg)
    targets = [Target(base_id, BASE, base_url, token_env)]
    registry = {name: entry for name, entry in load_registry(cfg.run_uri).items()
                if entry.base_model == cfg.serve.base_model}

    def order(entry) -> tuple:  # an adapter after its checkpoints, its scaled copies after it
        source = entry.checkpoint_of or entry.scale_of or entry.name
        return (source, entry.scale is not None, entry.step or 0, entry.scale or 0.0)

    for entry in sorted(registry.values(), key=order):
        name, share = entry.name, right_share(entry)
        if entry.scale_of is not None:
            if entry.scale in e.adapter_scales:
                targets.append(Target(f"{base_id}:{name}", SCALED, base_url, token_env, adapter=name,
                                      scale_of=entry.scale_of, scale=entry.scale, right_share=share))
        elif entry.checkpoint_of is None:
            targets.append(Target(f"{base_id}:{name}", ADAPTER, base_url, token_env, adapter=name, right_share=share))
        elif e.checkpoints == "all" and entry.step != _final_step(registry, entry.checkpoint_of):
            # (the last save is the final adapter itself: the path ends at the adapter's own point)
            targets.append(Target(f"{base_id}:{name}", CHECKPOINT, base_url, token_env, adapter=name,
                                  checkpoint_of=entry.checkpoint_of, step=entry.step, right_share=share))
    targets += [Target(x.model, EXTERNAL, x.base_url, x.api_key_env, label=x.name) for x in e.extra_models]
    return targets


def _final_step(registry: dict, adapter: str) -> int | None:
    final = registry.get(adapter)
    return final.metrics.get("global_step") if final is not None else None


def check_targets(targets: list[Target]) -> None:
    """Every endpoint answers and lists every model asked of it; else EndpointError naming the endpoint."""
    by_url: dict[tuple[str, str], list[str]] = {}
    for t in targets:
        by_url.setdefault((t.base_url, t.api_key_env), []).append(t.model)
    for (url, key_env), models in by_url.items():
        listed = list_models(url, key_env)
        missing = [m for m in models if m not in listed]
        if missing:
            served = ", ".join(listed) or "nothing"
            raise EndpointError(f"{url} does not serve {', '.join(missing)}; it serves {served}")


# how evaluate gets the run's own Serve app for a while: a context manager yielding its base URL (serve.app.serving,
# which the commands, jobs and pipeline pass: evaluate does not import the serve stage)
ServeRun = Callable[[RunConfig], AbstractContextManager[str]]


@contextmanager
def run_endpoint(cfg: RunConfig, serve_run: ServeRun | None = None) -> Iterator[str]:
    """The base URL the run's models answer at. With evaluate.base_url unset, the run's own Serve app: reused
    when it already serves this run at serve.host:serve.port, else started by `serve_run` for the evaluation."""
    if cfg.evaluate.base_url:
        yield cfg.evaluate.base_url
        return
    url = own_url(cfg)
    expected = {t.model for t in run_targets(cfg, url) if t.role != EXTERNAL}
    try:
        listed = set(list_models(url, cfg.serve.api_key_env, timeout_s=3))
    except EndpointError:
        listed = None
    if listed is not None:
        if not expected <= listed:
            raise EndpointError(f"{url} is taken by an endpoint that does not serve this run's models (it lists "
                                f"{', '.join(sorted(listed))}): stop it, set serve.port, or set evaluate.base_url")
        yield url
        return
    if serve_run is None:
        raise EndpointError(f"nothing serves this run's models at {url}: start `politune serve` there, set "
                            "evaluate.base_url, or evaluate with `politune evaluate` (which serves them itself)")
    with serve_run(cfg) as base_url:
        yield base_url
