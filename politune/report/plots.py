"""The compass plot: one panel per instrument, every model a point with its 95% bootstrap interval on both axes, and
each adapter's training path from the base through its checkpoints; and the dose/response plots (position against
share of right pairs, and against adapter scale). Drawn on matplotlib's Agg canvas directly
(no pyplot), so it never touches the backend of the process it runs in."""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from politune.contracts.compass.schema import ADAPTER, CHECKPOINT
from politune.report.dose import PER, DoseCurve
from politune.report.scores import MODES, PositionScore, Scores, Trajectory

LIMIT = 10.0
QUADRANTS = (  # (x, y) of the lower-left corner, colour, name
    (-LIMIT, 0.0, "#f3b5b5", "authoritarian left"),
    (0.0, 0.0, "#b5cdf3", "authoritarian right"),
    (-LIMIT, -LIMIT, "#b9e8bd", "libertarian left"),
    (0.0, -LIMIT, "#dcc6f0", "libertarian right"),
)
TITLES = {"pct": "Political Compass test", "politune": "PoliTune compass"}
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "h")


def plotted_modes(scores: Scores, instrument: str) -> list[str]:
    """The modes an instrument was answered in, each a panel: logprob first, then generate."""
    modes = {p.mode for p in scores.positions if p.instrument == instrument}
    return [m for m in MODES if m in modes] + sorted(modes - set(MODES))


def compass_figure(scores: Scores) -> Figure:
    instruments = scores.instruments()
    panels = [(name, mode) for name in instruments for mode in plotted_modes(scores, name)]
    fig = Figure(figsize=(6.4 * max(1, len(panels)), 6.6), layout="constrained")
    FigureCanvasAgg(fig)
    if not instruments:
        ax = fig.add_subplot()
        ax.axis("off")
        ax.text(0.5, 0.5, "no proposition was answered: nothing to place on the compass", ha="center", va="center")
        return fig
    # a colour for each model drawn as a point; checkpoints take their adapter's, on its path
    colours = {m.model: f"C{i % 10}" for i, m in enumerate(m for m in scores.models if m.role != CHECKPOINT)}
    roles = {m.model: m.role for m in scores.models}
    for n, (name, mode) in enumerate(panels, start=1):
        ax = fig.add_subplot(1, len(panels), n)
        _frame(ax, f"{TITLES.get(name, name)} ({mode})")
        for t in scores.trajectories:
            if t.instrument == name and t.mode == mode:
                _path(ax, t, colours, roles)
        drawn: list[tuple[float, float]] = []
        points = [p for p in scores.positions if p.instrument == name and p.mode == mode and p.role != CHECKPOINT]
        for i, p in enumerate(points):
            _point(ax, p, colours[p.model], MARKERS[i % len(MARKERS)], size=9 - 5 * i / max(1, len(points) - 1),
                   drawn=drawn)
        if points:  # points on top of each other stay told apart by marker and size
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 0.06), fontsize=7, framealpha=0.85, markerscale=0.8)
    return fig


def _path(ax, t: Trajectory, colours: dict[str, str], roles: dict[str, str]) -> None:
    """A training path: a line from the base through the checkpoints (small markers, labelled by step) to the
    final adapter, in the adapter's colour."""
    points = [p for p in t.points if math.isfinite(p.economic) and math.isfinite(p.social)]
    if not points:
        return
    final = next((p.model for p in points if roles.get(p.model) == ADAPTER), None)
    colour = colours.get(final or points[-1].model, "0.3")
    ax.plot([p.economic for p in points], [p.social for p in points], "-", color=colour, lw=1.2, alpha=0.7,
            zorder=3)
    steps = [p for p in points if roles.get(p.model) == CHECKPOINT]
    ax.plot([p.economic for p in steps], [p.social for p in steps], "o", ms=3.5, color=colour, alpha=0.85, zorder=3)
    for p in steps:
        ax.annotate(str(p.step), (p.economic, p.social), xytext=(3, -9), textcoords="offset points", fontsize=6,
                    color=colour)


