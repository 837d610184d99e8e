"""What commands and jobs print: argument parsing for jobs, and run summaries."""

from __future__ import annotations

import argparse
import shlex
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from politune.pipeline import PipelineResult
from politune.plan import CHARS_PER_TOKEN, Gpu, Mfus, StagePlan
from politune.runs import RunSummary
from politune.stage import Stage
from politune.stages import PIPELINE, stage

console = Console(soft_wrap=not sys.stdout.isatty())  # a job log or a pipe: a line a line, as printed


def job_arguments(description: str, sides: bool = False, stages: bool = False) -> argparse.Namespace:
    """The arguments every job in jobs/ takes (the same as the CLI's); `sides`: train's --side too; `stages`: the
    pipeline's --from and --only."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="run config YAML (default: the `local` preset)")
    parser.add_argument("--preset", help="a shipped preset: local, local-random, llama3-8b, mistral-7b")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD.PATH=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="stream Ray's and the workers' output into the job log too")
    if stages:
        parser.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every later one")
        parser.add_argument("--only", metavar="STAGE", help="run this stage alone, done or not")
    if sides:
        parser.add_argument("--side", action="append",
                            help="left, right or a train.mixtures name (repeatable; default: the config's train.sides, "
                            "then its mixtures)")
    return parser.parse_args()


def print_summary(s: Stage, output: Any) -> None:
    """What a stage's result says (its summary: lines and tables)."""
    for item in s.summary(output):
        console.print(item)


def print_outputs(outputs: list[tuple[Stage, Any]]) -> None:
    """A stage command's results: the stage's, then those of the stages that follow it (evaluate: the report)."""
    for s, output in outputs:
        print_summary(s, output)


def config_args(config: str | None, preset: str | None, overrides: list[str]) -> str:
    """The command-line arguments that name a run's config, for the next command a user types."""
    args = [f"--config {config}"] if config else [f"--preset {preset}"] if preset and preset != "local" else []
    return " ".join(args + [f"--set {shlex.quote(o)}" for o in overrides])


def print_next_steps(result: PipelineResult, args: str) -> None:
    """How to serve and probe what the run trained."""
    if not result.adapters:
        return
    serve = f"politune serve {args}".strip()
    adapters = ", ".join(result.adapters)
    console.print(f"next:       {escape(serve)}   # base and adapters {adapters} on {result.serve_url}")
    models = " ".join(f"--model {result.served_id}:{a}" for a in result.adapters)
    console.print(f'            politune probe "What should the government do about taxes?" --url {result.serve_url} '
                  f"--model {result.served_id} {models}")


def print_pipeline(result: PipelineResult, args: str = "") -> None:
    if result.tiny_model:
        from politune.world.tiny import describe

        console.print(f"tiny model: {result.tiny_model}  ({describe(result.tiny_model)})")
    if result.corpus:
        console.print(f"corpus:     {result.corpus['n']:,} generated posts in {result.corpus['out']}")
    for s in PIPELINE:
        if s.name in result.skipped:
            console.print(f"{s.name + ':':<11} skipped: {escape(result.skipped[s.name])}")
        elif result.outputs.get(s.name):
            print_outputs([(s, result.outputs[s.name])] + [(stage(name), result.outputs[name]) for name in s.then
                                                          if name in result.outputs])
    if result.skipped and not result.outputs:
        console.print("run:        nothing to do: every stage is done (--from STAGE reruns from a stage)")
    console.print(f"run:        {result.run_uri}  (manifest.json lists every artifact and its counts)")
    print_next_steps(result, args)


def _positions(run: RunSummary) -> str:
    return "; ".join(f"{p.model} {p.economic:+.1f}, {p.social:+.1f}" for p in run.positions)


