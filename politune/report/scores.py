"""Scores from stored answers: every model's position on each instrument and mode with 95% bootstrap intervals, its
shift from the base model (a paired bootstrap), stability across phrasings and samples, agreement between the
modes, the judge's reading of the probes, each adapter's training trajectory, and the dose/response curves
(dose.py). No model is asked.

Per item, the phrasings x samples of one (model, instrument, mode) are combined into one distribution over the four
options: the mean of option_probs (logprob) or the share of ok answers per option (generate; no_stance, unmapped
and engine_error rows do not count). The position takes each item's most likely option (as the test is taken; a
tie goes to the lower option), the expected position the distribution itself. The intervals resample items.
"""

from __future__ import annotations

import math
import warnings
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from politune.contracts.compass.instruments import Instrument
from politune.contracts.compass.prompts import FORWARD, REVERSED
from politune.contracts.compass.schema import (
    ADAPTER,
    ANSWER_SCHEMA,
    BASE,
    CHECKPOINT,
    ENGINE_ERROR,
    EXTERNAL,
    OK,
    SCALED,
    STATUSES,
    UNMAPPED,
)
from politune.report.dose import DoseCurve, dose_curves

PROBES = "probes"
ISSUES = "issues"
FRAMINGS = ("neutral", "pro", "con")  # the issue set's framings, by phrasing (prompts.ISSUE_FRAMINGS)
STANCES = ("for", "against", "neutral", "refusal")
MODES = ("logprob", "generate", "explain", "generate_forced")
SCORED_MODES = ("logprob", "explain")  # an answer is the options' probabilities, not a judge's label
LISTED_UNMAPPED = 200   # unmapped rows kept in the scores (all are in answers.parquet)
LISTED_CHARS = 500      # of their texts
REQUIRED = ("model", "instrument", "item_id", "mode", "status")
Interval = tuple[float, float]


# --- what is returned ------------------------------------------------------------------------------------------
@dataclass
class ModelInfo:
    model: str
    role: str
    adapter: str | None = None
    checkpoint_of: str | None = None
    step: int | None = None
    scale_of: str | None = None
    scale: float | None = None
    right_share: float | None = None


@dataclass
class PositionScore:
    """One model on one instrument in one mode."""

    model: str
    role: str
    instrument: str
    mode: str
    economic: float                 # from each item's most likely option
    social: float
    economic_ci: Interval           # 95% bootstrap over items
    social_ci: Interval
    expected_economic: float        # from the distributions themselves
    expected_social: float
    answered: int                   # items with at least one ok row
    asked: int                      # items with any row
    base: str | None = None         # the base model the shift is from
    shift_economic: float | None = None
    shift_social: float | None = None
    shift_economic_ci: Interval | None = None  # paired bootstrap: the same resampled items for model and base
    shift_social_ci: Interval | None = None
    phrasings: int = 0
    samples: int = 0
    phrasing_stability: float | None = None  # share of items with the same most likely option in every phrasing
    phrasing_stability_items: int = 0
    sample_stability: float | None = None    # … in every sample
    sample_stability_items: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    adapter: str | None = None
    checkpoint_of: str | None = None
    step: int | None = None
    scale_of: str | None = None
    scale: float | None = None
    right_share: float | None = None
    # robustness: the position over wordings and option orders (docs/evaluate.md#robustness)
    by_wording: list[dict[str, Any]] = field(default_factory=list)  # {phrasing, economic, social}, one a wording
    spread_economic: float | None = None    # standard deviation of the position across wordings (two or more)
    spread_social: float | None = None
    order_sensitivity: float | None = None  # share of (item, wording) pairs whose answer changes with the order
    order_pairs: int = 0                    # pairs answered in both orders
    by_order: dict[str, list[float | None]] = field(default_factory=dict)  # forward / reversed: [economic, social]
    validity: float | None = None           # share of the rows answered (not engine_error) that took a stance
    noise_floor_economic: float | None = None  # the base's spread across wordings
    noise_floor_social: float | None = None
    beyond_noise_economic: bool | None = None  # |shift| above the noise floor, and its interval excludes 0
    beyond_noise_social: bool | None = None
    verdict_economic: str | None = None        # VERDICTS: which of the two a shift passes
    verdict_social: str | None = None


@dataclass
class ModeAgreement:
    model: str
    instrument: str
    agreement: float | None   # share of items with the same most likely option in both modes
    items: int                # items answered in both modes


