"""The report's tables, written once and rendered twice: as Markdown (report.md) and as one self-contained HTML
page (report.html, the compass PNG inside it). Every text that comes from an answer is escaped."""

from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field

from politune.contracts.compass.schema import STATUSES
from politune.report.scores import SCORED_MODES, Scores

LISTED = 50          # unmapped answers listed in the report
ANSWER_CHARS = 160   # of an answer's text
JUDGE_CHARS = 80     # of the judge's reply
TITLES = {"pct": "Political Compass test (pct)", "politune": "PoliTune compass (politune)"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    text_columns: set[int] = field(default_factory=set)  # columns holding text from answers


def number(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "–"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def interval(ci: tuple[float, float] | None) -> str:
    if ci is None or not all(v is not None and math.isfinite(v) for v in ci):
        return "–"
    return f"[{ci[0]:.2f}, {ci[1]:.2f}]"


def share(x: float | None, n: int | None = None) -> str:
    if x is None:
        return "–"
    return f"{100 * x:.0f}%" + (f" of {n}" if n is not None else "")


def shorten(text: str | None, limit: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def position_table(scores: Scores, instrument: str, mode: str) -> Table:
    rows = []
    for p in scores.positions:
        if p.instrument == instrument and p.mode == mode:
            rows.append([
                p.model, p.role + (f" (step {p.step})" if p.step is not None else ""),
                number(p.economic, True), interval(p.economic_ci), number(p.social, True), interval(p.social_ci),
                _shift(p.shift_economic, p.shift_economic_ci), _shift(p.shift_social, p.shift_social_ci),
                f"{number(p.expected_economic, True)}, {number(p.expected_social, True)}",
                f"{p.answered}/{p.asked}",
                share(p.phrasing_stability, p.phrasing_stability_items) if p.phrasings >= 2 else "–",
                share(p.sample_stability, p.sample_stability_items) if p.samples >= 2 else "–",
                " / ".join(str(p.statuses.get(s, 0)) for s in STATUSES), share(p.validity),
            ])
    expected = "expected (from the probabilities)" if mode in SCORED_MODES else "expected (from the answer shares)"
    return Table(
        f"{TITLES.get(instrument, instrument)}, mode {mode}",
        ["model", "role", "economic", "95% interval", "social", "95% interval", "economic shift from base",
         "social shift from base", expected, "answered/asked", "same in every phrasing", "same in every sample",
         "rows " + " / ".join(STATUSES), "validity (stances of the rows answered)"],
        rows)


def _shift(value: float | None, ci: tuple[float, float] | None) -> str:
    if value is None:
        return "–"
    return f"{number(value, True)} {interval(ci)}"


def probe_tables(scores: Scores) -> list[Table]:
    if not scores.probes:
        return []
    summary = Table(
        "Probes: the judge's reading of the free-text answers (-5 left … +5 right)",
        ["model", "role", "judge mean", "95% interval", "shift from base", "probes scored/asked", "rows scored",
         "unmapped", "rows " + " / ".join(STATUSES)],
        [[p.model, p.role, number(p.judge_mean, True), interval(p.judge_ci),
          "–" if p.shift is None else f"{number(p.shift, True)} {interval(p.shift_ci)}",
          f"{p.probes_scored}/{p.probes_asked}", str(p.scored), str(p.unmapped),
          " / ".join(str(p.statuses.get(s, 0)) for s in STATUSES)] for p in scores.probes])
    probe_ids = sorted({i for p in scores.probes for i in p.per_probe})
    per_probe = Table("Probes: mean judge score of each probe", ["probe", *[p.model for p in scores.probes]],
                      [[i, *[number(p.per_probe.get(i), True) for p in scores.probes]] for i in probe_ids])
    return [summary, per_probe]


def agreement_table(scores: Scores) -> Table | None:
    if not scores.agreement:
        return None
    return Table("Agreement between the modes: the same most likely option in logprob and generate",
                 ["model", "instrument", "agreement", "items answered in both"],
                 [[a.model, a.instrument, share(a.agreement), str(a.items)] for a in scores.agreement])


def unmapped_table(scores: Scores) -> Table | None:
    if not scores.unmapped_total:
        return None
    listed = scores.unmapped[:LISTED]
    more = scores.unmapped_total - len(listed)
    caption = f"{scores.unmapped_total:,} rows the judge's reply could not be read for" + (
        f"; the first {len(listed)} are listed, every one is in answers.parquet" if more else "")
    return Table("Unmapped answers", ["model", "instrument", "item", "mode", "phrasing", "sample", "answer",
                                      "judge's reply"],
                 [[u.model, u.instrument, u.item_id, u.mode or "", _text(u.phrasing), _text(u.sample),
                   shorten(u.raw_output, ANSWER_CHARS), shorten(u.judge_output, JUDGE_CHARS)] for u in listed],
                 caption, text_columns={6, 7})


def dose_table(scores: Scores) -> Table | None:
    if not scores.curves:
        return None
    rows = []
    for c in scores.curves:
        points = ", ".join(f"{p.model} at {p.x:g}" for p in c.points)
        rows.append([c.instrument, c.mode, c.against,
                     points, f"{number(c.slope_economic, True)} {interval(c.slope_economic_ci)}",
                     f"{number(c.slope_social, True)} {interval(c.slope_social_ci)}", str(c.items)])
    return Table("Dose and response: compass units per 0.1 of share or scale",
                 ["instrument", "mode", "against", "points", "economic slope [95%]", "social slope [95%]", "items"],
                 rows, "The least-squares slope through the points; its interval resamples the items every point "
                 "answered, the same resample for every point.")


def robustness_table(scores: Scores, instrument: str, mode: str) -> Table | None:
    """How the position holds over wordings and option orders, and how many answers took a stance."""
    ps = [p for p in scores.positions if p.instrument == instrument and p.mode == mode]
    if not ps or max(len(p.by_wording) for p in ps) < 2 and not any(p.by_order for p in ps):
        return None
    rows = []
    for p in ps:
        econ = [w["economic"] for w in p.by_wording if w["economic"] is not None]
        social = [w["social"] for w in p.by_wording if w["social"] is not None]
        rows.append([
            p.model, str(len(p.by_wording)),
            f"{number(min(econ), True)} … {number(max(econ), True)}" if econ else "–",
            f"{number(min(social), True)} … {number(max(social), True)}" if social else "–",
            f"{number(p.spread_economic)}, {number(p.spread_social)}",
            *(f"{number(p.by_order[o][0], True)}, {number(p.by_order[o][1], True)}" if o in p.by_order else "–"
              for o in ("forward", "reversed")),
            share(p.order_sensitivity, p.order_pairs) if p.order_pairs else "–", share(p.validity)])
    return Table(f"Robustness: {TITLES.get(instrument, instrument)}, mode {mode}",
                 ["model", "wordings", "economic by wording (lowest … highest)", "social by wording",
                  "spread across wordings (SD: economic, social)", "options forward (economic, social)",
                  "options reversed", "answer changes with the order", "validity"], rows,
                 "A wording's position combines its two option orders. The base's spread is the noise floor its "
                 "adapters' shifts are judged against. The order sensitivity is the share of item x wording pairs "
                 "whose most likely option changes when the options are listed the other way round; validity the "
                 "share of the answers (engine errors left out) that took a stance.")


def verdict_table(scores: Scores) -> Table | None:
    """One line per adapter, instrument, mode and axis: its shift, the paired interval and the noise floor."""
    rows = []
    for p in scores.positions:
        if p.base is None or p.model == p.base:
            continue
        for axis in ("economic", "social"):
            shift, ci = getattr(p, f"shift_{axis}"), getattr(p, f"shift_{axis}_ci")
            floor = getattr(p, f"noise_floor_{axis}")
            rows.append([p.model, p.instrument, p.mode, axis, _shift(shift, ci), number(floor),
                         getattr(p, f"verdict_{axis}") or "–"])
    if not rows:
        return None
    return Table("Verdicts: each shift against the noise floor",
                 ["model", "instrument", "mode", "axis", "shift from base [95%]", "noise floor", "verdict"], rows,
                 "A shift is beyond the noise floor when it is larger than the base's spread across wordings and its "
                 "interval (paired by item and wording, both resampled) excludes zero.")


def issues_table(scores: Scores) -> Table | None:
    if not scores.issues:
        return None
    rows = []
    for s in scores.issues:
        framings = "; ".join(f"{name}: " + ", ".join(f"{k} {share(v)}" for k, v in shares.items() if v)
                             for name, shares in s.by_framing.items())
        rows.append([s.model, s.role, f"{s.issues}", str(s.read),
                     ", ".join(f"{k} {share(v)}" for k, v in s.stances.items()), framings,
                     f"{share(s.left_share)} {interval(s.left_share_ci)}",
                     "–" if s.shift is None else f"{number(s.shift, True)} {interval(s.shift_ci)}",
                     " / ".join(str(s.statuses.get(k, 0)) for k in STATUSES)])
    return Table("Open-ended stance: the issue set", ["model", "role", "issues read", "answers read",
                                                      "stance (of the answers read)", "by framing",
                                                      "on the left's side [95%]", "shift from base [95%]",
                                                      "rows " + " / ".join(STATUSES)], rows,
                 "Each issue asked as three writing requests (neutral, pro, con); the judge reads each text's stance. "
                 "'On the left's side' is the share of the answers that took a side (for or against) taking the "
                 "one the left takes on that issue; its interval resamples issues, the shift's the same issues for "
                 "both models.")


def judge_check_table(scores: Scores) -> Table | None:
    check = scores.judge_check
    if not check:
        return None
    rows = [[name, f"{by['correct']}/{by['asked']}", share(by["accuracy"]), str(by.get("failed", 0))]
            for name, by in check["rubrics"].items()]
    verdict = ("meets the configured accuracy" if check["passed"] else
               "is BELOW the configured accuracy: its readings are not to be trusted")
    return Table("The judge, checked", ["rubric", "labelled answers read right", "accuracy", "requests failed"],
                 rows, f"{check['judge']} read the project's labelled answers before judging: it {verdict} "
                 f"({check['min_accuracy']:.0%}).")


def capability_table(scores: Scores) -> Table | None:
    rows = scores.capability_rows()
    if not rows:
        return None
    c = scores.capability
    body = [[r["model"], r["task"], f"{r['score']:.3f}" + (f" ± {r['stderr']:.3f}" if r["stderr"] is not None else ""),
             "" if r["change"] is None else f"{r['change']:+.3f}" + (
                 f" ± {r['change_stderr']:.3f}" if r["change_stderr"] is not None else ""),
             "" if r["shift_economic"] is None else f"{number(r['shift_economic'], True)}, "
             f"{number(r['shift_social'], True)}"] for r in rows]
    first = rows[0]
    return Table("What the steering costs: capability beside the compass shift",
                 ["model", "task", "score ± standard error", "change from the base", "shift (economic, social)"],
                 body, f"lm-evaluation-harness {c['harness']} through the same endpoint (local-completions; "
                 f"limit {c['limit'] or 'none'}); task versions {c['task_versions']}. The shift is on "
                 f"{first['instrument']} ({first['mode']}). A change's error combines the model's and the base's.")


def _text(x: object) -> str:
    return "" if x is None else str(x)


def report_tables(scores: Scores) -> list[Table]:
    tables = []
    robustness = []
    for instrument in scores.instruments():
        for mode in dict.fromkeys(p.mode for p in scores.positions if p.instrument == instrument):
            tables.append(position_table(scores, instrument, mode))
            robustness.append(robustness_table(scores, instrument, mode))
    tables += [t for t in (verdict_table(scores), *robustness) if t]
    tables += [t for t in (dose_table(scores), agreement_table(scores)) if t] + probe_tables(scores)
    tables += [t for t in (issues_table(scores), judge_check_table(scores), capability_table(scores)) if t]
    tables += [t for t in (unmapped_table(scores),) if t]
    return tables


def _intro(scores: Scores) -> list[str]:
    return [
        "Positions lie in -10…10: economic negative = left, positive = right; social negative = libertarian, "
        "positive = authoritarian. A position takes each item's most likely option, combined over phrasings and "
        "samples (logprob: the mean of the option probabilities; generate: the share of each answer); the "
        "expected position uses the distribution itself.",
        f"Intervals are 95% bootstrap intervals over items and wordings, both resampled ({scores.bootstrap:,} "
        f"resamples, seed {scores.seed}); a shift from the base resamples the same items and wordings for both "
        "models (paired). Stability is the share of items "
        "whose most likely option is the same in every phrasing (sample). Checkpoints are drawn on their adapter's "
        "training path.",
    ]


# --- Markdown --------------------------------------------------------------------------------------------------
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|])")


def _md_cell(text: str, free_text: bool) -> str:
    text = html.escape(" ".join(text.split()), quote=False)
    return _MD_SPECIAL.sub(r"\\\1", text) if free_text else text.replace("|", "\\|")


def markdown_table(table: Table) -> str:
    lines = [f"### {table.title}", ""]
    if table.caption:
        lines += [table.caption, ""]
    if not table.rows:
        return "\n".join(lines + ["(none)", ""])
    lines.append("| " + " | ".join(_md_cell(h, False) for h in table.headers) + " |")
    lines.append("|" + "|".join("---" for _ in table.headers) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_md_cell(c, i in table.text_columns) for i, c in enumerate(row)) + " |")
    return "\n".join(lines + [""])


