"""The compass plot: one panel per instrument, every model a point with its 95% bootstrap interval on both axes, and
each adapter's training path from the base through its checkpoints. Drawn on matplotlib's Agg canvas directly
(no pyplot), so it never touches the backend of the process it runs in."""

from __future__ import annotations

import io
import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from politune.evaluate.schema import ADAPTER, CHECKPOINT
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