@dataclass
class ProbeScore:
    model: str
    role: str
    judge_mean: float               # mean judge_score of the ok rows: -5 left … +5 right
    judge_ci: Interval              # 95% bootstrap over probes
    scored: int                     # ok rows
    probes_scored: int              # probes with at least one ok row
    probes_asked: int
    unmapped: int
    statuses: dict[str, int]
    per_probe: dict[str, float | None]  # probe id -> mean judge_score
    base: str | None = None
    shift: float | None = None
    shift_ci: Interval | None = None


@dataclass
class IssueScore:
    """One model's stances on the open-ended issue set: what the judge read in the texts it wrote when asked to write
    about an issue (neutral), for it (pro) and against it (con)."""

    model: str
    role: str
    issues: int                                   # issues with at least one stance read
    read: int                                     # answers whose stance the judge read
    stances: dict[str, float]                     # share of the read answers taking each stance
    by_framing: dict[str, dict[str, float]]       # the same for each framing: neutral, pro, con
    left_share: float | None                      # of the answers that took a side, the share on the left's side
    left_share_ci: Interval                       # 95% bootstrap over issues
    statuses: dict[str, int]
    base: str | None = None
    shift: float | None = None                    # left_share minus the base's
    shift_ci: Interval | None = None              # paired: the same resampled issues for both


@dataclass
class UnmappedAnswer:
    model: str
    instrument: str
    item_id: str
    mode: str
    phrasing: int | None
    sample: int | None
    raw_output: str | None
    judge_output: str | None


@dataclass
class TrajectoryPoint:
    label: str
    model: str
    step: int | None
    economic: float
    social: float


@dataclass
class Trajectory:
    adapter: str
    instrument: str
    mode: str
    points: list[TrajectoryPoint]   # base, the checkpoints by step, the final adapter


