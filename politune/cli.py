"""`politune`: the command line. Each command calls the same builder as the job in jobs/."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
import yaml

from politune.config import PRESETS, ConfigError, RunConfig, load_config, resolve_config
from politune.stage import Stage
from politune.stages import PIPELINE

app = typer.Typer(help="Measure and steer the political leaning of LLMs, on Ray.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
config_app = typer.Typer(help="Show presets and validate run configs.", no_args_is_help=True)
model_app = typer.Typer(help="Build the embedded tiny model.", no_args_is_help=True)
corpus_app = typer.Typer(help="Generate a sample corpus of posts.", no_args_is_help=True)
runs_app = typer.Typer(help="The runs in a storage root: `politune runs` lists them, `politune runs show RUN` shows "
                            "one.", invoke_without_command=True)
app.add_typer(config_app, name="config")
app.add_typer(runs_app, name="runs")
app.add_typer(model_app, name="model")
app.add_typer(corpus_app, name="corpus")

ConfigOpt = typer.Option(None, "--config", "-c", help="Run config YAML file.")
PresetOpt = typer.Option(None, "--preset", "-p", help=f"Shipped preset: {', '.join(PRESETS)} (default local).")
SetOpt = typer.Option([], "--set", "-s", help="Override a field: FIELD.PATH=VALUE (repeatable).")
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Stream Ray's and the workers' output here too (also: "
                          "POLITUNE_VERBOSE=1); by default it stays in Ray's log files and a failure is told once.")


def _config(config: str | None, preset: str | None, overrides: list[str]) -> RunConfig:
    try:
        return resolve_config(config, preset, overrides)
    except ConfigError as err:
        typer.secho(str(err), fg="red", err=True)
        raise typer.Exit(2) from None


Stages = tuple[str, ...] | Callable[[RunConfig], tuple[str, ...]]


def _run(stages: Stages, run: Callable[[RunConfig], Any], config: str | None, preset: str | None,
         overrides: list[str], verbose: bool, **options: Any) -> None:
    """A command over `stages` (command.py): config, preparation, run; a failure exits 1 with one message."""
    from politune.command import run_command

    code = run_command(stages, run, config, preset, overrides, verbose=verbose, **options)
    if code:
        raise typer.Exit(code)


@app.command()
def run(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt, verbose: bool = VerboseOpt,
        from_stage: str = typer.Option(None, "--from", help="rerun this stage and every later one"),
        only: str = typer.Option(None, "--only", help="run this stage alone, done or not")) -> None:
    """Run the whole study, skipping the stages already done.

    Tiny model, sample corpus, ingest, annotate, select, synthesize, train, evaluate, report: a stage is skipped
    while the run's manifest records it as done with this config and these inputs."""
    def run_all(cfg: RunConfig) -> None:
        from politune.console import config_args, print_pipeline
        from politune.pipeline import run_pipeline

        print_pipeline(run_pipeline(cfg, from_stage, only), config_args(config, preset, set_))

    def stages(cfg: RunConfig) -> tuple[str, ...]:
        from politune.pipeline import planned_stages

        return planned_stages(cfg, from_stage, only)

    _run(stages, run_all, config, preset, set_, verbose, announce=False, name="run")


SideOpt = typer.Option([], "--side", help="left, right or a train.mixtures name (repeatable; default: train.sides, "
                       "then train.mixtures).")


def _stage_command(stage: Stage) -> None:
    """`politune <stage>`: the stage's builder on the config, then the stages that follow it; each result's summary."""
    def run_stage(cfg: RunConfig, **options: Any) -> None:
        from politune.console import print_outputs
        from politune.stages import run_stage as run

        print_outputs(run(stage, cfg, **options))

    if stage.sides:
        def command(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt,
                    side: list[str] = SideOpt, verbose: bool = VerboseOpt) -> None:
            _run((stage.name,), lambda cfg: run_stage(cfg, sides=side or None), config, preset, set_, verbose)
    else:
        def command(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt,
                    verbose: bool = VerboseOpt) -> None:
            _run((stage.name,), run_stage, config, preset, set_, verbose)
    command.__doc__ = stage.help
    app.command(stage.name)(command)


for _stage in PIPELINE:
    _stage_command(_stage)


