"""The embedded default carries the study's signal from posts to compass (issue 18).

`politune run` on the `local` preset in a fresh folder, as `make demo` runs it less the probes (the session's
`default_run`, which test_commands reads too): the tiny model is warmed on the project's synthetic world, annotates
posts it never saw, the paper's thresholds select them, DPO tunes an adapter a side and one on half of each side's
pairs (the 50/50 mixture), and the compass is read in explain mode (the model's own answer first, then the forced
choice). Every stage up to training gives the same figures on every run here; evaluation samples one free-text
answer a question, seeded by the question, so the same adapters land on the same positions, and another
evaluate.seed moves them by a point or two.

What the compass must show: the right adapter right of and above the base on each axis, the left adapter's
shift pointing left and down (economic + social below zero), and the right adapter right of and above the left
one; the share curve through left, mixture and right, with its figure. Not asserted: the left adapter's sign on
each axis alone, nor any interval or verdict. With three wordings in both option orders (eval-v2, 2026-12-07) the
left adapter's shifts were -3.54 and -4.17 and the right's +1.87 and +2.08, every interval including zero: none
beyond the noise floor, the forced choice following the option order for 67% of item x wording pairs
(docs/embedded-default.md). Before (eval-v1: two or three phrasings, one order each, intervals over propositions
only) the left adapter's per-axis shifts ran from -2.29 to -5.83 over six evaluations.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import DefaultRun

pytestmark = [pytest.mark.e2e, pytest.mark.study]  # alone: `make test-study`, about 7 minutes


@pytest.fixture(scope="module")
def study(default_run: DefaultRun) -> tuple[Path, str]:
    """The session's run of the embedded default (conftest.default_run), which test_commands reads too."""
    return default_run.run, default_run.done.stdout


def test_the_warmed_model_annotates_and_selects_posts_on_their_side(study: tuple[Path, str]) -> None:
    run, stdout = study
    built = json.loads((run.parents[1] / ".politune" / "models" / "tiny-warm" / "politune_tiny.json").read_text())
    assert built["warm"]["held_out_annotation"]["accuracy"] >= 0.8  # posts of a seed the warm-up never used
    truth = json.loads((run / "manifest.json").read_text())["artifacts"]["selected"]["counts"]["truth"]
    assert truth["labelled"] > 500 and truth["annotated_on_side"] >= 0.8
    assert truth["selected_on_side"]["left"] >= 0.9 and truth["selected_on_side"]["right"] >= 0.9
    assert "against the corpus's own labels: annotate put" in stdout


def test_dpo_makes_each_adapter_prefer_its_sides_answers(study: tuple[Path, str]) -> None:
    run, _ = study
    registry = json.loads((run / "adapters" / "registry.json").read_text())["adapters"]
    for side in ("left", "right"):
        metrics = registry[side]["metrics"]
        assert metrics["after/preference_accuracy"] > metrics["before/preference_accuracy"], (side, metrics)
    mixture = registry["r50l50"]  # the default's 50/50 mixture: half of each side's train pairs
    assert mixture["side"] == "mixture" and mixture["shares"] == {"left": 0.5, "right": 0.5}
    manifest = json.loads((run / "manifest.json").read_text())["artifacts"]
    train_pairs = min(manifest["preferences"]["counts"][side]["train"] for side in ("left", "right"))
    assert manifest["adapter:r50l50"]["counts"]["train_pairs"] == train_pairs
    for side in ("left", "right"):  # measured on each side's eval split
        assert mixture["metrics"][f"after/{side}/pairs"] == manifest["preferences"]["counts"][side]["eval"]


def test_the_share_of_right_pairs_moves_the_compass_right(study: tuple[Path, str]) -> None:
    run, stdout = study
    curves = json.loads((run / "report" / "scores.json").read_text())["curves"]
    [share] = [c for c in curves if c["kind"] == "share" and c["instrument"] == "politune"]
    assert [(p["x"], p["model"]) for p in share["points"]] == [(0.0, "tiny:left"), (0.5, "tiny:r50l50"),
                                                               (1.0, "tiny:right")]
    # three equally spaced points: the slope is the right adapter's position less the left's, which the compass
    # test asserts on each axis; here, that the curve and its figure are built from them
    assert share["slope_economic"] > 0 and share["slope_social"] > 0
    assert (run / "report" / "dose_share.png").is_file()
    assert "slope per 0.1 of share of right pairs (3 points)" in stdout


def test_the_compass_moves_each_adapter_its_way(study: tuple[Path, str]) -> None:
    run, stdout = study
    positions = json.loads((run / "report" / "scores.json").read_text())["positions"]
    explain = {p["model"]: p for p in positions if p["instrument"] == "politune" and p["mode"] == "explain"}
    assert set(explain) == {"tiny", "tiny:left", "tiny:r50l50", "tiny:right"}
    base, left, right = explain["tiny"], explain["tiny:left"], explain["tiny:right"]
    assert left["shift_economic"] + left["shift_social"] < 0, (base, left)
    for axis in ("economic", "social"):
        assert right[f"shift_{axis}"] > 0, (axis, base, right)
        assert right[axis] > left[axis], (axis, left, right)
        assert left[axis] - base[axis] == pytest.approx(left[f"shift_{axis}"])  # shifts are from this base
    assert "position:   politune (explain)" in stdout
