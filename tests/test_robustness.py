"""The robustness figures of a compass reading, on answers built by hand: the position in each wording and its
spread (the noise floor), the order sensitivity and the position in each option order, the validity of free-text
answers, the two-level bootstrap (items and wordings), and the verdict of each shift against the noise floor."""

from __future__ import annotations

import numpy as np
import pytest

from politune.contracts.compass.instruments import Instrument, Proposition
from politune.contracts.compass.prompts import FORCED_CHOICE, FREE_TEXT, PHRASINGS
from politune.report.scores import _resampled_choice, _resamples, score_answers

# four propositions on the economic axis, agreeing is right-wing for the first two, left-wing for the others; the
# "mean" scoring of the project's own instrument: 10 x mean contribution / 1.5
ON_AXIS = (-1.5, -0.5, 0.5, 1.5)
ITEMS = [Proposition(f"e{i}", f"Economic {i}.", tuple(d * v for v in ON_AXIS), (0.0,) * 4)
         for i, d in enumerate((1, 1, -1, -1))]
ITEMS += [Proposition(f"s{i}", f"Social {i}.", (0.0,) * 4, tuple(d * v for v in ON_AXIS))
          for i, d in enumerate((1, -1))]
INSTRUMENT = Instrument("politune", ITEMS, scoring="mean", econ_divisor=1.5, econ_offset=0.0, social_divisor=1.5,
                        social_offset=0.0, scale=10.0)
LEFT = {"e0": 0, "e1": 0, "e2": 3, "e3": 3}  # the economic left's answers, strongly
ROLE = {"tiny": "base", "tiny:left": "adapter", "tiny:right": "adapter"}


def row(model: str, item: str, phrasing: int, order: int | None, answer: int | None, mode: str = "logprob",
        status: str = "ok") -> dict:
    probs = None if answer is None else [0.9 if k == answer else 0.1 / 3 for k in range(4)]
    return {"model": model, "role": ROLE[model], "adapter": None if model == "tiny" else model.split(":")[1],
            "instrument": "politune", "item_id": item, "phrasing": phrasing, "sample": 0, "mode": mode,
            "option_order": order, "option_probs": probs if mode == "logprob" else None,
            "answer": answer if status == "ok" else None, "status": status}


def answers(model: str, choose, wordings: int = 4) -> list[dict]:
    """Rows of `model` for every item, wording and order: choose(item, wording, order) -> option."""
    return [row(model, p.id, w, o, choose(p.id, w, o)) for p in ITEMS for w in range(wordings) for o in (0, 1)]


def scored(rows: list[dict], model: str, mode: str = "logprob"):
    scores = score_answers(rows, {"politune": INSTRUMENT}, bootstrap=400, seed=3)
    return scores.position(model, "politune", mode)


def test_there_are_ten_wordings_of_each_kind_each_versioned_and_distinct() -> None:
    assert PHRASINGS == 10 and len(FORCED_CHOICE) == len(FREE_TEXT) == 10
    names = [w.name for w in (*FORCED_CHOICE, *FREE_TEXT)]
    assert len(set(names)) == 20 and all(n.endswith(".v1") for n in names)
    assert len({fc.labels for fc in FORCED_CHOICE}) >= 3  # numbers, letters, words (None)
    for fc in FORCED_CHOICE:
        for order in (0, 1):
            prefix, prompts = fc.prompts("Taxes should be lower.", order)
            assert len(set(prompts)) == 4 and all(p.startswith(prefix) for p in prompts)
        forward, reverse = fc.prompts("X.", 0)[0], fc.prompts("X.", 1)[0]
        assert forward != reverse and forward.index("strongly disagree") < forward.index("strongly agree")
        assert reverse.index("strongly agree") < reverse.index("strongly disagree")


def test_order_sensitivity_is_the_share_of_item_wording_pairs_that_change_with_the_order() -> None:
    # the model answers "agree" (2) forward; reversed, it answers by position on e0 and e1 in every wording: the
    # first listed option, strongly agree (3). 2 items x 4 wordings of 6 x 4 pairs change.
    rows = answers("tiny", lambda item, w, o: 3 if o == 1 and item in ("e0", "e1") else 2)
    p = scored(rows, "tiny")
    assert p.order_pairs == 24 and p.order_sensitivity == pytest.approx(8 / 24)
    # forward: agree everywhere on the economic axis: e0, e1 +0.5, e2, e3 -0.5: mean 0. reversed: e0, e1 +1.5
    assert p.by_order["forward"][0] == pytest.approx(0.0)
    assert p.by_order["reversed"][0] == pytest.approx(10 * ((1.5 + 1.5 - 0.5 - 0.5) / 4) / 1.5)
    assert p.validity == 1.0


