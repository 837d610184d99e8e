"""The main job: every stage that exists, in order, on one config.

Today that is: ingest, annotate, select, synthesize, train (one adapter a side in train.sides), evaluate every
model of the run and write the report. Before the first stage starts, every stage's inputs are made ready and
every model reference is checked (prepare.py): the tiny model is built when the config uses it, the sample corpus
generated when the config asks for one. A run that imports its preference pairs (synthesize.source: released)
skips straight to synthesize.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from politune.annotate import AnnotateResult, annotate_documents
from politune.config import RunConfig
from politune.evaluate import EvaluateResult, evaluate_models
from politune.failures import StageFailed
from politune.ingest import IngestResult, ingest_corpus
from politune.prepare import pipeline_stages, prepare_stages
from politune.select import SelectResult, select_posts
from politune.synthesize import SynthesizeResult, synthesize_preferences
from politune.train import TrainResult, train_adapters

T = TypeVar("T")


@dataclass
class PipelineResult:
    run_uri: str
    tiny_model: str | None
    corpus: dict[str, Any] | None
    ingest: IngestResult | None  # None: the run imports its pairs
    annotate: AnnotateResult | None
    select: SelectResult | None
    synthesize: SynthesizeResult
    train: dict[str, TrainResult]
    served_id: str  # the id `politune serve` gives the base model
    serve_url: str  # and where it serves it
    evaluate: EvaluateResult | None = None


def serve_url(cfg: RunConfig) -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}/v1"


def _stage(name: str, build: Callable[[RunConfig], T], cfg: RunConfig) -> T:
    try:
        return build(cfg)
    except Exception as err:
        raise StageFailed(name) from err


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    stages = pipeline_stages(cfg)
    prepared = prepare_stages(cfg, *stages)
    ingested = _stage("ingest", ingest_corpus, cfg) if "ingest" in stages else None
    annotated = _stage("annotate", annotate_documents, cfg) if "annotate" in stages else None
    selected = _stage("select", select_posts, cfg) if "select" in stages else None
    synthesized = _stage("synthesize", synthesize_preferences, cfg)
    trained = _stage("train", train_adapters, cfg)
    evaluated = _stage("evaluate", evaluate_models, cfg)
    return PipelineResult(cfg.run_uri, prepared.tiny_model, prepared.corpus, ingested, annotated, selected,
                          synthesized, trained, cfg.serve.served_id, serve_url(cfg), evaluated)
