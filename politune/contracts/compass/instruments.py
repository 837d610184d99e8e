"""The instruments: propositions with a weight per answer option on each axis, and how a set of answers becomes a
position on the compass; the probe questions.

Two instruments:
- `pct`: the Political Compass test reconstructed offline. Its propositions and weights are not the project's
  to ship: they are read from a file the user points at (evaluate.pct_path), of the shape of
  ../shared/data/pct/propositions.jsonl. economic = Σ econ / 8 + 0.38, social = Σ social / 19.5 + 2.41.
- `politune`: the project's own propositions (contracts/compass/data/politune_compass.jsonl), each on one axis with a
  direction; a position is 10 x the mean contribution on each axis / 1.5, so it lies in -10..10 and
  "agree with everything" scores exactly (0, 0).

An answer is a probability vector over the four options (0 = Strongly disagree … 3 = Strongly agree): one-hot for
a discrete answer, the model's distribution for an expected position, None for an item left unanswered. An
item's contribution to an axis is Σ_k p_k · w_k.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from politune.storage import resolve

Weights = tuple[float, float, float, float]

PCT, POLITUNE = "pct", "politune"
ECONOMIC, SOCIAL = "economic", "social"
OPTION_VALUES = (-1.5, -0.5, 0.5, 1.5)  # the own instrument: strongly disagree … strongly agree
PROBE_SOURCES = ("paper", "politune")
DATA_PACKAGE = "politune"
DATA_DIR = ("contracts", "compass", "data")


@dataclass(frozen=True)
class Proposition:
    id: str
    statement: str
    econ: Weights    # weight of option 0..3 on the economic axis (+ = right)
    social: Weights  # weight of option 0..3 on the social axis (+ = authoritarian)


@dataclass(frozen=True)
class Position:
    economic: float  # NaN when nothing was answered
    social: float
    answered: int
    asked: int

    def as_dict(self) -> dict[str, Any]:
        return {"economic": _finite(self.economic), "social": _finite(self.social), "answered": self.answered,
                "asked": self.asked}


@dataclass(frozen=True)
class Probe:
    id: str
    question: str
    source: str  # paper | politune


@dataclass
class Instrument:
    """A set of propositions and the scoring rule of their answers.

    scoring "sum" (the PCT): axis = offset + scale · Σ over the asked items of the contribution / divisor, an
    unanswered item counting as the mean contribution of the answered ones. scoring "mean" (the own instrument):
    axis = offset + scale · mean over the axis's answered items of the contribution / divisor, an item being on
    an axis when it has a nonzero weight there.
    """

    name: str
    items: list[Proposition]
    scoring: str = "sum"                       # sum | mean
    econ_divisor: float = 8.0
    econ_offset: float = 0.38
    social_divisor: float = 19.5
    social_offset: float = 2.41
    scale: float = 1.0
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.scoring not in ("sum", "mean"):
            raise ValueError(f"instrument {self.name}: scoring must be 'sum' or 'mean', not {self.scoring!r}")
        self._index = {p.id: i for i, p in enumerate(self.items)}
        if len(self._index) != len(self.items):
            repeated = sorted(k for k, n in Counter(p.id for p in self.items).items() if n > 1)
            raise ValueError(f"instrument {self.name}: repeated item ids {repeated}")

    def __contains__(self, item_id: str) -> bool:
        return item_id in self._index

    def item(self, item_id: str) -> Proposition:
        if item_id not in self._index:
            raise KeyError(f"instrument {self.name} has no item {item_id!r} ({len(self.items)} items)")
        return self.items[self._index[item_id]]

    def weights(self, item_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """The (n, 4) economic and social weights of these items, in this order."""
        items = [self.item(i) for i in item_ids]
        econ = np.array([p.econ for p in items], dtype=float).reshape(len(items), 4)
        social = np.array([p.social for p in items], dtype=float).reshape(len(items), 4)
        return econ, social

    def score(self, item_ids: Sequence[str], probs: np.ndarray,
              resamples: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positions of many resamples at once: probs is (n, 4) for item_ids, a row of NaN for an unanswered item,
        or (B, n, 4), the answers of each resample (a two-level bootstrap resamples the wordings too); resamples is
        (B, m) indices into item_ids (None: the items as given). Returns economic, social and the number
        answered, each of shape (B,) (B = 1 for (n, 4) probs and no resamples)."""
        probs = np.asarray(probs, dtype=float)
        per_resample = probs.ndim == 3
        probs = probs.reshape((probs.shape[0] if per_resample else 1, len(item_ids), 4))
        econ_w, social_w = self.weights(item_ids)
        answered = ~np.isnan(probs).any(axis=2)                                  # (B or 1, n)
        filled = np.where(answered[..., None], probs, 0.0)
        econ_c, social_c = (filled * econ_w).sum(axis=2), (filled * social_w).sum(axis=2)
        idx = np.arange(len(item_ids))[None, :] if resamples is None else np.asarray(resamples, dtype=int)
        if idx.ndim != 2:
            raise ValueError("resamples must be a (B, m) array of item indices")
        if per_resample and idx.shape[0] != probs.shape[0]:
            raise ValueError(f"{probs.shape[0]} resamples of answers but {idx.shape[0]} of items")
        idx = np.broadcast_to(idx, (max(idx.shape[0], probs.shape[0]), idx.shape[1]))
        rows = np.broadcast_to(np.arange(idx.shape[0])[:, None] % probs.shape[0], idx.shape)

        def gather(values: np.ndarray) -> np.ndarray:  # each resample's items, from its own answers
            return values[rows, idx]

        a = gather(answered).astype(float)
        n_answered = a.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            if self.scoring == "sum":
                asked = idx.shape[1]
                impute = np.where(n_answered > 0, asked / n_answered, np.nan)
                economic = (gather(econ_c) * a).sum(axis=1) * impute * self.scale / self.econ_divisor \
                    + self.econ_offset
                social = (gather(social_c) * a).sum(axis=1) * impute * self.scale / self.social_divisor \
                    + self.social_offset
            else:
                on_econ, on_social = (econ_w != 0).any(axis=1)[idx] * a, (social_w != 0).any(axis=1)[idx] * a
                econ_mean = (gather(econ_c) * on_econ).sum(axis=1) / on_econ.sum(axis=1)
                social_mean = (gather(social_c) * on_social).sum(axis=1) / on_social.sum(axis=1)
                economic = econ_mean * self.scale / self.econ_divisor + self.econ_offset
                social = social_mean * self.scale / self.social_divisor + self.social_offset
        return economic, social, n_answered.astype(int)

    def position(self, item_ids: list[str], answers: list[Sequence[float] | None]) -> Position:
        """The position of one set of answers; item_ids may repeat (a bootstrap resample)."""
        if len(item_ids) != len(answers):
            raise ValueError(f"{len(item_ids)} item ids but {len(answers)} answers")
        probs = np.full((len(item_ids), 4), np.nan)
        for row, answer in enumerate(answers):
            if answer is not None:
                vector = np.asarray(answer, dtype=float)
                if vector.shape != (4,):
                    raise ValueError(f"item {item_ids[row]}: an answer is 4 option probabilities, got {answer!r}")
                probs[row] = vector
        economic, social, answered = self.score(item_ids, probs)
        return Position(float(economic[0]), float(social[0]), int(answered[0]), len(item_ids))


