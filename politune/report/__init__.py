"""The report of a run, rebuilt from its stored answers alone (`<run>/eval/answers.parquet`): no model is asked.

build_report writes to `<run>/report/`: compass.png and compass.svg, report.md, report.html (one self-contained
page), scores.json and a copy of the answers; with dose/response curves (mixture adapters, scaled copies) also
dose_share.png / dose_scale.png and their SVGs; with two or more wordings asked robustness.png / .svg (position by
wording). Local folders and s3:// run directories alike.

It reads the answers through the compass contract (politune/contracts/compass), never through the evaluate
stage: `politune run`, `politune evaluate` and jobs/evaluate.py build the report after evaluate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from politune.config import RunConfig
from politune.stage import Stage

if TYPE_CHECKING:
    from politune.report.scores import Scores

FILES = {"png": "compass.png", "svg": "compass.svg", "markdown": "report.md", "html": "report.html",
         "answers": "answers.parquet", "scores_json": "scores.json"}


@dataclass
class ReportResult:
    run_uri: str
    report_uri: str
    png: str
    svg: str
    markdown: str
    html: str
    answers: str
    scores_json: str
    scores: Scores
    notes: list[str] = field(default_factory=list)
    dose: dict[str, str] = field(default_factory=dict)  # share | scale -> the PNG of position against it
    robustness: str | None = None  # the PNG of each model's position by wording (two or more wordings asked)

    def summary_lines(self) -> list[str]:
        """A few lines for the console: each instrument in each mode, every model but the checkpoints, with
        intervals and shifts; the probes; the notes."""
        from politune.report.plots import plotted_modes
        from politune.report.render import interval, number

        s, lines = self.scores, []
        for instrument, mode in [(i, m) for i in s.instruments() for m in plotted_modes(s, i)]:
            lines.append(f"position:   {instrument} ({mode}): economic, social [95%]; shift from base")
            shown = [p for p in s.positions if p.instrument == instrument and p.mode == mode and p.role != "checkpoint"]
            width = max(len(p.model) for p in shown) if shown else 0
            for p in shown:
                line = (f"  {p.model:<{width}}  {number(p.economic, True)} {interval(p.economic_ci)}, "
                        f"{number(p.social, True)} {interval(p.social_ci)}")
                if p.answered < p.asked:
                    line += f"  answered {p.answered}/{p.asked}"
                if p.shift_economic is not None and p.model != p.base:
                    line += (f"  shift {number(p.shift_economic, True)} {interval(p.shift_economic_ci)}, "
                             f"{number(p.shift_social, True)} {interval(p.shift_social_ci)}")
                lines.append(line)
            floors = [p for p in shown if p.model == p.base and p.spread_economic is not None]
            if floors:
                b = floors[0]
                order = (f"; the answer changes with the option order for {b.order_sensitivity:.0%} of item x "
                         "wording pairs" if b.order_sensitivity is not None else "")
                lines.append(f"  noise floor (the base's spread over {len(b.by_wording)} wordings): "
                             f"{number(b.spread_economic)}, {number(b.spread_social)}{order}")
                for p in shown:
                    if p.model != p.base and p.verdict_economic:
                        lines.append(f"  verdict {p.model:<{width}}  economic: {p.verdict_economic}; social: "
                                     f"{p.verdict_social}")
            checkpoints = sum(1 for p in s.positions if p.instrument == instrument and p.mode == mode
                              and p.role == "checkpoint")
            if checkpoints:
                lines.append(f"  (+ {checkpoints} checkpoints on the training paths in the report)")
            for c in s.curves:
                if (c.instrument, c.mode) == (instrument, mode):
                    lines.append(f"  slope per 0.1 of {c.against} ({len(c.points)} points): "
                                 f"{number(c.slope_economic, True)} {interval(c.slope_economic_ci)}, "
                                 f"{number(c.slope_social, True)} {interval(c.slope_social_ci)}")
        if s.probes:
            lines.append("probes:     judge mean, -5 left … +5 right [95%]")
            width = max(len(p.model) for p in s.probes)
            for p in s.probes:
                line = (f"  {p.model:<{width}}  {number(p.judge_mean, True)} {interval(p.judge_ci)}"
                        f"  unmapped {p.unmapped}")
                if p.shift is not None and p.model != p.base and math.isfinite(p.shift):
                    line += f"  shift {number(p.shift, True)}"
                lines.append(line)
        rows = [r for r in s.capability_rows() if r["role"] != "checkpoint"]
        if rows:
            lines.append(f"capability: lm-evaluation-harness {s.capability['harness']}, score ± standard error; "
                         "change from base")
            width = max(len(f"{r['model']} {r['task']}") for r in rows)
            for r in rows:
                line = f"  {r['model'] + ' ' + r['task']:<{width}}  {r['score']:.3f} ± {r['stderr'] or 0:.3f}"
                if r["change"] is not None:
                    line += f"  change {r['change']:+.3f} ± {r['change_stderr'] or 0:.3f}"
                lines.append(line)
        if s.unmapped_total:
            lines.append(f"unmapped:   {s.unmapped_total:,} answers the judge could not read (listed in the report)")
        lines += [f"note:       {note}" for note in self.notes]
        return lines


def build_report(run_uri: str, pct_path: str | None = None, bootstrap: int | None = None,
                 seed: int | None = None) -> ReportResult:
    """Score `<run_uri>/eval/answers.parquet` and write the report beside it. The PCT weights file is pct_path, else
    the one eval/evaluation.json names; without one, pct is left out of the report with a note. The bootstrap's
    resamples and seed default to the evaluation's (evaluation.json), so a rebuilt report is the same report."""
    import pyarrow.parquet as pq

    from politune.contracts.compass.instruments import PCT, POLITUNE, load_issues, load_pct, load_politune_instrument
    from politune.report.plots import (
        capability_figure,
        compass_figure,
        dose_figure,
        figure_bytes,
        robustness_figure,
        robustness_panels,
    )
    from politune.report.render import render_html, render_markdown
    from politune.report.scores import ISSUES, PROBES, score_answers
    from politune.storage import exists, join, read_json, resolve, write_json

    answers_uri = join(run_uri, "eval", "answers.parquet")
    if not exists(answers_uri):
        raise FileNotFoundError(f"{answers_uri}: no stored answers (run `politune evaluate` first)")
    fs, path = resolve(answers_uri)
    table = pq.read_table(path, filesystem=fs)
    evaluation_uri = join(run_uri, "eval", "evaluation.json")
    evaluation = read_json(evaluation_uri) if exists(evaluation_uri) else {}
    bootstrap = bootstrap if bootstrap is not None else evaluation.get("bootstrap", 1000)
    seed = seed if seed is not None else evaluation.get("seed", 0)

    notes: list[str] = []
    ran = [n for n in dict.fromkeys(table.column("instrument").to_pylist()) if n is not None] \
        if "instrument" in table.column_names else []
    instruments = {}
    for name in ran:
        if name in (PROBES, ISSUES):
            continue
        if name == POLITUNE:
            instruments[name] = load_politune_instrument(evaluation.get("politune_path"))
        elif name == PCT:
            weights = pct_path or evaluation.get("pct_path")
            if not weights:
                notes.append("pct was answered but no PCT weights file is known (pass --pct-path, or set "
                             "evaluate.pct_path): pct is left out of this report")
            elif not exists(weights):
                notes.append(f"pct was answered but its weights file {weights} is not there: pct is left out of "
                             "this report")
            else:
                instruments[name] = load_pct(weights)
        else:
            notes.append(f"instrument {name!r} is not known to this version: its answers are left out")
    sides = {i.id: i.left for i in load_issues()} if ISSUES in ran else {}
    scores = score_answers(table, instruments, bootstrap=bootstrap, seed=seed, issue_sides=sides)
    scores.judge_check = evaluation.get("judge_check")
    capability_uri = join(run_uri, "eval", "capability.json")
    if evaluation.get("capability") and exists(capability_uri):  # written by this evaluation, not a stale one
        scores.capability = read_json(capability_uri)
    notes += [n for n in scores.notes if not any(n.startswith(f"{name}:") for name in ran if name not in instruments)]

    report_uri = join(run_uri, "report")
    out = {key: join(report_uri, name) for key, name in FILES.items()}
    fs, report_path = resolve(report_uri)
    fs.create_dir(report_path, recursive=True)
    figure = compass_figure(scores)
    png = figure_bytes(figure, "png")
    _write(out["png"], png)
    _write(out["svg"], figure_bytes(figure, "svg"))
    dose, dose_pngs = {}, {}
    for kind in dict.fromkeys(c.kind for c in scores.curves):
        dose_fig = dose_figure(scores.curves, kind)
        dose[kind] = join(report_uri, f"dose_{kind}.png")
        dose_pngs[kind] = figure_bytes(dose_fig, "png")
        _write(dose[kind], dose_pngs[kind])
        _write(join(report_uri, f"dose_{kind}.svg"), figure_bytes(dose_fig, "svg"))
    figures = {f"position against {kind}": (f"dose_{kind}.png", dose_pngs[kind]) for kind in dose}
    capability_fig = capability_figure(scores)
    if capability_fig is not None:
        figures["compass shift against capability change"] = ("capability.png", figure_bytes(capability_fig, "png"))
        _write(join(report_uri, "capability.png"), figures["compass shift against capability change"][1])
    robustness = None
    if robustness_panels(scores):  # position by wording, where there are wordings to compare
        robustness_fig = robustness_figure(scores)
        robustness = join(report_uri, "robustness.png")
        figures["position by wording"] = ("robustness.png", figure_bytes(robustness_fig, "png"))
        _write(robustness, figures["position by wording"][1])
        _write(join(report_uri, "robustness.svg"), figure_bytes(robustness_fig, "svg"))
    _write(out["markdown"], render_markdown(run_uri, scores, notes, FILES["png"],
                                            {alt: name for alt, (name, _) in figures.items()}).encode())
    _write(out["html"], render_html(run_uri, scores, notes, png,
                                    {alt: data for alt, (_, data) in figures.items()}).encode())
    answers_fs, answers_path = resolve(out["answers"])
    pq.write_table(table, answers_path, filesystem=answers_fs)
    write_json(out["scores_json"], {**scores.as_dict(), "notes": notes, "run": run_uri})
    return ReportResult(run_uri, report_uri, scores=scores, notes=notes, dose=dose, robustness=robustness, **out)


def _write(uri: str, data: bytes) -> None:
    from politune.storage import resolve

    fs, path = resolve(uri)
    with fs.open_output_stream(path) as f:
        f.write(data)


__all__ = ["ReportResult", "build_report"]


def report_summary(result: ReportResult) -> list[str]:
    """What the console prints of a report: where each model stands, and where the report went."""
    from rich.markup import escape

    return [*(escape(line) for line in result.summary_lines()), f"report:     {result.html}",
            f"compass:    {result.png}"]


def _report_run(cfg: RunConfig) -> ReportResult:
    # the run directory as an absolute path, as evaluate has it (the console prints where the report went); the PCT
    # file, resamples and seed are those the evaluation recorded
    return build_report(cfg.with_absolute_paths().run_uri)


# run after evaluate (its `then`); `politune report RUN_DIR` rebuilds one from a run directory alone
STAGE = Stage(name="report", help="Rebuild a run's report from its stored answers alone (no model is asked).",
              reads=("eval",), writes=("report",), section="evaluate", build=_report_run, summary=report_summary)