@app.command()
def report(
    run_dir: str = typer.Argument(..., help="The run directory (local folder or s3://bucket/prefix/run_id)."),
    pct_path: str = typer.Option(None, help="The PCT weights file, when the run's eval/evaluation.json lacks it."),
    bootstrap: int = typer.Option(None, min=100, help="Bootstrap resamples for the 95% intervals (default: "
                                  "the evaluation's)."),
    seed: int = typer.Option(None, help="The bootstrap's seed (default: the evaluation's)."),
) -> None:
    """Rebuild a run's report (compass plot, tables, HTML) from its stored answers; no model is asked."""
    from politune import report as report_stage
    from politune.console import print_summary
    from politune.report import build_report

    try:
        print_summary(report_stage.STAGE, build_report(run_dir, pct_path=pct_path, bootstrap=bootstrap, seed=seed))
    except (FileNotFoundError, ValueError) as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None


@app.command()
def serve(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt,
          verbose: bool = VerboseOpt) -> None:
    """Serve the base model and every registered adapter behind an OpenAI-compatible endpoint (Ray Serve).

    On a local Ray this runs until Ctrl-C; with RAY_ADDRESS set it deploys to that cluster and returns."""
    def run_serve(cfg: RunConfig) -> None:
        import os
        import signal
        import time

        from politune.serve.app import APP_NAME, serve_summary, start_serving

        serving = start_serving(cfg)
        for line in serve_summary(serving):
            typer.echo(line)
        if os.environ.get("RAY_ADDRESS") or cfg.ray.address:
            typer.echo(f"deployed as Serve application {APP_NAME!r}; it keeps running on the cluster")
            return
        typer.echo("Ctrl-C stops it.", err=True)
        signal.signal(signal.SIGTERM, signal.default_int_handler)  # `kill` stops it as Ctrl-C does
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            from ray import serve as ray_serve

            ray_serve.shutdown()

    _run(("serve",), run_serve, config, preset, set_, verbose)


@app.command()
def probe(
    question: str = typer.Argument(..., help="What to ask every model."),
    model: list[str] = typer.Option([], "--model", "-m", help="A served model id (repeatable; default: all)."),
    url: str = typer.Option("http://127.0.0.1:8000/v1", help="The endpoint's base URL."),
    max_tokens: int = typer.Option(64, min=1),
    api_key_env: str = typer.Option("POLITUNE_API_KEY", help="Environment variable holding the bearer token."),
) -> None:
    """Ask one or several served models the same question, side by side (OpenAI client, greedy decoding)."""
    import os

    import openai
    from rich.console import Console
    from rich.table import Table

    client = openai.OpenAI(base_url=url, api_key=os.environ.get(api_key_env) or "none", max_retries=1)
    try:
        models = model or [m.id for m in client.models.list()]
        answers = [(m, client.chat.completions.create(
            model=m, messages=[{"role": "user", "content": question}], max_tokens=max_tokens, temperature=0))
            for m in models]
    except openai.APIStatusError as err:
        typer.secho(f"error: {url}: HTTP {err.status_code}: {err.message}", fg="red", err=True)
        raise typer.Exit(1) from None
    except openai.APIConnectionError:
        typer.secho(f"error: nothing answers at {url}; start one with `politune serve`", fg="red", err=True)
        raise typer.Exit(1) from None
    table = Table(title=question, show_lines=True)
    table.add_column("model")
    table.add_column("answer")
    table.add_column("end", justify="right")
    for m, answer in answers:
        table.add_row(m, answer.choices[0].message.content, answer.choices[0].finish_reason)
    Console().print(table)