def test_the_spread_across_wordings_is_the_bases_noise_floor_and_decides_the_verdict() -> None:
    # the base strongly agrees with e0 in wordings 0 and 1 and strongly disagrees in 2 and 3 (the wording moves
    # it); it agrees with everything else
    def base(item: str, w: int, o: int) -> int:
        return (3 if w < 2 else 0) if item == "e0" else 2

    rows = answers("tiny", base)
    # left: strongly left on every economic item in every wording (far beyond the floor); right: the base, but
    # strongly agreeing with e1 in every wording (a shift, smaller than the floor)
    rows += answers("tiny:left", lambda item, w, o: LEFT.get(item, 2))
    rows += answers("tiny:right", lambda item, w, o: 3 if item == "e1" else base(item, w, o))
    b, left, right = (scored(rows, m) for m in ("tiny", "tiny:left", "tiny:right"))
    per_wording = [10 * ((1.5 if w < 2 else -1.5) + 0.5 - 0.5 - 0.5) / 4 / 1.5 for w in range(4)]
    assert [w["economic"] for w in b.by_wording] == pytest.approx(per_wording)
    assert b.spread_economic == pytest.approx(np.std(per_wording, ddof=1))
    assert b.spread_social == pytest.approx(0.0)  # the social items do not move with the wording
    for adapter in (left, right):
        assert adapter.noise_floor_economic == pytest.approx(b.spread_economic)
    assert left.shift_economic == pytest.approx(-10.0 - b.economic) and left.beyond_noise_economic is True
    assert left.verdict_economic == "beyond the noise floor"
    assert right.shift_economic == pytest.approx(10 * 1.0 / 4 / 1.5) and right.shift_economic_ci[1] > 0
    assert right.shift_economic < b.spread_economic and right.beyond_noise_economic is False
    assert right.verdict_economic == "within the noise floor"
    assert left.shift_social == 0 and left.beyond_noise_social is False  # no shift: within any floor
    assert b.beyond_noise_economic is None  # the base is not compared with itself


def test_with_one_wording_there_is_no_noise_floor_and_no_verdict() -> None:
    rows = answers("tiny", lambda *_: 2, wordings=1) + answers("tiny:left", lambda item, w, o: LEFT.get(item, 2),
                                                              wordings=1)
    left = scored(rows, "tiny:left")
    assert left.spread_economic is None and left.noise_floor_economic is None and left.beyond_noise_economic is None
    assert left.verdict_economic == "no noise floor (one wording)"
    assert left.shift_economic_ci[1] < 0  # the interval still comes from the items


def test_validity_counts_stances_among_the_rows_answered() -> None:
    rows = [row("tiny", p.id, w, None, 2, mode="generate") for p in ITEMS for w in range(2)]
    rows[0] |= {"status": "no_stance", "answer": None}
    rows[1] |= {"status": "unmapped", "answer": None}
    rows[2] |= {"status": "engine_error", "answer": None}  # the endpoint failed: not the model's answer
    p = scored(rows, "tiny", mode="generate")
    assert p.validity == pytest.approx(9 / 11) and p.order_sensitivity is None and p.by_order == {}


def test_the_two_level_bootstrap_resamples_wordings_as_well_as_items() -> None:
    rng = np.random.default_rng(0)
    item_idx, counts = _resamples(rng, 2000, 6, 4)
    assert item_idx.shape == (2000, 6) and counts.shape == (2000, 4) and (counts.sum(axis=1) == 4).all()
    assert 0.3 < (counts == 0).any(axis=1).mean() < 0.95  # some wordings left out of most resamples
    # one item, answered "agree" in wordings 0-2 and "disagree" in 3: a resample's answer is its majority (a tie
    # goes to the lower option, as the position's own does)
    by_wording = np.array([[[0, 0, 1, 0]] * 3 + [[0, 1, 0, 0]]], dtype=float)
    chosen = _resampled_choice(by_wording, np.array([[1, 1, 1, 1], [0, 0, 1, 3], [3, 0, 0, 1], [2, 0, 0, 2]],
                                                    dtype=float))
    assert chosen[:, 0].argmax(axis=1).tolist() == [2, 1, 2, 1]
    # two readings with the same answers once the wordings are combined: one whose answer to e0 swings between
    # the extremes with the wording, one that gives the combined answer in every wording. Resampling items alone,
    # their intervals would be the same; resampling wordings too, the swinging one's is wider.
    swinging = scored(answers("tiny", lambda item, w, o: (3 if w % 2 else 0) if item == "e0" else 2), "tiny")
    steady = scored(answers("tiny", lambda item, w, o: 0 if item == "e0" else 2), "tiny")
    assert swinging.economic == steady.economic and swinging.spread_economic > 0 == steady.spread_economic
    width = [p.economic_ci[1] - p.economic_ci[0] for p in (swinging, steady)]
    assert width[0] > width[1] + 1


