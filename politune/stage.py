"""What a stage is, declared once: each stage package exports its STAGE (an instance of Stage below), and
politune/stages.py lists them in the pipeline's order. The pipeline, preparation, `politune runs`, the console, the
CLI's stage commands and jobs/ iterate that list; adding a stage touches its own package and one line there."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from politune.config import RunConfig
from politune.storage import Manifest

# (cfg, manifest) -> {artifact: (config hash, inputs)}: what the stage's artifacts are made of; the stage is done while
# the manifest records each of them so (pipeline.is_done)
Identity = Callable[[RunConfig, Manifest], dict[str, tuple[str, dict[str, str]]]]
ModelFields = Callable[[RunConfig], list[tuple[str, str]]]


def no_models(cfg: RunConfig) -> list[tuple[str, str]]:
    return []


def no_figures(output: Any, seconds: float) -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Stage:
    name: str                    # its command (`politune <name>`), job (jobs/<name>.py) and manifest entry
    help: str                    # the command's help: what it does, in a sentence
    reads: tuple[str, ...]       # the run directory's artifacts it reads
    writes: tuple[str, ...]      # the artifacts it writes
    section: str                 # its config section
    build: Callable[..., Any]    # its builder: (cfg, **options) -> its result
    summary: Callable[[Any], list[Any]]       # what the console prints of a result: lines (rich markup) and tables
    identity: Identity | None = None          # None: `politune run` does not run it by itself (serve, report)
    done_when: str = ""          # the manifest artifact whose record means it is done ("adapter:": any adapter)
    model_fields: ModelFields = no_models      # the (config field, model reference) pairs it loads: checked first
    sample_corpus: bool = False  # it reads the sample corpus when the config has a `corpus:` section (ingest)
    figures: Callable[[Any, float], dict[str, Any]] = no_figures  # its figures for the manifest: (result, seconds)
    sides: bool = False          # it takes --side (train: which adapters)
    serves: bool = False         # it asks the run's models through an endpoint: handed serve's `serving` (evaluate)
    then: tuple[str, ...] = ()   # stages that always run after it, by name (evaluate: report)


def per_second(n: float, seconds: float) -> float | None:
    """A figure's rate, for the manifest: n over the stage's seconds."""
    return round(n / seconds, 2) if seconds > 0 else None


def lazy(module: str, name: str) -> Callable[..., Any]:
    """`module.name`, imported when first called. A stage's code imports Ray, pyarrow and torch; its declaration is
    read by every command (`politune --help` too), which should not wait seconds for them."""
    def call(*args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module(module), name)(*args, **kwargs)

    call.__name__, call.__qualname__ = name, f"{module}.{name}"
    return call


def lazy_exports(package: str, module: str) -> Callable[[str], Any]:
    """A stage package's module __getattr__ (PEP 562): its public names (`from politune.annotate import
    annotate_documents`) come from `module`, imported on first use."""
    def getattr_(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(module), name)

    return getattr_
