"""The main job: every stage that exists, in order, on one config.

Today that is: build the embedded tiny model (when the config uses it), generate the sample corpus
(when the config asks for one), ingest, annotate, select, synthesize, train (one adapter a side in
train.sides), evaluate every model of the run and write the report. A run that imports its preference
pairs (synthesize.source: released) skips straight to synthesize.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from politune.annotate import AnnotateResult, annotate_documents
from politune.config import TINY_MODEL, RunConfig
from politune.corpus.generate import corpus_is_current, generate_corpus
from politune.evaluate import EvaluateResult, evaluate_models
from politune.ingest import IngestResult, ingest_corpus
from politune.models import ensure_model_files
from politune.select import SelectResult, select_posts
from politune.synthesize import SynthesizeResult, synthesize_preferences
from politune.train import TrainResult, train_adapters


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


def uses_tiny_model(cfg: RunConfig) -> bool:
    refs = (cfg.annotate.model, cfg.synthesize.model, cfg.train.base_model, cfg.serve.base_model)
    return TINY_MODEL in refs


def ensure_tiny_model(cfg: RunConfig) -> str:
    return ensure_model_files(cfg, "tiny_model", TINY_MODEL)


def ensure_corpus(cfg: RunConfig) -> dict[str, Any]:
    c = cfg.corpus
    assert c is not None
    if not corpus_is_current(c.out, c.n, c.seed, c.format):
        return generate_corpus(c.n, c.out, seed=c.seed, fmt=c.format, rows_per_file=c.rows_per_file)
    return json.loads((Path(c.out) / "corpus.json").read_text())


def serve_url(cfg: RunConfig) -> str:
    return f"http://{cfg.serve.host}:{cfg.serve.port}/v1"


def run_pipeline(cfg: RunConfig) -> PipelineResult:
    tiny = ensure_tiny_model(cfg) if uses_tiny_model(cfg) else None
    if cfg.synthesize.source == "released":
        synthesized = synthesize_preferences(cfg)
        trained = train_adapters(cfg)
        return PipelineResult(cfg.run_uri, tiny, None, None, None, None, synthesized, trained,
                              cfg.serve.served_id, serve_url(cfg), evaluate_models(cfg))
    corpus = ensure_corpus(cfg) if cfg.corpus is not None else None
    ingested = ingest_corpus(cfg)
    annotated = annotate_documents(cfg)
    selected = select_posts(cfg)
    synthesized = synthesize_preferences(cfg)
    trained = train_adapters(cfg)
    return PipelineResult(cfg.run_uri, tiny, corpus, ingested, annotated, selected, synthesized, trained,
                          cfg.serve.served_id, serve_url(cfg), evaluate_models(cfg))
