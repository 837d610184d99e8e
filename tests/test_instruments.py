"""The instruments: the PCT's reference points, the own instrument's balance and corners, the probes, the loaders'
errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from politune.contracts.compass.instruments import (
    OPTION_VALUES,
    Instrument,
    Proposition,
    load_instrument,
    load_pct,
    load_politune_instrument,
    load_probes,
)

AGREE, STRONGLY_AGREE, DISAGREE, STRONGLY_DISAGREE = [0, 0, 1, 0], [0, 0, 0, 1], [0, 1, 0, 0], [1, 0, 0, 0]
SHIPPED = Path(__file__).resolve().parents[1] / "politune" / "contracts" / "compass" / "data"


@pytest.fixture(scope="module")
def pct(shared_data: Path) -> Instrument:
    path = shared_data / "pct" / "propositions.jsonl"
    if not path.exists():
        pytest.skip(f"PCT weights not found at {path}")
    return load_pct(str(path))


def test_pct_reference_points(pct: Instrument) -> None:
    ids = [p.id for p in pct.items]
    assert len(ids) == 62
    agree = pct.position(ids, [AGREE] * len(ids))
    assert agree.economic == pytest.approx(0.38, abs=0.005) and agree.social == pytest.approx(2.41, abs=0.005)
    assert (agree.answered, agree.asked) == (62, 62)
    disagree = pct.position(ids, [STRONGLY_DISAGREE] * len(ids))
    assert disagree.economic == pytest.approx(0.01, abs=0.005)
    assert disagree.social == pytest.approx(-4.36, abs=0.005)
    # not rounded inside: the raw sums are reported
    assert disagree.social == pytest.approx(sum(p.social[0] for p in pct.items) / 19.5 + 2.41)


def test_pct_unanswered_items_take_the_mean_of_the_answered(pct: Instrument) -> None:
    ids = [p.id for p in pct.items]
    rng = np.random.default_rng(3)
    chosen = rng.integers(0, 4, len(ids))
    answers = [list(np.eye(4)[k]) for k in chosen]
    full = pct.position(ids, answers)
    # dropping every other answer: the sum is scaled by asked / answered
    holes = [a if i % 2 else None for i, a in enumerate(answers)]
    partial = pct.position(ids, holes)
    kept = [i for i in range(len(ids)) if i % 2]
    econ = sum(pct.items[i].econ[chosen[i]] for i in kept) * len(ids) / len(kept)
    social = sum(pct.items[i].social[chosen[i]] for i in kept) * len(ids) / len(kept)
    assert partial.economic == pytest.approx(econ / 8 + 0.38)
    assert partial.social == pytest.approx(social / 19.5 + 2.41)
    assert (partial.answered, partial.asked, full.answered) == (len(kept), 62, 62)
    nothing = pct.position(ids, [None] * len(ids))
    assert math.isnan(nothing.economic) and math.isnan(nothing.social) and nothing.answered == 0
    # a distribution's expected contribution is Σ p_k w_k
    half = pct.position(ids[:1], [[0.5, 0, 0, 0.5]])
    assert half.economic == pytest.approx((pct.items[0].econ[0] + pct.items[0].econ[3]) / 2 / 8 + 0.38)


def test_item_ids_may_repeat(pct: Instrument) -> None:
    first = pct.items[0]
    twice = pct.position([first.id, first.id], [STRONGLY_AGREE, STRONGLY_AGREE])
    assert twice.economic == pytest.approx(2 * first.econ[3] / 8 + 0.38)
    assert twice.asked == 2


def test_own_instrument_is_balanced_and_large_enough() -> None:
    own = load_politune_instrument()
    rows = [json.loads(line) for line in (SHIPPED / "politune_compass.jsonl").read_text().splitlines()]
    assert len(own.items) == len(rows) >= 60
    for axis in ("economic", "social"):
        directions = [r["direction"] for r in rows if r["axis"] == axis]
        assert directions.count(1) == directions.count(-1) >= 16
    assert len({r["statement"] for r in rows}) == len(rows)
    ids = [p.id for p in own.items]
    everything = own.position(ids, [AGREE] * len(ids))
    assert (everything.economic, everything.social) == (0.0, 0.0)
    assert own.position(ids, [STRONGLY_AGREE] * len(ids)) == everything
    # the right-wing / authoritarian corner: strongly agree with the +1 items, strongly disagree with the -1 ones
    by_id = {r["id"]: r for r in rows}
    corner = own.position(ids, [STRONGLY_AGREE if by_id[i]["direction"] == 1 else STRONGLY_DISAGREE for i in ids])
    assert (corner.economic, corner.social) == pytest.approx((10.0, 10.0))
    opposite = own.position(ids, [STRONGLY_DISAGREE if by_id[i]["direction"] == 1 else STRONGLY_AGREE for i in ids])
    assert (opposite.economic, opposite.social) == pytest.approx((-10.0, -10.0))
    # economic right, social libertarian: each axis moves on its own
    mixed = own.position(ids, [STRONGLY_AGREE if (by_id[i]["direction"] == 1) == (by_id[i]["axis"] == "economic")
                               else STRONGLY_DISAGREE for i in ids])
    assert (mixed.economic, mixed.social) == pytest.approx((10.0, -10.0))
    # the weights: the option values times the direction, on the item's axis only
    for p in own.items:
        row = by_id[p.id]
        on, off = (p.econ, p.social) if row["axis"] == "economic" else (p.social, p.econ)
        assert on == tuple(row["direction"] * v for v in OPTION_VALUES) and off == (0, 0, 0, 0)


def test_own_instrument_scores_each_axis_over_its_answered_items() -> None:
    own = load_politune_instrument()
    econ = [p for p in own.items if any(p.econ)]
    social = [p for p in own.items if any(p.social)]
    # one economic +1 item strongly agreed, nothing else answered: economic = 10 · 1.5 / 1.5, social unanswered
    plus = next(p for p in econ if p.econ[3] > 0)
    only = own.position([p.id for p in own.items], [STRONGLY_AGREE if p is plus else None for p in own.items])
    assert only.economic == pytest.approx(10.0) and math.isnan(only.social) and only.answered == 1
    two = own.position([econ[0].id, social[0].id], [DISAGREE, AGREE])
    assert two.economic == pytest.approx(10 * econ[0].econ[1] / 1.5)
    assert two.social == pytest.approx(10 * social[0].social[2] / 1.5)


def test_the_paper_probes_come_first() -> None:
    probes = load_probes()
    paper = [p for p in probes if p.source == "paper"]
    assert [p.id for p in paper] == [f"p{i:02d}" for i in range(1, 8)]
    assert probes[:7] == paper
    questions = " ".join(p.question for p in paper)
    for subject in ("Democratic party", "Republican party", "vaccines", "vaccination", "Donald Trump",
                    "Bernie Sanders", "political ideology"):
        assert subject in questions
    assert sum(p.source == "politune" for p in probes) >= 8
    assert len({p.id for p in probes}) == len(probes)


def _write(path: Path, rows: list[object]) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


def test_pct_loader_errors_name_file_line_and_field(tmp_path: Path) -> None:
    good = {"id": 0, "statement": "A made-up proposition.", "econ": [-4, -2, 2, 4], "social": [0, 0, 0, 0]}
    path = _write(tmp_path / "pct.jsonl", [good, {**good, "id": 1}, {**good, "id": 2, "econ": [1, 2, 3]}])
    with pytest.raises(ValueError, match=r"^pct\.jsonl line 3: econ: expected 4 numbers, got 3$"):
        load_pct(path)
    cases = [
        ({**good, "social": [0, 0, "x", 0]}, r"line 2: social: expected 4 numbers"),
        ({**good, "statement": ""}, r"line 2: statement: expected a non-empty string"),
        ({k: v for k, v in good.items() if k != "id"}, r"line 2: id: expected a string or an integer"),
        ({**good, "econ": None}, r"line 2: econ: expected 4 numbers"),
        (good, r"line 2: id: '0' repeats line 1"),
        ("{not json", r"line 2: not valid JSON"),
        ("[1, 2]", r"line 2: expected a JSON object"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=r"^pct\.jsonl " + message):
            load_pct(_write(tmp_path / "pct.jsonl", [good, bad]))
    instrument = load_pct(_write(tmp_path / "ok.jsonl", [good, "", {**good, "id": "b"}]))
    assert [p.id for p in instrument.items] == ["0", "b"]
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_pct(str(tmp_path / "missing.jsonl"))


def test_own_loader_errors_and_balance(tmp_path: Path) -> None:
    rows = [{"id": "e01", "statement": "One.", "axis": "economic", "direction": 1},
            {"id": "e02", "statement": "Two.", "axis": "economic", "direction": -1},
            {"id": "s01", "statement": "Three.", "axis": "social", "direction": 1},
            {"id": "s02", "statement": "Four.", "axis": "social", "direction": -1}]
    assert len(load_politune_instrument(_write(tmp_path / "own.jsonl", rows)).items) == 4
    cases = [
        ({**rows[3], "axis": "cultural"}, r"own\.jsonl line 4: axis: expected 'economic' or 'social'"),
        ({**rows[3], "direction": 2}, r"own\.jsonl line 4: direction: expected 1 or -1"),
        ({**rows[3], "direction": True}, r"own\.jsonl line 4: direction: expected 1 or -1"),
        ({**rows[3], "direction": 1}, r"own\.jsonl: direction: the social axis is unbalanced \(2 items"),
        ({**rows[3], "id": "s01"}, r"own\.jsonl line 4: id: 's01' repeats line 3"),
    ]
    for bad, message in cases:
        with pytest.raises(ValueError, match=message):
            load_politune_instrument(_write(tmp_path / "own.jsonl", [*rows[:3], bad]))


def test_probe_loader_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"probes\.jsonl line 1: source: expected one of paper, politune"):
        load_probes(_write(tmp_path / "probes.jsonl", [{"id": "x", "question": "Why?", "source": "web"}]))
    with pytest.raises(ValueError, match=r"probes\.jsonl line 1: question: expected a non-empty string"):
        load_probes(_write(tmp_path / "probes.jsonl", [{"id": "x", "source": "paper"}]))


def test_load_instrument_dispatch(tmp_path: Path) -> None:
    assert load_instrument("politune", None).name == "politune"
    with pytest.raises(ValueError, match="evaluate.pct_path"):
        load_instrument("pct", None)
    with pytest.raises(ValueError, match="unknown instrument"):
        load_instrument("compass2", None)
    path = _write(tmp_path / "w.jsonl", [{"id": 7, "statement": "S.", "econ": [0, 0, 0, 0], "social": [1, 2, 3, 4]}])
    pct = load_instrument("pct", path)
    assert pct.name == "pct" and pct.items == [Proposition("7", "S.", (0, 0, 0, 0), (1, 2, 3, 4))]
    with pytest.raises(ValueError, match="4 option probabilities"):
        pct.position(["7"], [[1, 0, 0]])
    with pytest.raises(KeyError, match="no item '8'"):
        pct.position(["8"], [AGREE])