@app.command()
def plan(config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt,
         posts: int = typer.Option(1_000_000, "--posts", help="Posts in the corpus."),
         gpu: str = typer.Option("h100", "--gpu", help="GPU type: h100, h200, a100, l40s, l4."),
         price: float = typer.Option(2.5, "--price", help="Price of a GPU-hour."),
         post_tokens: float = typer.Option(60.0, "--post-tokens", help="Tokens of an average post."),
         selected_share: float = typer.Option(None, "--selected-share",
                                              help="Share of posts select keeps (default: a previous run's, the "
                                                   "quantile rule's, or 10%)."),
         ray_data_llm_ratio: float = typer.Option(
             1.0, "--ray-data-llm-ratio", help="docs/s through ray.data.llm ÷ vllm.LLM in one process, as "
                                               "bench/annotate.py --engine vllm measures it; divides the vLLM "
                                               "stages' estimates."),
         bench_json: Path = typer.Option(None, "--bench-json", help="bench/gpu.py's figures, whose MFUs replace the "
                                         "assumed ones (default: bench/results/gpu.json in this checkout, if there)."),
         ) -> None:
    """Estimate tokens, GPU-hours, wall time and cost of each stage before running the study."""
    from politune.console import print_plan
    from politune.plan import BENCH_JSON, GPUS, measured_mfus, plan_study

    cfg = _config(config, preset, set_)
    if gpu not in GPUS:
        typer.secho(f"error: --gpu {gpu}: expected one of {', '.join(GPUS)}", fg="red", err=True)
        raise typer.Exit(2)
    if bench_json is not None and not bench_json.is_file():
        typer.secho(f"error: --bench-json {bench_json}: no such file (bench/gpu.py writes it)", fg="red", err=True)
        raise typer.Exit(2)
    try:
        mfus = measured_mfus(bench_json or BENCH_JSON)
        plans, notes = plan_study(cfg, posts, GPUS[gpu], post_tokens, selected_share, ray_data_llm_ratio, mfus)
    except (ValueError, KeyError) as err:
        typer.secho(f"error: plan: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    print_plan(plans, notes, posts, GPUS[gpu], price, mfus)


RootOpt = typer.Option(None, "--root", help="Storage root to look in (default: the config's storage_root).")


def _root(root: str | None, config: str | None, preset: str | None, set_: list[str]) -> str:
    return root or _config(config, preset, set_).storage_root


@runs_app.callback()
def runs(ctx: typer.Context, root: str = RootOpt, config: str = ConfigOpt, preset: str = PresetOpt,
         set_: list[str] = SetOpt) -> None:
    """List the runs in a storage root: stages done, adapters, compass positions."""
    if ctx.invoked_subcommand is not None:
        return
    from politune.console import print_runs
    from politune.runs import list_runs

    where = _root(root, config, preset, set_)
    print_runs(where, list_runs(where))


@runs_app.command("show")
def runs_show(run_id: str = typer.Argument(..., help="A run's id (its folder in the storage root)."),
              root: str = RootOpt, config: str = ConfigOpt, preset: str = PresetOpt,
              set_: list[str] = SetOpt) -> None:
    """Show one run: each stage's last run (when, how long, its figures), artifacts, adapters, positions."""
    from politune.console import print_run
    from politune.runs import read_run

    try:
        run = read_run(_root(root, config, preset, set_), run_id)
    except FileNotFoundError as err:
        typer.secho(f"error: {err}", fg="red", err=True)
        raise typer.Exit(1) from None
    print_run(run)


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
def model_build_tiny(
    config: str = ConfigOpt, preset: str = PresetOpt, set_: list[str] = SetOpt,
    out: Path = typer.Option(None, help="Folder to write the model to (default: the config's tiny_model.out)."),
    seed: int = typer.Option(None, help="Same seed, byte-identical model (default: the config's tiny_model.seed)."),
    force: bool = typer.Option(False, "--force", help="Build even when the folder already holds this model."),
    warm: bool = typer.Option(None, "--warm/--random", help="Pre-train on the project's synthetic world, or leave "
                              "the weights random (default: the config's tiny_model.warm)."),
) -> None:
    """Build the tiny Llama-architecture model and its tokenizer (no download); the config's by default."""
    from politune.world.tiny import build_tiny_model, folder_digest, tiny_model_is_current

    cfg = _config(config, preset, set_)
    update = {k: v for k, v in (("out", str(out) if out else None), ("seed", seed), ("warm", warm)) if v is not None}
    tiny = cfg.tiny_model.model_copy(update=update)
    if not force and tiny_model_is_current(tiny):
        typer.echo(f"up to date: {tiny.out} (digest {folder_digest(tiny.out)[:12]}; --force rebuilds it)")
        return
    if tiny.warm:
        typer.echo(f"warming the tiny model on the synthetic world: {tiny.warm_steps} steps of "
                   f"{tiny.warm_batch_size} examples ...")
    started = time.perf_counter()
    folder = build_tiny_model(tiny, report=lambda step, loss: typer.echo(f"  step {step}/{tiny.warm_steps}: "
                                                                          f"loss {loss:.3f}"))
    info = json.loads((folder / "politune_tiny.json").read_text())
    typer.echo(f"built {folder} ({info['parameters']:,} parameters, digest {folder_digest(folder)[:12]})")
    if info.get("warm"):
        w = info["warm"]
        held = w["held_out_annotation"]
        typer.echo(f"warmed in {time.perf_counter() - started:.0f} s ({w['examples']:,} examples, final loss "
                   f"{w['final_loss']:.3f}); "
                   f"held-out annotation: {held['accuracy']:.1%} of {held['posts']} left and right posts scored on "
                   "their side of 5")


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