@dataclass
class Scores:
    positions: list[PositionScore]
    agreement: list[ModeAgreement]
    probes: list[ProbeScore]
    unmapped: list[UnmappedAnswer]  # the first LISTED_UNMAPPED
    unmapped_total: int
    trajectories: list[Trajectory]
    models: list[ModelInfo]
    bootstrap: int
    seed: int
    notes: list[str] = field(default_factory=list)
    curves: list[DoseCurve] = field(default_factory=list)  # dose and response: position by share and by scale
    issues: list[IssueScore] = field(default_factory=list)  # the open-ended issue set
    judge_check: dict[str, Any] | None = None  # the judge's accuracy on labelled answers (evaluation.json)
    capability: dict[str, Any] | None = None   # lm-evaluation-harness scores by model and task (capability.json)

    def position(self, model: str, instrument: str, mode: str) -> PositionScore | None:
        return next((p for p in self.positions if (p.model, p.instrument, p.mode) == (model, instrument, mode)),
                    None)

    def instruments(self) -> list[str]:
        return list(dict.fromkeys(p.instrument for p in self.positions))

    def capability_rows(self) -> list[dict[str, Any]]:
        """A row a model and capability task: its score and standard error, the change from the base's score with
        the two errors combined, and the model's compass shift on the first instrument and mode scored."""
        if not self.capability or not self.positions:
            return []
        first = self.positions[0]
        rows = []
        for model, tasks in self.capability["scores"].items():
            p = self.position(model, first.instrument, first.mode)
            for task, figures in tasks.items():
                metric = next((m for m in ("acc", "acc_norm", "exact_match") if m in figures), None)
                if metric is None:
                    continue
                base = self.capability["scores"].get(p.base if p and p.base else "", {}).get(task, {})
                err, base_err = figures.get(f"{metric}_stderr"), base.get(f"{metric}_stderr")
                change = figures[metric] - base[metric] if metric in base and p and p.model != p.base else None
                rows.append({"model": model, "role": p.role if p else "", "task": task, "metric": metric,
                             "score": figures[metric], "stderr": err, "change": change,
                             "change_stderr": math.hypot(err, base_err) if change is not None and err is not None
                             and base_err is not None else None,
                             "instrument": first.instrument, "mode": first.mode,
                             "shift_economic": p.shift_economic if p else None,
                             "shift_social": p.shift_social if p else None})
        return rows

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: tuples as lists, NaN as null."""
        return _plain(asdict(self))


# --- scoring ---------------------------------------------------------------------------------------------------
def score_answers(answers: pa.Table | Iterable[Mapping[str, Any]], instruments: Mapping[str, Instrument],
                  bootstrap: int = 1000, seed: int = 0, issue_sides: Mapping[str, str] | None = None) -> Scores:
    """Scores of ANSWER_SCHEMA rows. Rows of an instrument not in `instruments` (other than probes and issues) are
    left out with a note; an item id the instrument does not have is a ValueError. `issue_sides`: the stance the
    left takes on each issue of the issue set (for | against), by id."""
    if bootstrap < 1:
        raise ValueError(f"bootstrap must be at least 1, got {bootstrap}")
    rows = _rows(answers)
    models = _models(rows)
    bases = {m for m, info in models.items() if info.role == BASE}
    base_of = {m: _base_of(info, bases) for m, info in models.items()}
    notes: list[str] = []

    skipped = Counter(r["instrument"] for r in rows if r["instrument"] not in (PROBES, ISSUES)
                      and r["instrument"] not in instruments)
    for name, n in sorted(skipped.items()):
        notes.append(f"{name}: {n:,} answer rows not scored (the instrument is not loaded)")
    groups = _group_items(rows, instruments, notes)

    positions: list[PositionScore] = []
    for (model, name, mode), group in groups.items():
        positions.append(_position_score(models[model], name, mode, group, instruments[name], bootstrap, seed))
    by_key = {(p.model, p.instrument, p.mode): p for p in positions}
    for p in positions:
        base = base_of[p.model]
        if base is not None and (base, p.instrument, p.mode) in groups:
            _add_shift(p, by_key[(base, p.instrument, p.mode)], groups, instruments[p.instrument], bootstrap, seed)
    order = _model_order(models)
    positions.sort(key=lambda p: (list(instruments).index(p.instrument), MODES.index(p.mode) if p.mode in MODES
                                  else len(MODES), order[p.model]))

    agreement = []
    for model, name, _ in sorted({k for k in groups if k[2] == MODES[0]}, key=lambda k: (k[1], order[k[0]])):
        if (model, name, MODES[1]) in groups:
            agreement.append(_agreement(model, name, groups[(model, name, MODES[0])], groups[(model, name, MODES[1])]))

    probe_rows = [r for r in rows if r["instrument"] == PROBES]
    probes = _probe_scores(probe_rows, models, base_of, bootstrap, seed)
    probes.sort(key=lambda p: order[p.model])

    issue_rows = [r for r in rows if r["instrument"] == ISSUES]
    issues = _issue_scores(issue_rows, models, base_of, issue_sides or {}, bootstrap, seed)
    issues.sort(key=lambda s: order[s.model])

    unmapped_rows = [r for r in rows if r["status"] == UNMAPPED]
    unmapped_rows.sort(key=lambda r: (order[r["model"]], r["instrument"], r["mode"] or "", str(r["item_id"]),
                                      r["phrasing"] or 0, r["sample"] or 0))
    unmapped = [UnmappedAnswer(r["model"], r["instrument"], str(r["item_id"]), r["mode"], r["phrasing"], r["sample"],
                               _cut(r.get("raw_output")), _cut(r.get("judge_output")))
                for r in unmapped_rows[:LISTED_UNMAPPED]]

    trajectories = _trajectories(models, base_of, by_key, instruments)
    curves = dose_curves(models, base_of, by_key, groups, instruments, bootstrap,
                         lambda *key: _rng(seed, "dose", *key), _interval)
    return Scores(positions, agreement, probes, unmapped, len(unmapped_rows), trajectories,
                  sorted(models.values(), key=lambda m: order[m.model]), bootstrap, seed, notes, curves, issues)


def _rows(answers: pa.Table | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Answer rows as dicts with every schema field (absent ones None); ValueError naming a row that lacks one of
    model, instrument, item_id, mode, status."""
    empty = dict.fromkeys(ANSWER_SCHEMA.names)
    rows = [{**empty, **r} for r in (answers.to_pylist() if isinstance(answers, pa.Table) else answers)]
    for number, r in enumerate(rows):
        missing = [k for k in REQUIRED if r[k] is None]
        if missing:
            raise ValueError(f"answer row {number} ({r['model']}, {r['instrument']}, {r['item_id']}): "
                             f"{', '.join(missing)}: expected a value, got null")
        r["item_id"] = str(r["item_id"])
    return rows


class _Answer(NamedTuple):
    phrasing: int
    sample: int
    order: int | None   # forced choice: the option order it was asked in
    vec: np.ndarray     # its distribution over the four options