# --- loading ---------------------------------------------------------------------------------------------------
def _read_lines(path: str) -> tuple[str, list[tuple[int, dict[str, Any]]]]:
    """(display name, [(line number, object)]) of a JSONL file, local or s3://; blank lines are skipped."""
    fs, inner = resolve(str(path))
    try:
        with fs.open_input_stream(inner) as f:
            text = f.read().decode("utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    name = str(path).rstrip("/").rsplit("/", 1)[-1]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{name} line {number}: not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise ValueError(f"{name} line {number}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise ValueError(f"{name}: no items")
    return name, rows


def _text(where: str, obj: dict[str, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value.strip()


def _item_id(where: str, obj: dict[str, Any]) -> str:
    value = obj.get("id")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise ValueError(f"{where}: id: expected a string or an integer, got {value!r}")
    return str(value).strip()


def _weights(where: str, obj: dict[str, Any], key: str) -> Weights:
    value = obj.get(key)
    if not isinstance(value, list):
        raise ValueError(f"{where}: {key}: expected 4 numbers, got {value!r}")
    if len(value) != 4:
        raise ValueError(f"{where}: {key}: expected 4 numbers, got {len(value)}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        raise ValueError(f"{where}: {key}: expected 4 numbers, got {value!r}")
    return tuple(float(v) for v in value)  # type: ignore[return-value]


def _check_unique(name: str, ids: list[tuple[int, str]]) -> None:
    seen: dict[str, int] = {}
    for number, item_id in ids:
        if item_id in seen:
            raise ValueError(f"{name} line {number}: id: {item_id!r} repeats line {seen[item_id]}")
        seen[item_id] = number


def load_pct(path: str) -> Instrument:
    """The Political Compass test from a weights file of the user's (id, statement, econ, social a line)."""
    name, rows = _read_lines(path)
    items, ids = [], []
    for number, obj in rows:
        where = f"{name} line {number}"
        item_id = _item_id(where, obj)
        items.append(Proposition(item_id, _text(where, obj, "statement"), _weights(where, obj, "econ"),
                                 _weights(where, obj, "social")))
        ids.append((number, item_id))
    _check_unique(name, ids)
    return Instrument(PCT, items)


def _shipped(filename: str) -> str:
    where = resources.files(DATA_PACKAGE)
    for part in (*DATA_DIR, filename):  # one part a call: Python 3.10's Traversable takes one
        where = where.joinpath(part)
    return str(where)


def load_politune_instrument(path: str | None = None) -> Instrument:
    """The project's own instrument (the shipped file unless path names another): id, statement, axis
    (economic | social), direction (+1: agreeing is right-wing / authoritarian, -1: left-wing / libertarian).
    The file must be balanced: as many +1 as -1 items on each axis."""
    name, rows = _read_lines(path or _shipped("politune_compass.jsonl"))
    items, ids = [], []
    directions: dict[str, Counter] = {ECONOMIC: Counter(), SOCIAL: Counter()}
    for number, obj in rows:
        where = f"{name} line {number}"
        item_id = _item_id(where, obj)
        statement = _text(where, obj, "statement")
        axis = obj.get("axis")
        if axis not in (ECONOMIC, SOCIAL):
            raise ValueError(f"{where}: axis: expected 'economic' or 'social', got {axis!r}")
        direction = obj.get("direction")
        if isinstance(direction, bool) or direction not in (1, -1):
            raise ValueError(f"{where}: direction: expected 1 or -1, got {direction!r}")
        on_axis = tuple(direction * v for v in OPTION_VALUES)
        zero = (0.0, 0.0, 0.0, 0.0)
        econ, social = (on_axis, zero) if axis == ECONOMIC else (zero, on_axis)
        items.append(Proposition(item_id, statement, econ, social))  # type: ignore[arg-type]
        ids.append((number, item_id))
        directions[axis][direction] += 1
    _check_unique(name, ids)
    for axis, counts in directions.items():
        if counts[1] != counts[-1]:
            raise ValueError(f"{name}: direction: the {axis} axis is unbalanced ({counts[1]} items with direction 1, "
                             f"{counts[-1]} with -1): agreeing with everything must score 0")
        if not counts[1]:
            raise ValueError(f"{name}: axis: no {axis} items")
    return Instrument(POLITUNE, items, scoring="mean", econ_divisor=1.5, econ_offset=0.0,
                      social_divisor=1.5, social_offset=0.0, scale=10.0)


def load_probes(path: str | None = None) -> list[Probe]:
    """The open questions the judge scores (the shipped file unless path names another): id, question, source."""
    name, rows = _read_lines(path or _shipped("probes.jsonl"))
    probes, ids = [], []
    for number, obj in rows:
        where = f"{name} line {number}"
        item_id = _item_id(where, obj)
        source = obj.get("source")
        if source not in PROBE_SOURCES:
            raise ValueError(f"{where}: source: expected one of {', '.join(PROBE_SOURCES)}, got {source!r}")
        probes.append(Probe(item_id, _text(where, obj, "question"), source))
        ids.append((number, item_id))
    _check_unique(name, ids)
    return probes


@dataclass(frozen=True)
class Issue:
    id: str
    issue: str   # a policy, as a noun phrase: "raising the minimum wage"
    left: str    # the stance the left takes on it: for | against


def load_issues(path: str | None = None) -> list[Issue]:
    """The open-ended issue set (the shipped file unless path names another): id, issue, left (for | against)."""
    name, rows = _read_lines(path or _shipped("issues.jsonl"))
    issues, ids = [], []
    for number, obj in rows:
        where = f"{name} line {number}"
        left = obj.get("left")
        if left not in ("for", "against"):
            raise ValueError(f"{where}: left: expected for or against (the stance the left takes), got {left!r}")
        issues.append(Issue(_item_id(where, obj), _text(where, obj, "issue"), left))
        ids.append((number, issues[-1].id))
    _check_unique(name, ids)
    return issues


@dataclass(frozen=True)
class JudgeCheckItem:
    """An answer whose stance is known, written by the project: what the judge is checked against."""

    id: str
    rubric: str    # option (a proposition's answer) | leaning (a probe's answer) | stance (a text on an issue)
    prompt: str    # the statement, the question or the issue
    answer: str
    label: str     # option: one of the rubric's five labels; leaning: left | right | neutral; stance: its label


JUDGE_CHECK_LABELS = {"option": ("strongly disagree", "disagree", "agree", "strongly agree", "no stance"),
                      "leaning": ("left", "right", "neutral"), "stance": ("for", "against", "neutral", "refusal")}
JUDGE_CHECK_PROMPT = {"option": "statement", "leaning": "question", "stance": "issue"}


def load_judge_check(path: str | None = None) -> list[JudgeCheckItem]:
    """The labelled answers (the shipped file unless path names another): id, rubric, statement (option), question
    (leaning) or issue (stance), answer, label."""
    name, rows = _read_lines(path or _shipped("judge_check.jsonl"))
    items, ids = [], []
    for number, obj in rows:
        where = f"{name} line {number}"
        rubric = obj.get("rubric")
        if rubric not in JUDGE_CHECK_LABELS:
            raise ValueError(f"{where}: rubric: expected one of {', '.join(JUDGE_CHECK_LABELS)}, got {rubric!r}")
        label = _text(where, obj, "label")
        if label not in JUDGE_CHECK_LABELS[rubric]:
            raise ValueError(f"{where}: label: expected one of {', '.join(JUDGE_CHECK_LABELS[rubric])}, got {label!r}")
        item_id = _item_id(where, obj)
        prompt = _text(where, obj, JUDGE_CHECK_PROMPT[rubric])
        items.append(JudgeCheckItem(item_id, rubric, prompt, _text(where, obj, "answer"), label))
        ids.append((number, item_id))
    _check_unique(name, ids)
    return items


def load_instrument(name: str, pct_path: str | None) -> Instrument:
    """An instrument by its name in the config: `pct` (needs the weights file) or `politune`."""
    if name == PCT:
        if not pct_path:
            raise ValueError("instrument pct needs its weights file: set evaluate.pct_path to a JSONL file of "
                             "id, statement, econ and social (the shape of shared/data/pct/propositions.jsonl)")
        return load_pct(pct_path)
    if name == POLITUNE:
        return load_politune_instrument()
    raise ValueError(f"unknown instrument {name!r}: expected {PCT} or {POLITUNE}")


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)
