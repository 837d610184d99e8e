"""Dose and response: the compass position as a function of how much of each side an adapter got. Two curves, each
read off the stored answers like every other score:
- share: the run's adapters against the share of right pairs they were trained on (the left adapter at 0, the
  right at 1, each train.mixtures adapter at its own share);
- scale: one adapter against the strength it is applied at (the base at 0 unless a copy at 0 was asked, its
  `<adapter>-x<s>` copies at s, the adapter itself at 1).
Each point is a model's position with its 95% interval (scores.py). The slope is the least-squares line through
the points, in compass units per 0.1 of share or scale; its 95% interval comes from resampling the items every
point answered, the same resample for every point, so the slope's interval is the items' spread, not the points'.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from politune.contracts.compass.instruments import Instrument
from politune.contracts.compass.schema import ADAPTER, SCALED

PER = 0.1  # a slope is compass units per this much share or scale
Interval = tuple[float, float]


@dataclass
class CurvePoint:
    x: float                  # the share of right pairs, or the scale
    model: str
    economic: float
    social: float
    economic_ci: Interval
    social_ci: Interval


@dataclass
class DoseCurve:
    kind: str                 # share | scale
    adapter: str | None       # scale: the adapter scaled; share: None
    instrument: str
    mode: str
    points: list[CurvePoint]  # by x
    items: int                # the items every point answered: what the slope's bootstrap resamples
    slope_economic: float     # compass units per 0.1 of x
    slope_social: float
    slope_economic_ci: Interval
    slope_social_ci: Interval
    base: CurvePoint | None = None  # share: the base's own position, for reference (x is meaningless)

    @property
    def against(self) -> str:
        """What x is, in words: `share of right pairs` or `scale of <adapter>`."""
        return "share of right pairs" if self.kind == "share" else f"scale of {self.adapter}"


def dose_curves(models: Mapping[str, object], base_of: Mapping[str, str | None], positions: Mapping[tuple, object],
                groups: Mapping[tuple, object], instruments: Mapping[str, Instrument], bootstrap: int,
                rng: Callable[..., np.random.Generator], interval: Callable[[np.ndarray], Interval]) -> list[DoseCurve]:
    """The share curve of each instrument and mode where adapters of at least two shares answered, and a scale curve
    for each adapter with scaled copies. `models`, `positions`, `groups`: scores.py's ModelInfo by model,
    PositionScore and _Group by (model, instrument, mode)."""
    adapters = [m for m in models.values() if m.role == ADAPTER and m.right_share is not None]
    scaled: dict[str, list] = {}
    for m in models.values():
        if m.role == SCALED and m.scale_of:
            scaled.setdefault(m.scale_of, []).append(m)
    out = []
    for name, instrument in instruments.items():
        modes = sorted({key[2] for key in groups if key[1] == name})
        for mode in modes:
            share_points = [(m.right_share, m.model) for m in adapters if (m.model, name, mode) in groups]
            curve = _curve("share", None, share_points, name, mode, positions, groups, instrument, bootstrap, rng,
                           interval)
            if curve:
                base = base_of.get(curve.points[0].model)
                if base and (base, name, mode) in positions:
                    p = positions[(base, name, mode)]
                    curve.base = CurvePoint(float("nan"), base, p.economic, p.social, p.economic_ci, p.social_ci)
                out.append(curve)
            for adapter in sorted(scaled):
                final = next((m for m in models.values() if m.role == ADAPTER and m.adapter == adapter), None)
                points = [(m.scale, m.model) for m in scaled[adapter]]
                if final is not None:
                    points.append((1.0, final.model))
                base = base_of.get(final.model if final else scaled[adapter][0].model)
                if base and all(x != 0 for x, _ in points):
                    points.append((0.0, base))
                points = [(x, model) for x, model in points if (model, name, mode) in groups]
                curve = _curve("scale", adapter, points, name, mode, positions, groups, instrument, bootstrap, rng,
                               interval)
                out += [curve] if curve else []
    return out


def _curve(kind: str, adapter: str | None, points: list[tuple[float, str]], name: str, mode: str,
           positions: Mapping[tuple, object], groups: Mapping[tuple, object], instrument: Instrument, bootstrap: int,
           rng: Callable[..., np.random.Generator], interval: Callable[[np.ndarray], Interval]) -> DoseCurve | None:
    points = sorted(points)
    if len({x for x, _ in points}) < 2:
        return None  # no line through one share or one scale
    answered_by = [set(groups[(model, name, mode)].item_ids) for _, model in points[1:]]
    shared = [i for i in groups[(points[0][1], name, mode)].item_ids if all(i in ids for ids in answered_by)]
    x = np.array([x for x, _ in points])
    if not shared:
        nan = (float("nan"), float("nan"))
        slopes, boot = np.full(2, np.nan), (nan, nan)
    else:
        resamples = rng(kind, adapter or "", name, mode).integers(0, len(shared), size=(bootstrap, len(shared)))
        full, boots = [], []
        for _, model in points:
            chosen = groups[(model, name, mode)].chosen(shared)
            economic, social, _ = instrument.score(shared, chosen)
            full.append((economic[0], social[0]))
            boot_economic, boot_social, _ = instrument.score(shared, chosen, resamples)
            boots.append(np.stack([boot_economic, boot_social]))
        slopes = _slopes(x, np.array(full).T[:, None, :])[:, 0]            # (2,)
        resampled = _slopes(x, np.transpose(np.array(boots), (1, 2, 0)))  # (2, B)
        boot = (interval(resampled[0]), interval(resampled[1]))
    curve_points = []
    for value, model in points:
        p = positions[(model, name, mode)]
        curve_points.append(CurvePoint(float(value), model, p.economic, p.social, p.economic_ci, p.social_ci))
    return DoseCurve(kind, adapter, name, mode, curve_points, len(shared), float(slopes[0]), float(slopes[1]),
                     boot[0], boot[1])


def _slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares slopes per PER of x: y is (..., k) positions at the k values of x."""
    centred = x - x.mean()
    with np.errstate(invalid="ignore", divide="ignore"):
        return (y - y.mean(axis=-1, keepdims=True)) @ centred / (centred @ centred) * PER
