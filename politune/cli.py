"""`politune`: the command line. Each command calls the same builder as the job in jobs/."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

from politune.config import PRESETS, ConfigError, RunConfig, load_config, resolve_config

app = typer.Typer(help="Measure and steer the political leaning of LLMs, on Ray.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
config_app = typer.Typer(help="Show presets and validate run configs.", no_args_is_help=True)
model_app = typer.Typer(help="Build the embedded tiny model.", no_args_is_help=True)
corpus_app = typer.Typer(help="Generate a sample corpus of posts.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(model_app, name="model")
app.add_typer(corpus_app, name="corpus")

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config YAML file.")
PresetOpt = typer.Option(None, "--preset", "-p", help=f"Shipped preset: {', '.join(PRESETS)} (default local).")
SetOpt = typer.Option([], "--set", "-s", help="Override a field: FIELD.PATH=VALUE (repeatable).")


def _config(config: str | None, preset: str | None, overrides: list[str]) -> RunConfig:
    try:
        return resolve_config(config, preset, overrides)
    except ConfigError as err:
        typer.secho(str(err), fg="red", err=True)
        raise typer.Exit(2) from None


def _run_stage(build: Callable[[RunConfig], Any], show: Callable[[Any], None], config: str | None,
               preset: str | None, overrides: list[str]) -> None:
    """Resolve the config, run a stage's builder, print its summary; input problems exit 1 with the message."""
    cfg = _config(config, preset, overrides)
    try:
        show(build(cfg))
    except (FileNotFoundError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def run(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt) -> None:
    """Run the whole pipeline (tiny model, sample corpus, ingest, annotate, select, synthesize, train)."""
    from politune.console import print_pipeline
    from politune.pipeline import run_pipeline

    _run_stage(run_pipeline, print_pipeline, config, preset, set_)


@app.command()
def ingest(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt) -> None:
    """Read the configured sources into documents/ and quarantine/ under the run directory."""
    from politune.console import print_ingest
    from politune.ingest import ingest_corpus

    _run_stage(ingest_corpus, print_ingest, config, preset, set_)


@app.command()
def annotate(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt) -> None:
    """Score every document for ideology, relevance and quality with the configured LLM (resumable)."""
    from politune.annotate import annotate_documents
    from politune.console import print_annotate

    _run_stage(annotate_documents, print_annotate, config, preset, set_)


@app.command("select")
def select_(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt) -> None:
    """Choose each side's training posts from the annotations (thresholds, quantiles or source)."""
    from politune.console import print_select
    from politune.select import select_posts

    _run_stage(select_posts, print_select, config, preset, set_)


@app.command()
def synthesize(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt) -> None:
    """Each side's preference pairs (written from the selected posts, or imported), cleaned and split."""
    from politune.console import print_synthesize
    from politune.synthesize import synthesize_preferences

    _run_stage(synthesize_preferences, print_synthesize, config, preset, set_)


@app.command()
def train(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt,
          side: list[str] = typer.Option([], "--side", help="left or right (repeatable; default: train.sides)."),
          ) -> None:
    """Train one LoRA adapter a side (DPO or SFT) under Ray Train and register it; resumes a killed run."""
    from politune.console import print_train
    from politune.train import train_adapters

    _run_stage(lambda cfg: train_adapters(cfg, side or None), print_train, config, preset, set_)


@config_app.command("show")
def config_show(preset: str = typer.Argument("local", help=f"One of: {', '.join(PRESETS)}."),
                set_: list[str] = SetOpt) -> None:
    """Print a preset's fully resolved config as YAML."""
    cfg = _config(None, preset, set_)
    typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


@config_app.command("check")
def config_check(file: Path = typer.Argument(..., help="Run config YAML to validate.")) -> None:
    """Validate a run config; print what is wrong, field by field."""
    try:
        cfg = load_config(file)
    except ConfigError as err:
        typer.secho(str(err), fg="red", err=True)
        raise typer.Exit(2) from None
    typer.secho(f"{file}: valid (run {cfg.run_id} -> {cfg.run_uri}, config hash {cfg.hash()})", fg="green")


@model_app.command("build-tiny")
def model_build_tiny(out: Path = typer.Option(..., help="Folder to write the model to."),
                     seed: int = typer.Option(0, help="Same seed, byte-identical model.")) -> None:
    """Build the tiny Llama-architecture model and its tokenizer (no download)."""
    from politune.config import TinyModelConfig
    from politune.models.tiny import build_tiny_model, folder_digest

    folder = build_tiny_model(TinyModelConfig(out=str(out), seed=seed))
    info = json.loads((folder / "politune_tiny.json").read_text())
    typer.echo(f"built {folder} ({info['parameters']:,} parameters, digest {folder_digest(folder)[:12]})")


@corpus_app.command("generate")
def corpus_generate(
    n: int = typer.Option(..., "--n", min=1, help="Number of posts."),
    out: Path = typer.Option(..., help="Folder; files go to OUT/truthsocial and OUT/politosphere."),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl, jsonl.gz or parquet."),
    seed: int = typer.Option(0, help="Same seed, same corpus."),
    rows_per_file: int = typer.Option(250_000, min=1, help="Rows per output file."),
) -> None:
    """Write labelled sample posts in Truth Social and Politosphere record shapes."""
    from politune.corpus.generate import generate_corpus

    try:
        summary = generate_corpus(n, out, seed=seed, fmt=fmt, rows_per_file=rows_per_file)
    except ValueError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(2) from None
    for source, labels in summary["labels"].items():
        typer.echo(f"{source}: {sum(labels.values()):,} posts {labels} in {len(summary['files'][source])} file(s)")
    typer.echo(f"wrote {out}")


if __name__ == "__main__":
    app()