def print_runs(root: str, runs: list[RunSummary]) -> None:
    if not runs:
        console.print(f"no runs in {escape(root)}")
        return
    table = Table(title=f"runs in {escape(root)}")
    for column in ("run", "stages done", "adapters", "compass (economic, social)", "last written"):
        table.add_column(column)
    for run in runs:
        stages = f"{len(run.stages_done)}/{len(PIPELINE)}"
        if 0 < len(run.stages_done) < len(PIPELINE):
            stages += f": {', '.join(run.stages_done)}"
        table.add_row(escape(run.run_id), stages, ", ".join(run.adapters) or "-", escape(_positions(run)) or "-",
                      run.last_written)
    console.print(table)


def print_run(run: RunSummary) -> None:
    console.print(f"run:        {escape(run.uri)}")
    recorded = run.manifest.get("stages", {})
    for name in (s.name for s in PIPELINE):
        state = "done" if name in run.stages_done else "not done"
        last = recorded.get(name)
        if last:
            figures = ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}"
                                for k, v in last["figures"].items() if not isinstance(v, dict))
            figures += "".join(f", model {ref} ({rev or 'revision unknown'})" for ref, rev in last["models"].items())
            state += f"; last ran {last['started_at']} for {last['seconds']:.0f} s on {last['code_version']}"
            state += f" ({figures})" if figures else ""
        console.print(f"{name + ':':<11} {escape(state)}")
    for name, entry in run.manifest.get("artifacts", {}).items():
        models = f", models {', '.join(entry['models'])}" if entry.get("models") else ""
        console.print(f"  {escape(name)}: {escape(entry['path'])} (written {entry['written_at']}{escape(models)})")
    if run.positions:
        p = run.positions[0]
        console.print(f"compass:    {p.instrument} ({p.mode}): {escape(_positions(run))}")
        console.print(f"report:     {escape(run.uri)}/report/report.html")


def print_plan(plans: list[StagePlan], notes: list[str], posts: int, gpu: Gpu, price: float,
               mfus: Mfus = Mfus()) -> None:
    table = Table(title=f"plan: {posts:,} posts on {gpu.name} at {price:g} a GPU-hour")
    for column in ("stage", "model", "tokens in", "tokens out", "GPUs", "GPU-hours", "wall", "cost", "basis"):
        table.add_column(column, justify="left" if column in ("stage", "model", "basis") else "right")
    for p in plans:
        wall = f"{p.wall_hours:,.1f} h" if p.wall_hours >= 1 else f"{p.wall_hours * 60:,.0f} min"
        table.add_row(p.stage, escape(p.model), _millions(p.tokens_in), _millions(p.tokens_out), str(p.gpus),
                      f"{p.gpu_hours:,.{1 if p.gpu_hours >= 1 else 3}f}", wall, f"{p.cost(price):,.0f}", p.basis)
    total = sum(p.gpu_hours for p in plans)
    table.add_row("all", "", "", "", "", f"{total:,.1f}", f"{sum(p.wall_hours for p in plans):,.1f} h",
                  f"{total * price:,.0f}", "", style="bold")
    console.print(table)
    for p in plans:
        if p.note:
            console.print(f"  {p.stage}: {escape(p.note)}")
    console.print(f"  estimates: FLOPs a token = 2 x parameters (6 x for LoRA-DPO), at a share (MFU) of "
                  f"{gpu.bf16_tflops:g} TFLOPS bf16; {CHARS_PER_TOKEN} characters a token. ingest and select run "
                  "on CPUs and are not counted.")
    for kind, what, mfu in (("prefill", "reading prompts", mfus.prefill), ("decode", "writing tokens", mfus.decode),
                            ("train", "training (LoRA-DPO)", mfus.train)):
        console.print(f"  MFU {what}: {mfu:.0%} ({escape(mfus.source(kind))})")
    for note in notes:
        console.print(f"  {escape(note)}")


def _millions(tokens: float) -> str:
    return f"{tokens / 1e6:,.1f} M" if tokens >= 1e5 else f"{tokens:,.0f}"
