"""The registry of stages: each stage package declares its STAGE (politune/stage.py); this lists them in the order
`politune run` runs them, and is what the pipeline, preparation, `politune runs`, the console, the CLI's stage
commands and jobs/ iterate. A new stage is its own package and one line here."""

from __future__ import annotations

from typing import Any

from politune import annotate, evaluate, ingest, report, select, serve, synthesize, train
from politune.config import RunConfig
from politune.prepare import Prepared, prepare
from politune.stage import Stage

PIPELINE: tuple[Stage, ...] = (ingest.STAGE, annotate.STAGE, select.STAGE, synthesize.STAGE, train.STAGE,
                               evaluate.STAGE)
# not run by `politune run` on their own: serve (`politune serve`; evaluate starts it for a while) and report (after
# evaluate, and `politune report`)
OTHERS: tuple[Stage, ...] = (serve.STAGE, report.STAGE)
BY_NAME: dict[str, Stage] = {s.name: s for s in (*PIPELINE, *OTHERS)}


def stage(name: str) -> Stage:
    if name not in BY_NAME:
        raise ValueError(f"unknown stage {name!r}; expected one of {', '.join(BY_NAME)}")
    return BY_NAME[name]


def pipeline_stages(cfg: RunConfig) -> tuple[str, ...]:
    """The stages `politune run` runs for this config, in order: a run that imports its pairs (synthesize.source:
    released) starts where they are read."""
    names = tuple(s.name for s in PIPELINE)
    if cfg.synthesize.source == "released":
        return names[names.index(synthesize.STAGE.name):]
    return names


def model_fields(cfg: RunConfig, name: str) -> list[tuple[str, str]]:
    """The (config field, model reference) pairs a stage loads on this side of an HTTP endpoint."""
    return stage(name).model_fields(cfg)


def prepare_stages(cfg: RunConfig, *names: str) -> Prepared:
    """Make ready what the named stages need before any starts (prepare.py): their models and the sample corpus."""
    chosen = [stage(name) for name in names]
    return prepare(cfg, [pair for s in chosen for pair in s.model_fields(cfg)], any(s.sample_corpus for s in chosen))


def build(s: Stage, cfg: RunConfig, **options: Any) -> Any:
    """Run one stage's builder; a stage that asks the run's models is handed serve's `serving` to start them."""
    if s.serves:
        from politune.serve.app import serving

        options["serve_run"] = serving
    return s.build(cfg, **options)


def run_stage(s: Stage, cfg: RunConfig, **options: Any) -> list[tuple[Stage, Any]]:
    """A stage, then the stages that always follow it (its `then`): each with its result, in order."""
    done = [(s, build(s, cfg, **options))]
    return done + [(stage(name), build(stage(name), cfg)) for name in s.then]