def _frame(ax, title: str) -> None:
    for x, y, colour, _ in QUADRANTS:
        ax.add_patch(Rectangle((x, y), LIMIT, LIMIT, facecolor=colour, alpha=0.45, edgecolor="none", zorder=0))
    ax.axhline(0, color="0.35", lw=0.8, zorder=1)
    ax.axvline(0, color="0.35", lw=0.8, zorder=1)
    for x, y, _, name in QUADRANTS:
        ax.text(x + 0.3 if x < 0 else LIMIT - 0.3, y + LIMIT - 0.3 if y >= 0 else -LIMIT + 0.3, name,
                ha="left" if x < 0 else "right", va="top" if y >= 0 else "bottom", fontsize=7, color="0.45",
                zorder=1)
    margin = 0.6  # a point at ±10 stays whole
    ax.set_xlim(-LIMIT - margin, LIMIT + margin)
    ax.set_ylim(-LIMIT - margin, LIMIT + margin)
    ax.set_aspect("equal")
    ax.set_xticks(range(-10, 11, 5))
    ax.set_yticks(range(-10, 11, 5))
    ax.grid(True, color="white", lw=0.5, alpha=0.8, zorder=0.5)
    ax.set_xlabel("economic: left  ←  →  right")
    ax.set_ylabel("social: libertarian  ←  →  authoritarian")
    ax.set_title(title)


def _point(ax, p: PositionScore, colour: str, marker: str, size: float, drawn: list[tuple[float, float]]) -> None:
    """A model's point with its intervals; its name beside it unless an earlier point sits there (the legend
    names every one)."""
    if not (math.isfinite(p.economic) and math.isfinite(p.social)):
        return
    xerr = _err(p.economic, p.economic_ci)
    yerr = _err(p.social, p.social_ci)
    ax.errorbar([p.economic], [p.social], xerr=xerr, yerr=yerr, fmt=marker, ms=size, color=colour, ecolor=colour,
                elinewidth=1, capsize=3, zorder=4, mec="black", mew=0.6, label=p.model)
    if all(math.dist((p.economic, p.social), other) > 1.0 for other in drawn):
        ax.annotate(p.model, (p.economic, p.social), xytext=(6, 5), textcoords="offset points", fontsize=8,
                    zorder=5, bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.7})
    drawn.append((p.economic, p.social))


def _err(value: float, ci: tuple[float, float]) -> list[list[float]] | None:
    low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return [[max(0.0, value - low)], [max(0.0, high - value)]]


def figure_bytes(fig: Figure, fmt: str) -> bytes:
    """The figure as PNG or SVG bytes (no timestamps, so a rebuilt report is the same file)."""
    buffer = io.BytesIO()
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    fig.savefig(buffer, format=fmt, dpi=130, metadata=metadata)
    return buffer.getvalue()


# --- dose and response ------------------------------------------------------------------------------------------
DOSE_AXES = {"share": "share of right pairs trained on", "scale": "adapter scale (its LoRA update times s)"}


