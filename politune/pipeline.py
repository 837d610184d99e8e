"""The main job: every stage, in order, on one config, skipping what is already done.

The stages are ingest, annotate, select, synthesize, train (one adapter a side in train.sides) and evaluate, which
serves the base model with every adapter (serve.app.serving) and asks them the instruments; the report is built
from the answers after it (report.build_report). A run that imports its preference pairs (synthesize.source:
released) starts at synthesize.

A stage is done when the run's manifest records each of its artifacts as made with the stage's config hash from
its inputs as they are now (`<stage>_identity`): the source files' paths and sizes for ingest, the upstream
artifacts' fingerprints for the others. A done stage is skipped and says so; a change to a stage's config section
or to anything upstream of it makes it run again. `from_stage` reruns that stage and every later one; `only` runs
one stage whatever the manifest says. Before the first stage starts, what the stages that will run need is made
ready and every model reference is checked (prepare.py).

Each stage that runs is recorded in the manifest's `stages`: start and end, seconds, the code version and its own
figures (throughput, tokens, steps).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from politune import stages as registry
from politune.config import RunConfig
from politune.failures import StageFailed
from politune.models import model_revision
from politune.stage import Stage
from politune.stage_watch import StageWatch
from politune.stages import pipeline_stages, prepare_stages
from politune.storage import Manifest


@dataclass
class PipelineResult:
    run_uri: str
    tiny_model: str | None
    corpus: dict[str, Any] | None
    served_id: str  # the id `politune serve` gives the base model
    serve_url: str  # and where it serves it
    outputs: dict[str, Any] = field(default_factory=dict)  # stage -> its result, for the stages that ran (and report)
    skipped: dict[str, str] = field(default_factory=dict)  # stage -> why, in the order of the stages
    adapters: list[str] = field(default_factory=list)  # every adapter the manifest records, trained now or before


def serve_url(cfg: RunConfig) -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}/v1"


def is_done(cfg: RunConfig, stage: str, manifest: Manifest) -> bool:
    """Whether the manifest records every artifact of `stage` as made with this config from today's inputs."""
    try:
        made_of = registry.stage(stage).identity(cfg, manifest)
    except FileNotFoundError:  # ingest's sources are not there (yet): nothing to compare with
        return False
    return all(manifest.is_current(artifact, *identity) for artifact, identity in made_of.items())


def check_stage_choice(cfg: RunConfig, from_stage: str | None, only: str | None) -> None:
    stages = pipeline_stages(cfg)
    if from_stage and only:
        raise ValueError("give --from or --only, not both")
    for flag, stage in (("--from", from_stage), ("--only", only)):
        if stage is not None and stage not in stages:
            raise ValueError(f"{flag} {stage}: not a stage of this run; its stages are {', '.join(stages)}")


def planned_stages(cfg: RunConfig, from_stage: str | None = None, only: str | None = None) -> tuple[str, ...]:
    """The stages that will (or may) run: with `only`, that one; else every stage from `from_stage` or from the
    first one not done. What these need is prepared before the first starts; a stage among them is still skipped
    when, once the stages before it have run, it turns out done."""
    check_stage_choice(cfg, from_stage, only)
    stages = pipeline_stages(cfg)
    if only:
        return (only,)
    if from_stage:
        return stages[stages.index(from_stage):]
    manifest = Manifest(cfg.run_uri)
    for i, stage in enumerate(stages):
        if not is_done(cfg, stage, manifest):
            return stages[i:]
    return ()


def run_pipeline(cfg: RunConfig, from_stage: str | None = None, only: str | None = None) -> PipelineResult:
    stages = pipeline_stages(cfg)
    planned = planned_stages(cfg, from_stage, only)
    prepared = prepare_stages(cfg, *planned)
    forced = set(planned) if (from_stage or only) else set()
    # planned_stages found the first planned stage not done (ingest's check lists every source file: once is enough)
    known_due = {planned[0]} if planned and not forced else set()
    result = PipelineResult(cfg.run_uri, prepared.tiny_model, prepared.corpus, cfg.serve.served_id, serve_url(cfg))
    for stage in stages:
        manifest = Manifest(cfg.run_uri)
        if stage not in planned:
            result.skipped[stage] = "not asked (--only)" if only else _done_since(manifest, stage)
            continue
        if stage not in forced | known_due and is_done(cfg, stage, manifest):
            result.skipped[stage] = _done_since(manifest, stage)
            continue
        s = registry.stage(stage)
        result.outputs[stage] = _run_stage(s, cfg)
        for follows in s.then:  # evaluate: the report
            result.outputs[follows] = build(registry.stage(follows), cfg)
    result.adapters = sorted(a.removeprefix("adapter:") for a in Manifest(cfg.run_uri).data["artifacts"]
                             if a.startswith("adapter:"))
    return result


def build(s: Stage, cfg: RunConfig) -> Any:
    """One stage's builder (stages.build), apart so that a test can stand in for it."""
    return registry.build(s, cfg)


def _run_stage(s: Stage, cfg: RunConfig) -> Any:
    started_at, start = datetime.now(timezone.utc), time.perf_counter()
    watch = StageWatch(s.name, cfg.run_id)
    try:
        with watch:
            output = build(s, cfg)
    except Exception as err:
        raise StageFailed(s.name) from err
    seconds = time.perf_counter() - start
    figures = stage_figures(s, output, seconds)
    watch.console.print(" · ".join([f"{s.name + ':':<11} done in {seconds:.0f} s", *figure_words(figures)]))
    models = {ref: model_revision(ref, cfg) for _, ref in s.model_fields(cfg)}
    Manifest(cfg.run_uri).record_stage(s.name, started_at=started_at, seconds=seconds, models=models, figures=figures)
    return output


def stage_figures(s: Stage, output: Any, seconds: float) -> dict[str, Any]:
    """A stage's own figures for the manifest: how much it did and how fast."""
    return s.figures(output, seconds)


def figure_words(figures: dict[str, Any]) -> list[str]:
    """A stage's numeric figures as words: `300 rows read`, `52.1 rows/s`."""
    words = []
    for name, value in figures.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if name.endswith("_per_s"):
            words.append(f"{value:,.1f} {name.removesuffix('_per_s').replace('_', ' ')}/s")
        else:
            words.append(f"{value:,} {name.replace('_', ' ')}")
    return words


def _done_since(manifest: Manifest, stage: str) -> str:
    record = manifest.stage(stage)
    when = f" (ran {datetime.fromisoformat(record['finished_at']):%Y-%m-%d %H:%M %Z})" if record else ""
    return f"done{when}; config and inputs unchanged"
