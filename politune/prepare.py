"""What a stage needs before Ray starts, made ready in one place.

- The embedded tiny model is built when a stage's config refers to it (`tiny`) and it is missing or stale.
- Every other model reference a stage loads locally is checked (models/references.py): a local folder must hold a
  model, a hub id must be cached or reachable; otherwise the error names the config field.
- Ingest generates the sample corpus when the config asks for one (`corpus:`) and it is not there yet.

Each stage builder is wrapped in `@prepares(its model fields)`, so a command, a job or a caller of the Python API
stands on its own; `politune run` prepares every stage it will run before the first one starts (stages.py).
Preparing what is already there costs a file read or two.
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

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class Prepared:
    tiny_model: str | None = None            # the tiny model's folder, when a stage uses it
    tiny_model_built: bool = False           # built now (it was missing or stale)
    corpus: dict[str, Any] | None = None     # the sample corpus (ingest with a corpus section)
    corpus_generated: bool = False           # written now
    models: dict[str, str] = field(default_factory=dict)  # config field -> what from_pretrained loads


def prepare(cfg: RunConfig, fields: list[tuple[str, str]], sample_corpus: bool = False) -> Prepared:
    """Make ready the models `fields` name ((config field, model reference) pairs) and, with `sample_corpus`, the
    sample corpus the config asks for (see the module's doc); raises ModelReferenceError naming the field."""
    prepared = Prepared()
    for name, ref in fields:  # every reference is checked before anything is built
        if ref != TINY_MODEL:
            prepared.models[name] = check_model_reference(name, ref)
    if any(ref == TINY_MODEL for _, ref in fields):
        prepared.tiny_model, prepared.tiny_model_built = ensure_tiny_model(cfg)
        for name, ref in fields:
            if ref == TINY_MODEL:
                prepared.models[name] = prepared.tiny_model
    if sample_corpus and cfg.corpus is not None:
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


def prepares(model_fields: Callable[[RunConfig], list[tuple[str, str]]],
             sample_corpus: bool = False) -> Callable[[F], F]:
    """Decorate a stage builder whose first argument is the RunConfig: prepare the models `model_fields(cfg)` names
    (and the sample corpus, with `sample_corpus`) before it runs."""
    def decorate(build: F) -> F:
        @functools.wraps(build)
        def run(cfg: RunConfig, *args: Any, **kwargs: Any) -> Any:
            prepare(cfg, model_fields(cfg), sample_corpus)
            return build(cfg, *args, **kwargs)
        return run  # type: ignore[return-value]
    return decorate