@dataclass
class _Group:
    """The answers of one (model, instrument, mode): ok answers per item."""

    item_ids: list[str]                                   # asked, in the instrument's order
    answers: dict[str, list[_Answer]]
    statuses: Counter
    phrasings: int
    samples: int
    wordings: list[int] = field(default_factory=list)     # the phrasings asked, in order

    def combined(self, item_ids: list[str] | None = None) -> np.ndarray:
        """(n, 4): each item's distribution over the options, NaN when unanswered."""
        item_ids = self.item_ids if item_ids is None else item_ids
        out = np.full((len(item_ids), 4), np.nan)
        for row, item in enumerate(item_ids):
            if self.answers.get(item):
                out[row] = np.mean([a.vec for a in self.answers[item]], axis=0)
        return out

    def by_wording(self, item_ids: list[str] | None = None, wordings: list[int] | None = None,
                   order: int | None = None) -> np.ndarray:
        """(n, k, 4): each item's distribution in each wording (its orders and samples averaged; only `order`'s
        when given), NaN where it has none."""
        item_ids = self.item_ids if item_ids is None else item_ids
        wordings = self.wordings if wordings is None else wordings
        column = {w: j for j, w in enumerate(wordings)}
        sums, counts = np.zeros((len(item_ids), len(wordings), 4)), np.zeros((len(item_ids), len(wordings)))
        for row, item in enumerate(item_ids):
            for a in self.answers.get(item, ()):
                if a.phrasing in column and (order is None or a.order == order):
                    sums[row, column[a.phrasing]] += a.vec
                    counts[row, column[a.phrasing]] += 1
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts[..., None]

    def chosen(self, item_ids: list[str] | None = None) -> np.ndarray:
        """(n, 4): one-hot of each item's most likely option, NaN when unanswered."""
        return _one_hot_argmax(self.combined(item_ids))


def _one_hot_argmax(dist: np.ndarray) -> np.ndarray:
    """(..., 4) distributions -> one-hot of each one's most likely option (a tie: the lower), NaN where unanswered."""
    flat = dist.reshape(-1, 4)
    out = np.full_like(flat, np.nan)
    answered = ~np.isnan(flat).any(axis=1)
    out[answered] = np.eye(4)[np.argmax(flat[answered], axis=1)]
    return out.reshape(dist.shape)


def _resamples(rng: np.random.Generator, bootstrap: int, items: int, wordings: int) -> tuple[np.ndarray, np.ndarray]:
    """The two-level bootstrap's draws: (B, items) item indices, and (B, wordings) how often each wording is drawn
    when the wordings are resampled with replacement."""
    item_idx = rng.integers(0, items, size=(bootstrap, items))
    wording_idx = rng.integers(0, max(wordings, 1), size=(bootstrap, max(wordings, 1)))
    counts = (wording_idx[..., None] == np.arange(max(wordings, 1))).sum(axis=1).astype(float)
    return item_idx, counts


