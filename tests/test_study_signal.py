"""The embedded default carries the study's signal from posts to compass (issue 18), checked at a cheaper size.

One `politune run` on the `local` preset in a fresh folder: the tiny model is warmed on the project's synthetic
world, annotates posts it never saw, the paper's thresholds select them, DPO tunes an adapter a side, and the
compass (explain mode: the model's own answer first, then the forced choice) must move each adapter its way. The
size is cut to keep CI short (fewer warm-up steps, posts, pairs and phrasings, no probes); the README reports the
full default's figures, intervals included. Here only directions are asserted: at this size an interval may
still reach zero.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port

pytestmark = pytest.mark.integration

ENV = {**{k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "POLITUNE_VERBOSE")},
       "COLUMNS": "160", "NO_COLOR": "1"}
CHEAPER = ["tiny_model.warm_steps=600", "corpus.n=1500", "select.max_per_side=150", "evaluate.phrasings=2",
           "evaluate.probes=false", "ray.num_cpus=2"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("study")
    sets = [arg for s in [*CHEAPER, f"serve.port={free_port()}"] for arg in ("--set", s)]
    done = subprocess.run([sys.executable, "-m", "politune.cli", "run", *sets], cwd=folder, env=ENV,
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return folder / "runs" / "local", done.stdout


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


def test_the_compass_moves_each_adapter_its_way(study: tuple[Path, str]) -> None:
    """Left of and below the base for the left adapter, right of and above it for the right one."""
    run, stdout = study
    positions = json.loads((run / "report" / "scores.json").read_text())["positions"]
    shift = {p["model"]: (p["shift_economic"], p["shift_social"]) for p in positions
             if p["instrument"] == "politune" and p["mode"] == "explain"}
    assert set(shift) == {"tiny", "tiny:left", "tiny:right"}
    assert shift["tiny:left"][0] < 0 and shift["tiny:left"][1] < 0, shift
    assert shift["tiny:right"][0] > 0 and shift["tiny:right"][1] > 0, shift
    assert "position:   politune (explain)" in stdout