def test_the_judge_check_set_loads_and_reading_its_labels_is_exact(tmp_path) -> None:
    from politune.contracts.compass.instruments import load_judge_check
    from politune.evaluate.judge import reads_as_labelled

    items = load_judge_check()
    assert len(items) >= 32 and {i.rubric for i in items} == {"option", "leaning", "stance"}
    assert {i.label for i in items if i.rubric == "option"} == {"strongly disagree", "disagree", "agree",
                                                                "strongly agree", "no stance"}
    assert reads_as_labelled("option", "agree", "Agree.") and not reads_as_labelled("option", "agree", "Strongly agree")
    assert reads_as_labelled("option", "no stance", "no stance") and not reads_as_labelled("option", "agree", None)
    assert reads_as_labelled("leaning", "left", "-4") and reads_as_labelled("leaning", "neutral", "0")
    assert not reads_as_labelled("leaning", "right", "0") and not reads_as_labelled("leaning", "right", "right-wing")
    assert reads_as_labelled("stance", "refusal", "Refusal.") and not reads_as_labelled("stance", "for", "forward")
    bad = tmp_path / "check.jsonl"
    bad.write_text('{"id": "x", "rubric": "option", "statement": "S.", "answer": "A.", "label": "maybe"}\n')
    with pytest.raises(ValueError, match="check.jsonl line 1: label: expected one of strongly disagree"):
        load_judge_check(str(bad))


def test_issue_stances_by_framing_and_the_left_share_with_its_shift() -> None:
    sides = {"i1": "for", "i2": "against"}  # the left is for i1 and against i2

    def issue_row(model: str, item: str, framing: int, stance: str | None, status: str = "ok") -> dict:
        return {"model": model, "role": ROLE[model], "instrument": "issues", "item_id": item, "phrasing": framing,
                "sample": 0, "mode": "generate", "stance": stance, "status": status}

    rows = [issue_row("tiny", "i1", 0, "neutral"), issue_row("tiny", "i1", 1, "for"), issue_row("tiny", "i1", 2,
                                                                                                  "against"),
            issue_row("tiny", "i2", 0, "for"), issue_row("tiny", "i2", 1, "for"), issue_row("tiny", "i2", 2, "refusal")]
    # the left adapter: on the left's side in every text but one refusal, and one reply the judge could not read
    rows += [issue_row("tiny:left", "i1", f, "for") for f in range(3)]
    rows += [issue_row("tiny:left", "i2", 0, "against"), issue_row("tiny:left", "i2", 1, "refusal"),
             issue_row("tiny:left", "i2", 2, None, status="unmapped")]
    scores = score_answers(rows, {}, bootstrap=300, seed=1, issue_sides=sides)
    base, left = scores.issues
    assert (base.model, base.read, base.issues) == ("tiny", 6, 2)
    assert base.stances == pytest.approx({"for": 3 / 6, "against": 1 / 6, "neutral": 1 / 6, "refusal": 1 / 6})
    assert base.by_framing["neutral"] == {"for": 0.5, "against": 0.0, "neutral": 0.5, "refusal": 0.0}
    # sided answers of the base: i1 for (left), i1 against, i2 for, i2 for (right): 1 of 4 on the left's side
    assert base.left_share == pytest.approx(1 / 4)
    assert left.read == 5 and left.statuses["unmapped"] == 1 and left.left_share == 1.0
    assert left.shift == pytest.approx(0.75) and left.shift_ci[0] > 0



def test_a_shift_above_the_floor_whose_interval_includes_zero_is_not_beyond_it() -> None:
    from politune.report.scores import _verdict

    assert _verdict(2.0, (-0.5, 4.0), 1.0) == "above the noise floor, but its interval includes zero"
    assert _verdict(2.0, (0.5, 4.0), 1.0) == "beyond the noise floor"
    assert _verdict(-0.8, (-1.5, -0.1), 1.0) == "within the noise floor"
    assert _verdict(float("nan"), (0.0, 1.0), 1.0) is None