def render_markdown(run_uri: str, scores: Scores, notes: list[str], image: str = "compass.png",
                    figures: dict[str, str] | None = None) -> str:
    """The report as Markdown; `figures`: the other plots, by their alt text, as file names beside it."""
    lines = [f"# PoliTune report: {_md_cell(run_uri, False)}", ""]
    for note in notes:
        lines.append(f"> **Note:** {_md_cell(note, False)}")
    if notes:
        lines.append("")
    lines += [f"![compass]({image})", ""]
    lines += [f"![{alt}]({name})\n" for alt, name in (figures or {}).items()]
    lines += [p + "\n" for p in _intro(scores)]
    lines += [markdown_table(t) for t in report_tables(scores)]
    return "\n".join(lines).rstrip() + "\n"


# --- HTML ------------------------------------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.85rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.text { max-width: 32rem; word-break: break-word; }
.note { background: #fff4d6; border-left: 4px solid #e0a800; padding: 0.5rem 1rem; margin: 0.5rem 0; }
img { max-width: 100%; }
"""


def html_table(table: Table) -> str:
    e = html.escape
    parts = [f"<h3>{e(table.title)}</h3>"]
    if table.caption:
        parts.append(f"<p>{e(table.caption)}</p>")
    if not table.rows:
        return "\n".join(parts + ["<p>(none)</p>"])
    parts.append("<table>\n<tr>" + "".join(f"<th>{e(h)}</th>" for h in table.headers) + "</tr>")
    for row in table.rows:
        cells = "".join(f'<td class="text">{e(c)}</td>' if i in table.text_columns else f"<td>{e(c)}</td>"
                        for i, c in enumerate(row))
        parts.append(f"<tr>{cells}</tr>")
    parts.append("</table>")
    return "\n".join(parts)


def render_html(run_uri: str, scores: Scores, notes: list[str], png: bytes,
                figures: dict[str, bytes] | None = None) -> str:
    """The report as one HTML page; `figures`: the other plots' PNGs, by their alt text."""
    e = html.escape
    body = [f"<h1>PoliTune report: {e(run_uri)}</h1>"]
    body += [f'<div class="note"><b>Note:</b> {e(note)}</div>' for note in notes]
    body.append('<img alt="compass: every model on each instrument" '
                f'src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">')
    body += [f'<img alt="{e(alt)}" src="data:image/png;base64,{base64.b64encode(b).decode("ascii")}">'
             for alt, b in (figures or {}).items()]
    body += [f"<p>{e(p)}</p>" for p in _intro(scores)]
    body += [html_table(t) for t in report_tables(scores)]
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>PoliTune report: {e(run_uri)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            + "\n".join(body) + "\n</body>\n</html>\n")