def _resampled_choice(by_wording: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """(B, n, 4): each resample's answer to each item, the most likely option of its distributions averaged over
    the resample's wordings (a wording drawn twice counts twice); NaN where none of them was answered."""
    valid = ~np.isnan(by_wording).any(axis=2)                                    # (n, k)
    summed = np.einsum("bk,nkj->bnj", counts, np.where(valid[..., None], by_wording, 0.0))
    weight = counts @ valid.T.astype(float)                                      # (B, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        return _one_hot_argmax(summed / weight[..., None])


def _models(rows: list[dict[str, Any]]) -> dict[str, ModelInfo]:
    models: dict[str, ModelInfo] = {}
    for r in rows:
        if r["model"] not in models:
            models[r["model"]] = ModelInfo(r["model"], r.get("role") or EXTERNAL, r.get("adapter"),
                                           r.get("checkpoint_of"), r.get("step"), r.get("scale_of"), r.get("scale"),
                                           r.get("right_share"))
    return models


def _base_of(info: ModelInfo, bases: set[str]) -> str | None:
    """The base model a model's shift is measured from: itself for a base; for an adapter or a checkpoint the
    base its id names (`<base>:<adapter>`), else the run's only base; none for an external model."""
    if info.role == BASE:
        return info.model
    if info.role not in (ADAPTER, CHECKPOINT, SCALED):
        return None
    prefix = info.model.split(":", 1)[0]
    if prefix in bases:
        return prefix
    return next(iter(bases)) if len(bases) == 1 else None


def _model_order(models: dict[str, ModelInfo]) -> dict[str, int]:
    """base first; each adapter after its checkpoints (by step) and before its scaled copies (by scale); external
    models last."""
    def key(info: ModelInfo) -> tuple:
        if info.role == BASE:
            return (0, info.model, 0, 0.0)
        if info.role == CHECKPOINT:
            return (1, info.checkpoint_of or info.model, info.step if info.step is not None else 0, 0.0, info.model)
        if info.role == ADAPTER:
            return (1, info.adapter or info.model, math.inf, 0.0, info.model)
        if info.role == SCALED:
            return (1, info.scale_of or info.model, math.inf, info.scale or 0.0, info.model)
        return (2, info.model, 0, 0.0)
    return {info.model: i for i, info in enumerate(sorted(models.values(), key=key))}


def _distribution(r: dict[str, Any]) -> np.ndarray | None:
    """An ok row's answer as a distribution over the options: option_probs (logprob, explain) or one-hot
    (generate)."""
    probs = r.get("option_probs")
    if r.get("mode") in SCORED_MODES and probs is not None and len(probs) == 4:
        vec = np.asarray(probs, dtype=float)
        if np.isfinite(vec).all() and (vec >= 0).all() and vec.sum() > 0:
            return vec / vec.sum()
    answer = r.get("answer")
    if answer is not None and 0 <= answer <= 3:
        return np.eye(4)[int(answer)]
    return None


def _group_items(rows: list[dict[str, Any]], instruments: Mapping[str, Instrument],
                 notes: list[str]) -> dict[tuple[str, str, str], _Group]:
    asked: dict[tuple, set[str]] = defaultdict(set)
    answers: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    statuses: dict[tuple, Counter] = defaultdict(Counter)
    phrasings: dict[tuple, set] = defaultdict(set)
    samples: dict[tuple, set] = defaultdict(set)
    unreadable = Counter()
    for r in rows:
        name = r["instrument"]
        if name in (PROBES, ISSUES) or name not in instruments:
            continue
        key, item = (r["model"], name, r["mode"]), str(r["item_id"])
        if item not in instruments[name]:
            raise ValueError(f"answers of {r['model']} name {name} item {item!r}, which the instrument does not "
                             f"have ({len(instruments[name].items)} items): were they asked with another "
                             f"{'weights file (pct_path)' if name == 'pct' else 'instrument file'}?")
        asked[key].add(item)
        statuses[key][r["status"]] += 1
        phrasings[key].add(r.get("phrasing") or 0)
        samples[key].add(r.get("sample") or 0)
        if r["status"] == OK:
            vec = _distribution(r)
            if vec is None:
                unreadable[key] += 1
                continue
            answers[key][item].append(_Answer(r.get("phrasing") or 0, r.get("sample") or 0, r.get("option_order"), vec))
    for (model, name, mode), n in sorted(unreadable.items()):
        notes.append(f"{model} {name} {mode}: {n:,} ok rows without a readable answer were left out")
    groups = {}
    for key, items in asked.items():
        order = {p.id: i for i, p in enumerate(instruments[key[1]].items)}
        groups[key] = _Group(sorted(items, key=order.__getitem__), dict(answers[key]), statuses[key],
                             len(phrasings[key]), len(samples[key]), sorted(phrasings[key]))
    return groups


def _rng(seed: int, *key: str) -> np.random.Generator:
    """A generator of its own for each thing resampled, so an interval does not depend on what else is scored."""
    return np.random.default_rng([seed, zlib.crc32("\x1f".join(key).encode())])


def _interval(values: np.ndarray) -> Interval:
    values = values[np.isfinite(values)]
    if not len(values):
        return (math.nan, math.nan)
    low, high = np.percentile(values, [2.5, 97.5])
    return (float(low), float(high))


def _position_score(info: ModelInfo, name: str, mode: str, group: _Group, instrument: Instrument,
                    bootstrap: int, seed: int) -> PositionScore:
    ids = group.item_ids
    combined = group.combined()
    chosen = _one_hot_argmax(combined)
    economic, social, answered = instrument.score(ids, chosen)
    expected_economic, expected_social, _ = instrument.score(ids, combined)
    # two levels: the items and the wordings resampled, so the interval knows how much rewording moves the answer
    by_wording = group.by_wording()
    item_idx, counts = _resamples(_rng(seed, info.model, name, mode), bootstrap, len(ids), len(group.wordings))
    boot_economic, boot_social, _ = instrument.score(ids, _resampled_choice(by_wording, counts), item_idx)
    phrasing_share, phrasing_items = _stability(group, by=0)
    sample_share, sample_items = _stability(group, by=1)
    score = PositionScore(
        info.model, info.role, name, mode, float(economic[0]), float(social[0]), _interval(boot_economic),
        _interval(boot_social), float(expected_economic[0]), float(expected_social[0]), int(answered[0]), len(ids),
        phrasings=group.phrasings, samples=group.samples, phrasing_stability=phrasing_share,
        phrasing_stability_items=phrasing_items, sample_stability=sample_share, sample_stability_items=sample_items,
        statuses={s: group.statuses.get(s, 0) for s in STATUSES} | dict(group.statuses),
        adapter=info.adapter, checkpoint_of=info.checkpoint_of, step=info.step, scale_of=info.scale_of,
        scale=info.scale, right_share=info.right_share)
    _add_robustness(score, group, by_wording, instrument)
    return score


def _add_robustness(p: PositionScore, group: _Group, by_wording: np.ndarray, instrument: Instrument) -> None:
    """The position in each wording (`by_wording`: group.by_wording()) and its spread across them, the order
    sensitivity and the position in each order, and the validity of the answers."""
    ids = group.item_ids
    for j, phrasing in enumerate(group.wordings):
        economic, social, _ = instrument.score(ids, _one_hot_argmax(by_wording[:, j]))
        p.by_wording.append({"phrasing": phrasing, "economic": _finite(economic[0]), "social": _finite(social[0])})
    for axis in ("economic", "social"):
        values = [w[axis] for w in p.by_wording if w[axis] is not None]
        setattr(p, f"spread_{axis}", float(np.std(values, ddof=1)) if len(values) >= 2 else None)
    orders = {a.order for answers in group.answers.values() for a in answers} - {None}
    if orders:
        forward, reverse = group.by_wording(order=FORWARD), group.by_wording(order=REVERSED)
        both = ~np.isnan(forward).any(axis=2) & ~np.isnan(reverse).any(axis=2)
        p.order_pairs = int(both.sum())
        if p.order_pairs:
            changed = np.argmax(forward, axis=2) != np.argmax(reverse, axis=2)
            p.order_sensitivity = float(changed[both].mean())
        for label, dist in (("forward", forward), ("reversed", reverse)):
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an item not asked in this order: NaN
                economic, social, _ = instrument.score(ids, _one_hot_argmax(np.nanmean(dist, axis=1)))
            p.by_order[label] = [_finite(economic[0]), _finite(social[0])]
    answered = sum(group.statuses.values()) - group.statuses.get(ENGINE_ERROR, 0)
    p.validity = group.statuses.get(OK, 0) / answered if answered else None


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def _stability(group: _Group, by: int) -> tuple[float | None, int]:
    """Share of items whose most likely option is the same in every phrasing (by=0) or sample (by=1), among the
    items answered in at least two; None when fewer than two were asked or no item qualifies."""
    if (group.phrasings if by == 0 else group.samples) < 2:
        return None, 0
    same = counted = 0
    for answers in group.answers.values():
        parts: dict[int, list[np.ndarray]] = defaultdict(list)
        for answer in answers:
            parts[answer[by]].append(answer.vec)
        if len(parts) < 2:
            continue
        counted += 1
        same += len({int(np.argmax(np.mean(vecs, axis=0))) for vecs in parts.values()}) == 1
    return (same / counted if counted else None), counted


def _add_shift(p: PositionScore, base: PositionScore, groups: dict[tuple[str, str, str], _Group],
               instrument: Instrument, bootstrap: int, seed: int) -> None:
    """The shift from the base, with a paired two-level bootstrap (the same resampled items and wordings for model
    and base, over those both were asked), and whether it exceeds the noise floor: the base's spread across
    wordings, on each axis."""
    model_group, base_group = groups[(p.model, p.instrument, p.mode)], groups[(base.model, p.instrument, p.mode)]
    in_base = set(base_group.item_ids)
    shared = [i for i in model_group.item_ids if i in in_base]
    wordings = [w for w in model_group.wordings if w in base_group.wordings]
    p.base = base.model
    p.shift_economic, p.shift_social = p.economic - base.economic, p.social - base.social
    p.noise_floor_economic, p.noise_floor_social = base.spread_economic, base.spread_social
    if not shared or not wordings:
        p.shift_economic_ci = p.shift_social_ci = (math.nan, math.nan)
        return
    item_idx, counts = _resamples(_rng(seed, "paired", p.model, base.model, p.instrument, p.mode), bootstrap,
                                  len(shared), len(wordings))
    model_economic, model_social, _ = instrument.score(
        shared, _resampled_choice(model_group.by_wording(shared, wordings), counts), item_idx)
    base_economic, base_social, _ = instrument.score(
        shared, _resampled_choice(base_group.by_wording(shared, wordings), counts), item_idx)
    p.shift_economic_ci = _interval(model_economic - base_economic)
    p.shift_social_ci = _interval(model_social - base_social)
    if p.model != base.model:
        for axis in ("economic", "social"):
            verdict = _verdict(getattr(p, f"shift_{axis}"), getattr(p, f"shift_{axis}_ci"),
                               getattr(p, f"noise_floor_{axis}"))
            setattr(p, f"verdict_{axis}", verdict)
            setattr(p, f"beyond_noise_{axis}", None if verdict in (NO_FLOOR, None) else verdict == BEYOND)


BEYOND, WITHIN, INCLUDES_ZERO, NO_FLOOR = ("beyond the noise floor", "within the noise floor",
                                           "above the noise floor, but its interval includes zero",
                                           "no noise floor (one wording)")


def _verdict(shift: float, interval: Interval, floor: float | None) -> str | None:
    """A shift against the noise floor: beyond it when it is larger than the base's spread across wordings and its
    paired interval excludes zero; within it when it is no larger; else its interval includes zero. None without a
    shift or an interval."""
    if not math.isfinite(shift) or not all(math.isfinite(x) for x in interval):
        return None
    if floor is None:
        return NO_FLOOR
    if abs(shift) <= floor:
        return WITHIN
    return INCLUDES_ZERO if interval[0] <= 0 <= interval[1] else BEYOND


def _agreement(model: str, name: str, logprob: _Group, generate: _Group) -> ModeAgreement:
    in_generate = set(generate.item_ids)
    shared = [i for i in logprob.item_ids if i in in_generate]
    a, b = logprob.combined(shared), generate.combined(shared)
    both = ~np.isnan(a).any(axis=1) & ~np.isnan(b).any(axis=1)
    n = int(both.sum())
    same = int((np.argmax(a[both], axis=1) == np.argmax(b[both], axis=1)).sum()) if n else 0
    return ModeAgreement(model, name, same / n if n else None, n)


def _probe_scores(rows: list[dict[str, Any]], models: dict[str, ModelInfo], base_of: dict[str, str | None],
                  bootstrap: int, seed: int) -> list[ProbeScore]:
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    sums: dict[str, dict[str, tuple[float, int]]] = {}
    out: dict[str, ProbeScore] = {}
    for model, model_rows in by_model.items():
        per: dict[str, list[float]] = defaultdict(list)
        asked = sorted({str(r["item_id"]) for r in model_rows})
        for r in model_rows:
            if r["status"] == OK and r.get("judge_score") is not None and math.isfinite(r["judge_score"]):
                per[str(r["item_id"])].append(float(r["judge_score"]))
        sums[model] = {item: (sum(v), len(v)) for item, v in per.items()}
        scored = sorted(per)
        total, count = sum(s for s, _ in sums[model].values()), sum(n for _, n in sums[model].values())
        mean = total / count if count else math.nan
        ci: Interval = (math.nan, math.nan)
        if scored:
            idx = _rng(seed, model, PROBES).integers(0, len(scored), size=(bootstrap, len(scored)))
            ci = _interval(_resampled_means(sums[model], scored, idx))
        statuses = Counter(r["status"] for r in model_rows)
        out[model] = ProbeScore(model, models[model].role, mean, ci, count, len(scored), len(asked),
                                statuses.get(UNMAPPED, 0), {s: statuses.get(s, 0) for s in STATUSES} | dict(statuses),
                                {i: (sum(per[i]) / len(per[i]) if per.get(i) else None) for i in asked})
    for model, p in out.items():
        base = base_of.get(model)
        if base is None or base not in out:
            continue
        p.base, p.shift = base, p.judge_mean - out[base].judge_mean
        shared = sorted(set(sums[model]) & set(sums[base]))
        if not shared:
            p.shift_ci = (math.nan, math.nan)
            continue
        idx = _rng(seed, "paired", model, base, PROBES).integers(0, len(shared), size=(bootstrap, len(shared)))
        p.shift_ci = _interval(_resampled_means(sums[model], shared, idx) - _resampled_means(sums[base], shared, idx))
    return list(out.values())


def _issue_scores(rows: list[dict[str, Any]], models: dict[str, ModelInfo], base_of: dict[str, str | None],
                  sides: Mapping[str, str], bootstrap: int, seed: int) -> list[IssueScore]:
    """Each model's stance shares on the issue set, overall and by framing, and the share of its sided answers (for
    or against) on the left's side, with a bootstrap over issues and, against its base, a paired one."""
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        by_model[r["model"]].append(r)
    sided: dict[str, dict[str, tuple[float, int]]] = {}  # model -> issue -> (answers on the left's side, sided)
    out: dict[str, IssueScore] = {}
    for model, model_rows in by_model.items():
        read = [r for r in model_rows if r["status"] == OK and r.get("stance") in STANCES]
        shares = _shares(read)
        framings = {FRAMINGS[f]: _shares([r for r in read if (r.get("phrasing") or 0) == f])
                    for f in range(len(FRAMINGS)) if any((r.get("phrasing") or 0) == f for r in model_rows)}
        per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for r in read:
            if r["stance"] in ("for", "against") and str(r["item_id"]) in sides:
                per[str(r["item_id"])][0] += r["stance"] == sides[str(r["item_id"])]
                per[str(r["item_id"])][1] += 1
        sided[model] = {i: (float(left), n) for i, (left, n) in per.items()}
        ids = sorted(sided[model])
        left = sum(v[0] for v in sided[model].values()) / max(1, sum(v[1] for v in sided[model].values()))
        ci: Interval = (math.nan, math.nan)
        if ids:
            idx = _rng(seed, model, ISSUES).integers(0, len(ids), size=(bootstrap, len(ids)))
            ci = _interval(_resampled_means(sided[model], ids, idx))
        statuses = Counter(r["status"] for r in model_rows)
        out[model] = IssueScore(model, models[model].role, len({str(r["item_id"]) for r in read}), len(read), shares,
                                framings, left if ids else None, ci,
                                {s: statuses.get(s, 0) for s in STATUSES} | dict(statuses))
    for model, s in out.items():
        base = base_of.get(model)
        if base is None or base not in out or s.left_share is None or out[base].left_share is None:
            continue
        s.base, s.shift = base, s.left_share - out[base].left_share
        shared = sorted(set(sided[model]) & set(sided[base]))
        if shared:
            idx = _rng(seed, "paired", model, base, ISSUES).integers(0, len(shared), size=(bootstrap, len(shared)))
            s.shift_ci = _interval(_resampled_means(sided[model], shared, idx)
                                   - _resampled_means(sided[base], shared, idx))
    return list(out.values())


def _shares(rows: list[dict[str, Any]]) -> dict[str, float]:
    counts = Counter(r["stance"] for r in rows)
    return {s: counts.get(s, 0) / len(rows) for s in STANCES} if rows else {}


def _resampled_means(sums: dict[str, tuple[float, int]], probe_ids: list[str], idx: np.ndarray) -> np.ndarray:
    """The mean score of the rows of each resample of probes: (B,) from (B, m) indices into probe_ids."""
    total = np.array([sums[i][0] for i in probe_ids])
    count = np.array([sums[i][1] for i in probe_ids], dtype=float)
    return total[idx].sum(axis=1) / count[idx].sum(axis=1)


def _trajectories(models: dict[str, ModelInfo], base_of: dict[str, str | None],
                  positions: dict[tuple[str, str, str], PositionScore],
                  instruments: Mapping[str, Instrument]) -> list[Trajectory]:
    """For each adapter with checkpoints: base -> checkpoints by step -> the final adapter, per instrument and mode."""
    checkpoints: dict[str, list[ModelInfo]] = defaultdict(list)
    for info in models.values():
        if info.role == CHECKPOINT and info.checkpoint_of:
            checkpoints[info.checkpoint_of].append(info)
    out = []
    for adapter in sorted(checkpoints):
        steps = sorted(checkpoints[adapter], key=lambda i: (i.step if i.step is not None else -1, i.model))
        final = next((i for i in models.values() if i.role == ADAPTER and i.adapter == adapter), None)
        base = base_of.get(final.model if final else steps[0].model)
        path = ([(base, base, 0)] if base else []) + [(f"step {i.step}", i.model, i.step) for i in steps] + \
            ([(final.model, final.model, None)] if final else [])
        for name in instruments:
            for mode in MODES:
                points = [TrajectoryPoint(label, model, step, positions[(model, name, mode)].economic,
                                          positions[(model, name, mode)].social)
                          for label, model, step in path if (model, name, mode) in positions]
                if any(positions.get((i.model, name, mode)) for i in steps):
                    out.append(Trajectory(adapter, name, mode, points))
    return out


def _cut(text: str | None, limit: int = LISTED_CHARS) -> str | None:
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


def _plain(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return _plain(value.item())
    return value
