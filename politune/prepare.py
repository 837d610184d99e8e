"""What a stage needs before Ray starts, made ready in one place.

- The embedded tiny model is built when a stage's config refers to it (`tiny`) and it is missing or stale.
- Every other model reference a stage loads locally is checked (models/references.py): a local folder must hold a
  model, a hub id must be cached or reachable; otherwise the error names the config field.
- Ingest generates the sample corpus when the config asks for one (`corpus:`) and it is not there yet.

Each stage builder is wrapped in `@prepares(stage)`, so a command, a job or a caller of the Python API stands on
its own; `politune run` prepares every stage it will run before the first one starts. Preparing what is already
there costs a file read or two.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from politune.config import TINY_MODEL, RunConfig
from politune.models.references import check_local_model, check_model_reference

STAGES = ("ingest", "annotate", "select", "synthesize", "train", "serve", "evaluate")
F = TypeVar("F", bound=Callable[..., Any])


def pipeline_stages(cfg: RunConfig) -> tuple[str, ...]:
    """The stages `politune run` runs for this config, in order (a run that imports its pairs starts at synthesize;
    serving is part of evaluate, which starts the run's app)."""
    if cfg.synthesize.source == "released":
        return ("synthesize", "train", "evaluate")
    return ("ingest", "annotate", "select", "synthesize", "train", "evaluate")


def model_fields(cfg: RunConfig, stage: str) -> list[tuple[str, str]]:
    """The (config field, model reference) pairs a stage loads on this side of an HTTP endpoint."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    s = cfg.synthesize
    if stage == "annotate":
        return [("annotate.model", cfg.annotate.model)]
    if stage == "synthesize" and s.source == "generate":
        writer = [] if s.engine == "openai" else [("synthesize.model", s.model)]  # openai: the endpoint's model
        return writer + ([("annotate.model", cfg.annotate.model)] if s.consistency_check else [])
    if stage == "train":
        return [("train.base_model", cfg.train.base_model)]
    if stage == "serve" or (stage == "evaluate" and not cfg.evaluate.base_url):  # evaluate starts the run's app
        return [("serve.base_model", cfg.serve.base_model)]
    return []


@dataclass
class Prepared:
    tiny_model: str | None = None            # the tiny model's folder, when a stage uses it
    tiny_model_built: bool = False           # built now (it was missing or stale)
    corpus: dict[str, Any] | None = None     # the sample corpus (ingest with a corpus section)
    corpus_generated: bool = False           # written now
    models: dict[str, str] = field(default_factory=dict)  # config field -> what from_pretrained loads


def prepare_stages(cfg: RunConfig, *stages: str) -> Prepared:
    """Make ready what `stages` need (see the module's doc); raises ModelReferenceError naming the field."""
    prepared = Prepared()
    fields = [pair for stage in stages for pair in model_fields(cfg, stage)]
    for name, ref in fields:  # every reference is checked before anything is built
        if ref != TINY_MODEL:
            prepared.models[name] = check_model_reference(name, ref)
    if any(ref == TINY_MODEL for _, ref in fields):
        prepared.tiny_model, prepared.tiny_model_built = ensure_tiny_model(cfg)
        for name, ref in fields:
            if ref == TINY_MODEL:
                prepared.models[name] = prepared.tiny_model
    if "ingest" in stages and cfg.corpus is not None:
        prepared.corpus, prepared.corpus_generated = ensure_corpus(cfg)
    return prepared


def ensure_tiny_model(cfg: RunConfig) -> tuple[str, bool]:
    """The tiny model's folder, built when missing or stale; and whether it was built now."""
    from politune.world.tiny import build_tiny_model, tiny_model_is_current

    tiny = cfg.tiny_model
    built = not tiny_model_is_current(tiny)
    if built:
        if tiny.warm:
            print(f"tiny model: warming it on the synthetic world ({tiny.warm_steps} steps; once, then cached in "
                  f"{tiny.out}) ...", flush=True)
        build_tiny_model(tiny, report=lambda step, loss: print(f"  step {step}/{tiny.warm_steps}: loss {loss:.3f}",
                                                               flush=True))
    return check_local_model("tiny_model.out", cfg.tiny_model.out), built


def ensure_corpus(cfg: RunConfig) -> tuple[dict[str, Any], bool]:
    """The sample corpus's summary, generated when missing or made with other parameters; and whether it was
    generated now."""
    from politune.corpus.generate import corpus_is_current, generate_corpus

    c = cfg.corpus
    assert c is not None
    if corpus_is_current(c.out, c.n, c.seed, c.format):
        return json.loads((Path(c.out) / "corpus.json").read_text()), False
    return generate_corpus(c.n, c.out, seed=c.seed, fmt=c.format, rows_per_file=c.rows_per_file), True


def prepares(*stages: str) -> Callable[[F], F]:
    """Decorate a stage builder whose first argument is the RunConfig: prepare `stages` before it runs."""
    def decorate(build: F) -> F:
        @functools.wraps(build)
        def run(cfg: RunConfig, *args: Any, **kwargs: Any) -> Any:
            prepare_stages(cfg, *stages)
            return build(cfg, *args, **kwargs)
        return run  # type: ignore[return-value]
    return decorate