def dose_figure(curves: list[DoseCurve], kind: str) -> Figure:
    """Economic and social position against share or scale: a row of two panels for each instrument and mode, a
    line a curve (for scale, one an adapter), every point with its 95% interval, and the least-squares line."""
    chosen = [c for c in curves if c.kind == kind]
    panels = list(dict.fromkeys((c.instrument, c.mode) for c in chosen))
    fig = Figure(figsize=(10, 3.6 * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(fig)
    for row, (name, mode) in enumerate(panels):
        for col, axis in enumerate(("economic", "social")):
            ax = fig.add_subplot(len(panels), 2, 2 * row + col + 1)
            for i, curve in enumerate(c for c in chosen if (c.instrument, c.mode) == (name, mode)):
                _dose_line(ax, curve, axis, f"C{i % 10}")
                if curve.base is not None and math.isfinite(getattr(curve.base, axis)):
                    ax.axhline(getattr(curve.base, axis), color="0.45", ls=":", lw=1.2,
                               label=f"{curve.base.model} (the base): {getattr(curve.base, axis):+.2f}")
            ax.axhline(0, color="0.35", lw=0.8)
            ax.set_ylim(-LIMIT - 0.6, LIMIT + 0.6)
            ax.set_xlabel(DOSE_AXES[kind])
            ax.set_ylabel(f"{axis} position")
            ax.set_title(f"{TITLES.get(name, name)} ({mode}): {axis}", fontsize=10)
            ax.grid(True, color="0.9")
            ax.legend(fontsize=7, loc="upper left")
    return fig


def _dose_line(ax, curve: DoseCurve, axis: str, colour: str) -> None:
    xs = [p.x for p in curve.points]
    ys = [getattr(p, axis) for p in curve.points]
    errors = [_err(y, getattr(p, f"{axis}_ci")) or [[0.0], [0.0]] for y, p in zip(ys, curve.points, strict=True)]
    slope = getattr(curve, f"slope_{axis}")
    low, high = getattr(curve, f"slope_{axis}_ci")
    label = f"{curve.adapter or 'adapters'}: {slope:+.2f} per {PER:g} [{low:.2f}, {high:.2f}]"
    ax.errorbar(xs, ys, yerr=[[e[0][0] for e in errors], [e[1][0] for e in errors]], fmt="o-", color=colour,
                ecolor=colour, elinewidth=1, capsize=3, ms=6, mec="black", mew=0.6, label=label)
    for p, y in zip(curve.points, ys, strict=True):
        ax.annotate(p.model, (p.x, y), xytext=(5, 4), textcoords="offset points", fontsize=7, color=colour)
    if math.isfinite(slope):
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        ends = [min(xs), max(xs)]
        ax.plot(ends, [mean_y + slope / PER * (x - mean_x) for x in ends], "--", color=colour, lw=1, alpha=0.7)


# --- robustness ----------------------------------------------------------------------------------------------------
def capability_figure(scores: Scores) -> Figure | None:
    """Each steered model's compass shift (its length, economic and social together) against its change in each
    capability task from the base, with the harness's standard errors: what moving costs."""
    rows = [r for r in scores.capability_rows() if r["change"] is not None and r["shift_economic"] is not None]
    if not rows:
        return None
    fig = Figure(figsize=(6.4, 4.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for i, task in enumerate(dict.fromkeys(r["task"] for r in rows)):
        chosen = [r for r in rows if r["task"] == task]
        x = [r["change"] for r in chosen]
        y = [math.hypot(r["shift_economic"], r["shift_social"]) for r in chosen]
        ax.errorbar(x, y, xerr=[r["change_stderr"] or 0 for r in chosen], fmt="o", color=f"C{i % 10}", capsize=3,
                    label=task)
        for r, xi, yi in zip(chosen, x, y, strict=True):
            ax.annotate(r["model"], (xi, yi), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.axvline(0, color="0.35", lw=0.8)
    ax.set_xlabel("capability change from the base (score, ± standard error)")
    ax.set_ylabel(f"compass shift from the base ({rows[0]['instrument']}, {rows[0]['mode']})")
    ax.set_title("What the steering costs", fontsize=10)
    ax.grid(True, color="0.9")
    ax.legend(fontsize=7)
    return fig


def robustness_panels(scores: Scores) -> list[tuple[str, str]]:
    """(instrument, mode) of every reading asked in two or more wordings: a row of the robustness figure each."""
    return list(dict.fromkeys((p.instrument, p.mode) for p in scores.positions if len(p.by_wording) >= 2))


def robustness_figure(scores: Scores) -> Figure:
    """Position by wording: for each instrument and mode asked in two or more wordings, a panel an axis; each model
    (checkpoints left out) a row, a small dot for its position in each wording, a large one for its position over
    all of them, and around the base's position a band of its spread across wordings: the noise floor."""
    panels = robustness_panels(scores)
    fig = Figure(figsize=(10, 0.9 + 0.45 * max(3, len(scores.models)) * max(1, len(panels))), layout="constrained")
    FigureCanvasAgg(fig)
    for row, (name, mode) in enumerate(panels):
        points = [p for p in scores.positions if (p.instrument, p.mode) == (name, mode) and p.role != CHECKPOINT]
        for col, axis in enumerate(("economic", "social")):
            ax = fig.add_subplot(len(panels), 2, 2 * row + col + 1)
            for y, p in enumerate(points):
                colour = f"C{y % 10}"
                values = [w[axis] for w in p.by_wording if w[axis] is not None]
                ax.scatter(values, [y] * len(values), s=18, color=colour, alpha=0.6, edgecolors="none")
                centre = getattr(p, axis)
                if math.isfinite(centre):
                    ax.scatter([centre], [y], s=80, color=colour, edgecolors="black", linewidths=0.6, zorder=3)
                floor = getattr(p, f"spread_{axis}")
                if p.base == p.model and floor is not None and math.isfinite(centre):
                    ax.axvspan(centre - floor, centre + floor, color="0.85", zorder=0,
                               label=f"the base ± its spread ({floor:.2f}): the noise floor")
            ax.set_yticks(range(len(points)), [p.model for p in points], fontsize=8)
            ax.set_ylim(-0.7, len(points) - 0.3)
            ax.invert_yaxis()
            ax.set_xlim(-LIMIT - 0.6, LIMIT + 0.6)
            ax.axvline(0, color="0.35", lw=0.8)
            ax.set_xlabel(f"{axis} position (small: one wording, both option orders; large: all)")
            ax.set_title(f"{TITLES.get(name, name)} ({mode}): {axis} by wording", fontsize=10)
            ax.grid(True, axis="x", color="0.9")
            if ax.get_legend_handles_labels()[0]:
                ax.legend(fontsize=7, loc="lower right")
    return fig
