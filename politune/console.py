"""What commands and jobs print: argument parsing for jobs, and run summaries."""

from __future__ import annotations

import argparse
import shlex

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from politune.annotate import AnnotateResult
from politune.evaluate import EvaluateResult
from politune.ingest import IngestResult
from politune.pipeline import PipelineResult
from politune.report import ReportResult
from politune.select import SelectResult
from politune.synthesize import SynthesizeResult
from politune.train import TrainResult

console = Console()


def job_arguments(description: str, sides: bool = False) -> argparse.Namespace:
    """The arguments every job in jobs/ takes (the same as the CLI's); `sides`: train's --side too."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", help="run config YAML (default: the `local` preset)")
    parser.add_argument("--preset", help="a shipped preset: local, llama3-8b, mistral-7b")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD.PATH=VALUE",
                        help="override one config field (repeatable)")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="stream Ray's and the workers' output into the job log too")
    if sides:
        parser.add_argument("--side", action="append", choices=["left", "right"],
                            help="repeatable; default: the config's train.sides")
    return parser.parse_args()


SHOWN_DAMAGED_FILES = 5
INGEST_COUNTS = ("read", "kept", "duplicates", "reposts", "quarantined")


def print_ingest(result: IngestResult) -> None:
    table = Table(title="ingest: rows read = kept + duplicates + reposts + quarantined")
    for column in ("source", *INGEST_COUNTS):
        table.add_column(column, justify="left" if column == "source" else "right")
    for source, c in result.counts.items():
        table.add_row(source, *(f"{c[k]:,}" for k in INGEST_COUNTS))
    t = result.totals
    table.add_row("all", *(f"{t[k]:,}" for k in INGEST_COUNTS), style="bold")
    console.print(table)
    for source, c in result.counts.items():
        if c.get("rejoined"):
            n = c["rejoined"]
            console.print(f"  re-joined in {source}: {n:,} {'row' if n == 1 else 'rows'} whose text's line breaks "
                          "had split them")
        for reason, n in c["reasons"].items():
            console.print(f"  quarantined from {source}: {n:,} × {escape(reason)}")
    damaged = [(file, reason) for files in result.damaged_files.values() for file, reason in sorted(files.items())]
    for file, reason in damaged[:SHOWN_DAMAGED_FILES]:
        console.print(f"  damaged file {escape(file)}: {escape(reason.removeprefix('damaged: '))}")
    if len(damaged) > SHOWN_DAMAGED_FILES:
        console.print(f"  … and {len(damaged) - SHOWN_DAMAGED_FILES:,} more damaged files (rows with field (file) in "
                      f"the quarantine)")
    console.print(f"documents:  {result.documents_uri}")
    console.print(f"quarantine: {result.quarantine_uri}")


def print_annotate(result: AnnotateResult) -> None:
    statuses = ", ".join(f"{n:,} {s}" for s, n in result.statuses.items())
    console.print(f"annotate:   {result.documents:,} documents, one row each ({statuses}); "
                  f"{result.annotated_now:,} scored now, {result.resumed_from:,} kept from an earlier run")
    console.print(f"annotations: {result.annotations_uri}")


def print_select(result: SelectResult) -> None:
    console.print(f"select:     {result.kept['left']:,} left and {result.kept['right']:,} right posts of "
                  f"{result.documents:,}")
    for reason, n in result.dropped.items():
        console.print(f"  dropped: {n:,} × {escape(reason)}")
    console.print(f"selected:   {result.selected_uri}")


def print_synthesize(result: SynthesizeResult) -> None:
    for side, c in result.sides.items():
        dropped = sum(c.dropped.values())
        console.print(f"{side + ':':<6} {c.read:,} pairs: {c.train + c.eval:,} kept ({c.train:,} train, "
                      f"{c.eval:,} eval), {dropped:,} dropped, {c.unreadable:,} unreadable")
        for reason, n in c.dropped.items():
            if n:
                console.print(f"  dropped: {n:,} × {escape(reason)}")
        for repair, n in c.repaired.items():
            console.print(f"  repaired: {n:,} × {escape(repair)}")
        if c.consistency_checked:
            passed = c.train + c.eval
            console.print(f"  consistency check kept {passed:,} of {c.consistency_checked:,} "
                          f"({passed / c.consistency_checked:.0%})")
    console.print(f"preferences: {result.preferences_uri}")


def print_train(results: dict[str, TrainResult]) -> None:
    for result in results.values():
        a, m = result.adapter, result.adapter.metrics
        resumed = f", resumed from step {m['resumed_from_step']}" if m.get("resumed_from_step") else ""
        console.print(f"train:      adapter {a.name!r} ({a.method} on {a.side}, base {a.base_model}): "
                      f"{m.get('global_step', 0)} steps{resumed}, {len(m.get('worker_nodes', []))} worker(s)")
        if m.get("before/pairs"):
            console.print(f"  held out ({m['before/pairs']} pairs): preference accuracy "
                          f"{m['before/preference_accuracy']:.2f} -> {m['after/preference_accuracy']:.2f}, "
                          f"reward margin {m['after/reward_margin']:+.3f}; likelihood accuracy "
                          f"{m['before/likelihood_accuracy']:.2f} -> {m['after/likelihood_accuracy']:.2f}")
        console.print(f"  adapter: {a.path}")


def print_evaluate(result: EvaluateResult) -> None:
    statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(result.statuses.items()))
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items())
    console.print(f"evaluate:   {len(result.models)} model(s), {sum(result.statuses.values()):,} answers "
                  f"({statuses}); {timing}")
    console.print(f"answers:    {result.eval_uri}/answers.parquet")
    print_report(result.report)


def print_report(result: ReportResult) -> None:
    for line in result.summary_lines():
        console.print(escape(line))
    console.print(f"report:     {result.html}")
    console.print(f"compass:    {result.png}")


def config_args(config: str | None, preset: str | None, overrides: list[str]) -> str:
    """The command-line arguments that name a run's config, for the next command a user types."""
    args = [f"--config {config}"] if config else [f"--preset {preset}"] if preset and preset != "local" else []
    return " ".join(args + [f"--set {shlex.quote(o)}" for o in overrides])


def print_next_steps(result: PipelineResult, args: str) -> None:
    """How to serve and probe what the run trained."""
    adapters = [r.adapter.name for r in result.train.values()]
    if not adapters:
        return
    serve = f"politune serve {args}".strip()
    console.print(f"next:       {escape(serve)}   # base and adapters {', '.join(adapters)} on {result.serve_url}")
    models = " ".join(f"--model {result.served_id}:{a}" for a in adapters)
    console.print(f'            politune probe "What should the government do about taxes?" --url {result.serve_url} '
                  f"--model {result.served_id} {models}")


def print_pipeline(result: PipelineResult, args: str = "") -> None:
    if result.tiny_model:
        console.print(f"tiny model: {result.tiny_model}  (random weights: its text is noise)")
    if result.corpus:
        console.print(f"corpus:     {result.corpus['n']:,} generated posts in {result.corpus['out']}")
    for stage, show in ((result.ingest, print_ingest), (result.annotate, print_annotate),
                        (result.select, print_select)):
        if stage is not None:
            show(stage)
    print_synthesize(result.synthesize)
    if result.train:
        print_train(result.train)
    if result.evaluate:
        print_evaluate(result.evaluate)
    console.print(f"run:        {result.run_uri}  (manifest.json lists every artifact and its counts)")
    print_next_steps(result, args)
