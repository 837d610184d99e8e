"""Dose and response without a model: mixtures' pairs, adapters scaled by their B matrices, and the report's curves
and slopes from stored answers. (The scaled copies served by both back ends: test_serve, test_serve_vllm_cpu; a
mixture trained and placed on the compass: test_study_signal.)"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from politune.config import ConfigError, Mixture, build_config
from politune.contracts.compass.instruments import load_politune_instrument
from politune.contracts.compass.schema import ANSWER_SCHEMA
from politune.models.scaled_adapters import check_scalable, scale_lora_weights
from politune.report import build_report
from politune.report.dose import PER
from politune.train.data import mixture_rows


def pairs(side: str, n: int) -> list[dict[str, str]]:
    return [{"pair_id": f"{side}-{i}", "prompt": "p", "chosen": side, "rejected": "other"} for i in range(n)]


# --- mixtures ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("left", "right", "n_left", "n_right", "size"), [
    (0.75, 0.25, 37, 50, None), (0.5, 0.5, 41, 40, None), (0.25, 0.75, 60, 33, None), (0.5, 0.5, 60, 70, 21),
    (1.0, 0.0, 12, 30, None)])
def test_a_mixture_takes_its_shares_of_each_side_within_one_pair(left: float, right: float, n_left: int,
                                                                 n_right: int, size: int | None) -> None:
    mixture = Mixture(name="mix", left=left, right=right, size=size)
    rows = mixture_rows(mixture, pairs("left", n_left), pairs("right", n_right))
    total = size or min(n_left, n_right)
    assert len(rows) == total and len({r["pair_id"] for r in rows}) == total
    taken = {side: sum(r["chosen"] == side for r in rows) for side in ("left", "right")}
    assert abs(taken["right"] - total * right) <= 1 and abs(taken["left"] - total * left) <= 1


def test_a_mixture_draws_the_same_pairs_whatever_their_order_and_another_draws_others() -> None:
    left, right = pairs("left", 80), pairs("right", 80)
    mixture = Mixture(name="r50l50", left=0.5, right=0.5)
    first = mixture_rows(mixture, left, right)
    shuffled = mixture_rows(mixture, random.Random(3).sample(left, 80), random.Random(4).sample(right, 80))
    assert [r["pair_id"] for r in first] == [r["pair_id"] for r in shuffled]
    other = mixture_rows(Mixture(name="again", left=0.5, right=0.5, size=40), left, right)
    assert {r["pair_id"] for r in other} != {r["pair_id"] for r in first[:40]}  # a subset, but not the first half


def test_a_mixture_asking_more_pairs_than_a_side_has_names_it() -> None:
    with pytest.raises(ValueError, match=r"mixture big: 60 right pairs wanted .* has 50: lower"):
        mixture_rows(Mixture(name="big", left=0.25, right=0.75, size=80), pairs("left", 90), pairs("right", 50))


@pytest.mark.parametrize(("train", "evaluate", "message"), [
    ({"mixtures": [{"name": "m", "left": 0.6, "right": 0.6}]}, {}, "left \\+ right is 1.2"),
    ({"mixtures": [{"name": "left", "left": 0.5, "right": 0.5}]}, {}, "name it by its shares"),
    ({"mixtures": [{"name": "r-x2", "left": 0.5, "right": 0.5}]}, {}, "scaled copy"),
    ({"mixtures": [{"name": "m", "left": 0.5, "right": 0.5}, {"name": "m", "left": 1, "right": 0}]}, {}, "twice"),
    ({}, {"adapter_scales": [0.5, 5]}, "between 0 \\(the base\\) and 4"),
    ({}, {"adapter_scales": [0.5, 0.5]}, "listed twice"),
])
def test_bad_mixtures_and_scales_are_refused_naming_the_fix(train: dict, evaluate: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config({"run_id": "r", "train": train, "evaluate": evaluate})


def test_the_embedded_default_trains_the_even_mixture() -> None:
    from politune.config import load_preset

    cfg = load_preset("local")
    assert [(m.name, m.left, m.right) for m in cfg.train.mixtures] == [("r50l50", 0.5, 0.5)]
    assert load_preset("local-random").train.mixtures == []  # the plumbing preset (based on local) trains none


# --- scaling an adapter --------------------------------------------------------------------------------------------
def test_scaling_multiplies_the_b_matrices_only() -> None:
    a, b = torch.randn(4, 16), torch.randn(16, 4)
    tensors = {"base_model.model.layers.0.q_proj.lora_A.weight": a,
               "base_model.model.layers.0.q_proj.lora_B.weight": b}
    scaled = scale_lora_weights(tensors, 0.5)
    assert torch.equal(scaled["base_model.model.layers.0.q_proj.lora_A.weight"], a)
    assert torch.equal(scaled["base_model.model.layers.0.q_proj.lora_B.weight"], b * 0.5)
    assert not scale_lora_weights(tensors, 0.0)["base_model.model.layers.0.q_proj.lora_B.weight"].any()
    with pytest.raises(ValueError, match="no LoRA B"):
        scale_lora_weights({"x.weight": a}, 0.5)


@pytest.mark.parametrize(("config", "message"), [({"peft_type": "IA3"}, "only LoRA"),
                                                 ({"peft_type": "LORA", "use_dora": True}, "DoRA"),
                                                 ({"peft_type": "LORA", "modules_to_save": ["lm_head"]}, "whole")])
def test_what_b_times_s_would_not_scale_is_refused(config: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_scalable(config, "adapters/left/adapter_config.json")


# --- the report's curves -------------------------------------------------------------------------------------------
# model, role, adapter, scale_of, scale, right_share, lean (-1 left … +1 right)
DOSE_MODELS = [("tiny", "base", None, None, None, None, 0.0), ("tiny:left", "adapter", "left", None, None, 0.0, -1.0),
               ("tiny:r50l50", "adapter", "r50l50", None, None, 0.5, 0.1),
               ("tiny:right", "adapter", "right", None, None, 1.0, 1.0),
               ("tiny:right-x0.5", "scaled", "right-x0.5", "right", 0.5, 1.0, 0.5)]


def dose_rows(seed: int = 5) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for name, role, adapter, scale_of, scale, share, lean in DOSE_MODELS:
        for item in load_politune_instrument().items:
            direction = 1 if (item.econ[3] > 0 or item.social[3] > 0) else -1
            logits = [lean * direction * v + rng.gauss(0, 1.0) for v in (-1.5, -0.5, 0.5, 1.5)]
            p = np.exp(logits) / np.exp(logits).sum()
            rows.append({"model": name, "role": role, "adapter": adapter, "scale_of": scale_of, "scale": scale,
                         "right_share": share, "instrument": "politune", "item_id": item.id, "phrasing": 0,
                         "sample": 0, "mode": "explain", "option_probs": p.tolist(), "answer": int(p.argmax()),
                         "status": "ok"})
    return rows


def test_the_report_draws_position_against_share_and_scale_from_the_stored_answers(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(dose_rows(), schema=ANSWER_SCHEMA), run / "eval" / "answers.parquet")
    report = build_report(str(run), bootstrap=300)
    curves = {c.kind: c for c in report.scores.curves}
    assert set(curves) == {"share", "scale"}
    share, scale = curves["share"], curves["scale"]
    assert [(p.x, p.model) for p in share.points] == [(0.0, "tiny:left"), (0.5, "tiny:r50l50"), (1.0, "tiny:right")]
    assert share.base.model == "tiny" and share.base.economic == report.scores.position(
        "tiny", "politune", "explain").economic  # the base drawn beside the adapters, for reference
    assert scale.adapter == "right"
    assert [(p.x, p.model) for p in scale.points] == [(0.0, "tiny"), (0.5, "tiny:right-x0.5"), (1.0, "tiny:right")]
    for curve in (share, scale):
        for p in curve.points:  # each point is the model's own position, read from the answers
            position = report.scores.position(p.model, "politune", "explain")
            assert (p.economic, p.social, p.economic_ci) == (position.economic, position.social, position.economic_ci)
        x = np.array([p.x for p in curve.points])
        for axis in ("economic", "social"):
            y = np.array([getattr(p, axis) for p in curve.points])
            expected = np.polyfit(x, y, 1)[0] * PER
            slope, (low, high) = getattr(curve, f"slope_{axis}"), getattr(curve, f"slope_{axis}_ci")
            assert slope == pytest.approx(expected) and low < slope < high
            assert slope > 0  # the made-up answers lean further right with the share and the scale
    for kind in ("share", "scale"):
        png = Path(report.dose[kind])
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.with_suffix(".svg").is_file()
    saved = json.loads(Path(report.scores_json).read_text())["curves"]
    assert [c["kind"] for c in saved] == ["share", "scale"] and saved[0]["points"][1]["model"] == "tiny:r50l50"
    markdown = Path(report.markdown).read_text()
    assert "![position against share](dose_share.png)" in markdown and "Dose and response" in markdown
    assert "slope per 0.1 of share of right pairs (3 points)" in "\n".join(report.summary_lines())


def test_a_report_without_mixtures_or_scales_has_no_curves(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "eval").mkdir(parents=True)
    rows = [r for r in dose_rows() if r["model"] in ("tiny", "tiny:left")]
    pq.write_table(pa.Table.from_pylist(rows, schema=ANSWER_SCHEMA), run / "eval" / "answers.parquet")
    report = build_report(str(run), bootstrap=200)
    assert report.scores.curves == [] and report.dose == {} and not (run / "report" / "dose_share.png").exists()
