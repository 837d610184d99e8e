"""What commands and jobs print: argument parsing for jobs, and run summaries."""

from __future__ import annotations

import argparse
import shlex
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from politune.annotate import AnnotateResult
from politune.evaluate import EvaluateResult
from politune.ingest import IngestResult
from politune.pipeline import PipelineResult
from politune.plan import CHARS_PER_TOKEN, Gpu, Mfus, StagePlan
from politune.report import ReportResult
from politune.runs import STAGE_ARTIFACTS, RunSummary
from politune.select import SelectResult
from politune.synthesize import SynthesizeResult
from politune.train import TrainResult

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
    if result.truth:
        t = result.truth
        shares = ", ".join(f"{s} {share:.1%}" for s, share in t["selected_on_side"].items())
        console.print(f"  against the corpus's own labels: annotate put {t['annotated_on_side']:.1%} of "
                      f"{t['labelled']:,} left and right posts on their side of 5; selected posts on their side: "
                      f"{shares or 'none selected'}")
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
        on = a.side if a.shares is None else " + ".join(f"{share:.0%} {s}" for s, share in a.shares.items())
        console.print(f"train:      adapter {a.name!r} ({a.method} on {on}, base {a.base_model}): "
                      f"{m.get('global_step', 0)} steps{resumed}, {len(m.get('worker_nodes', []))} worker(s)")
        for prefix, label in (("", "held out"), ("left/", "held out, left split"), ("right/", "held out, right split")):
            if m.get(f"before/{prefix}pairs"):
                console.print(f"  {label} ({m[f'before/{prefix}pairs']} pairs): preference accuracy "
                              f"{m[f'before/{prefix}preference_accuracy']:.2f} -> "
                              f"{m[f'after/{prefix}preference_accuracy']:.2f}, reward margin "
                              f"{m[f'after/{prefix}reward_margin']:+.3f}; likelihood accuracy "
                              f"{m[f'before/{prefix}likelihood_accuracy']:.2f} -> "
                              f"{m[f'after/{prefix}likelihood_accuracy']:.2f}")
        console.print(f"  adapter: {a.path}")


def print_evaluate(result: EvaluateResult) -> None:
    statuses = ", ".join(f"{n:,} {s}" for s, n in sorted(result.statuses.items()))
    timing = ", ".join(f"{name} {s:.0f} s" for name, s in result.seconds.items())
    console.print(f"evaluate:   {len(result.models)} model(s), {sum(result.statuses.values()):,} answers "
                  f"({statuses}); {timing}")
    console.print(f"answers:    {result.eval_uri}/answers.parquet")


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
    shown = {"ingest": print_ingest, "annotate": print_annotate, "select": print_select,
             "synthesize": print_synthesize, "train": print_train, "evaluate": print_evaluate}
    for stage, show in shown.items():
        if stage in result.skipped:
            console.print(f"{stage + ':':<11} skipped: {escape(result.skipped[stage])}")
        elif getattr(result, stage):
            show(getattr(result, stage))
            if stage == "evaluate" and result.report:
                print_report(result.report)
    if result.skipped and not any(getattr(result, stage) for stage in shown):
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
        stages = f"{len(run.stages_done)}/{len(STAGE_ARTIFACTS)}"
        if 0 < len(run.stages_done) < len(STAGE_ARTIFACTS):
            stages += f": {', '.join(run.stages_done)}"
        table.add_row(escape(run.run_id), stages, ", ".join(run.adapters) or "-", escape(_positions(run)) or "-",
                      run.last_written)
    console.print(table)


def print_run(run: RunSummary) -> None:
    console.print(f"run:        {escape(run.uri)}")
    recorded = run.manifest.get("stages", {})
    for stage in STAGE_ARTIFACTS:
        state = "done" if stage in run.stages_done else "not done"
        last = recorded.get(stage)
        if last:
            figures = ", ".join(f"{k} {', '.join(v) if isinstance(v, list) else v}"
                                for k, v in last["figures"].items() if not isinstance(v, dict))
            figures += "".join(f", model {ref} ({rev or 'revision unknown'})" for ref, rev in last["models"].items())
            state += f"; last ran {last['started_at']} for {last['seconds']:.0f} s on {last['code_version']}"
            state += f" ({figures})" if figures else ""
        console.print(f"{stage + ':':<11} {escape(state)}")
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
