"""Scores and the report from a synthetic answers.parquet: a base, two adapters and two checkpoints of one, both
modes, two phrasings, every status. The positions are recomputed here from the stored rows, independently of
politune.report.scores."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from politune.contracts.compass.schema import ANSWER_SCHEMA
from politune.report import build_report
from politune.report.scores import score_answers

SHIPPED = Path(__file__).resolve().parents[1] / "politune" / "contracts" / "compass" / "data"
OWN = [json.loads(line) for line in (SHIPPED / "politune_compass.jsonl").read_text().splitlines()]
VALUES = (-1.5, -0.5, 0.5, 1.5)
# a made-up weights file in the PCT's shape (not the test's weights)
PCT_ITEMS = [{"id": i, "statement": f"Made-up proposition {i}.", "econ": e, "social": s} for i, (e, s) in enumerate([
    ([-6, -3, 3, 6], [0, 0, 0, 0]), ([5, 2, -2, -5], [0, 0, 0, 0]), ([0, 0, 0, 0], [-7, -4, 2, 6]),
    ([0, 0, 0, 0], [6, 3, -1, -5]), ([-3, -1, 1, 4], [2, 1, -1, -2]), ([0, 0, 0, 0], [0, 0, 0, 0])])]
# model, role, adapter, checkpoint_of, step, lean (-1 left … +1 right)
MODELS = [("tiny", "base", None, None, None, 0.0), ("tiny:left", "adapter", "left", None, None, -1.2),
          ("tiny:right", "adapter", "right", None, None, 1.2),
          ("tiny:left.step-5", "checkpoint", "left.step-5", "left", 5, -0.4),
          ("tiny:left.step-10", "checkpoint", "left.step-10", "left", 10, -0.8)]
SCRIPT = "<script>alert('pwned')</script> I | refuse *to* answer"


def _probs(rng: random.Random, lean: float, weights: list[float]) -> list[float]:
    logits = [lean * w + rng.gauss(0, 0.8) for w in weights]
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    return [v / sum(e) for v in e]


def _row(model: tuple, instrument: str, item: str, phrasing: int, sample: int, mode: str, **fields) -> dict:
    name, role, adapter, checkpoint_of, step, _ = model
    return {"model": name, "role": role, "adapter": adapter, "checkpoint_of": checkpoint_of, "step": step,
            "instrument": instrument, "item_id": item, "phrasing": phrasing, "sample": sample, "mode": mode,
            "prompt_version": "eval-v1", **fields}


def synthetic_rows(seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    items = [("politune", r["id"], [r["direction"] * v for v in VALUES]) for r in OWN] + \
        [("pct", str(r["id"]), [a + b for a, b in zip(r["econ"], r["social"], strict=True)]) for r in PCT_ITEMS]
    for model in MODELS:
        lean = model[5]
        for instrument, item, weights in items:
            for phrasing in (0, 1):
                if rng.random() < 0.04:
                    rows.append(_row(model, instrument, item, phrasing, 0, "logprob", status="engine_error",
                                     error="HTTP 503"))
                else:
                    p = _probs(rng, lean, weights)
                    rows.append(_row(model, instrument, item, phrasing, 0, "logprob", option_probs=p,
                                     answer=int(np.argmax(p)), status="ok"))
                if model[2] in ("left.step-5", "left.step-10"):
                    continue  # checkpoints: logprob only
                for sample in (0, 1):
                    u = rng.random()
                    if u < 0.05:
                        rows.append(_row(model, instrument, item, phrasing, sample, "generate", status="no_stance",
                                         raw_output="It depends.", judge_output="no stance"))
                    elif u < 0.09:
                        rows.append(_row(model, instrument, item, phrasing, sample, "generate", status="unmapped",
                                         raw_output=SCRIPT, judge_output="<b>hmm</b>"))
                    elif u < 0.11:
                        rows.append(_row(model, instrument, item, phrasing, sample, "generate",
                                         status="engine_error", error="timeout"))
                    else:
                        p = _probs(rng, lean, weights)
                        answer = rng.choices(range(4), weights=p)[0]
                        rows.append(_row(model, instrument, item, phrasing, sample, "generate", answer=answer,
                                         status="ok", raw_output=f"answer {answer}", judge_output="agree"))
        for probe in (f"p0{i}" for i in range(1, 8)):
            for sample in (0, 1):
                if rng.random() < 0.15:
                    rows.append(_row(model, "probes", probe, 0, sample, "generate", status="unmapped",
                                     raw_output=SCRIPT, judge_output="I cannot rate <this>"))
                else:
                    score = max(-5, min(5, round(4 * lean + rng.gauss(0, 1.5))))
                    rows.append(_row(model, "probes", probe, 0, sample, "generate", status="ok",
                                     raw_output="An opinion.", judge_output=str(score), judge_score=float(score)))
    return rows


def write_run(run: Path, rows: list[dict], pct_path: str | None) -> None:
    (run / "eval").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=ANSWER_SCHEMA), run / "eval" / "answers.parquet")
    if pct_path is not None:
        (run / "eval" / "evaluation.json").write_text(json.dumps(
            {"pct_path": pct_path, "instruments": ["politune", "pct"], "modes": ["logprob", "generate"]}))


@pytest.fixture(scope="module")
def pct_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("weights") / "weights.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in PCT_ITEMS))
    return str(path)


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    return synthetic_rows()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, rows: list[dict], pct_file: str):
    run = tmp_path_factory.mktemp("run") / "runs" / "r1"
    write_run(run, rows, pct_file)
    return run, build_report(str(run), bootstrap=300, seed=7)


# --- the independent computation ---------------------------------------------------------------------------------
def combined(rows: list[dict], model: str, instrument: str, mode: str) -> tuple[list[str], dict[str, list[float]]]:
    """Asked items and each answered item's distribution: mean option_probs (logprob), answer shares (generate)."""
    mine = [r for r in rows if (r["model"], r["instrument"], r["mode"]) == (model, instrument, mode)]
    asked = list(dict.fromkeys(r["item_id"] for r in mine))
    dist: dict[str, list[list[float]]] = defaultdict(list)
    for r in mine:
        if r["status"] == "ok":
            dist[r["item_id"]].append(r["option_probs"] if mode == "logprob" else
                                      [1.0 if k == r["answer"] else 0.0 for k in range(4)])
    return asked, {i: [sum(v[k] for v in vs) / len(vs) for k in range(4)] for i, vs in dist.items()}


def argmax(v: list[float]) -> int:
    return max(range(4), key=lambda k: (v[k], -k))


def own_position(rows: list[dict], model: str, mode: str) -> tuple[float, float]:
    _, dist = combined(rows, model, "politune", mode)
    by_axis: dict[str, list[float]] = defaultdict(list)
    for r in OWN:
        if r["id"] in dist:
            by_axis[r["axis"]].append(r["direction"] * VALUES[argmax(dist[r["id"]])])
    return tuple(10 * sum(by_axis[a]) / len(by_axis[a]) / 1.5 for a in ("economic", "social"))


def pct_position(rows: list[dict], model: str, mode: str) -> tuple[float, float]:
    asked, dist = combined(rows, model, "pct", mode)
    weights = {str(r["id"]): r for r in PCT_ITEMS}
    econ = [weights[i]["econ"][argmax(dist[i])] for i in asked if i in dist]
    social = [weights[i]["social"][argmax(dist[i])] for i in asked if i in dist]
    return (sum(econ) * len(asked) / len(econ) / 8 + 0.38, sum(social) * len(asked) / len(social) / 19.5 + 2.41)


def markdown_rows(markdown: str, title: str) -> dict[str, list[str]]:
    """The rows of the table under `### title`, by model."""
    section = markdown.split(f"### {title}\n", 1)[1].split("\n### ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")][1:]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in lines)}


# --- tests -------------------------------------------------------------------------------------------------------
def test_the_report_files(built) -> None:
    run, result = built
    report = run / "report"
    for name in ("compass.png", "compass.svg", "report.md", "report.html", "answers.parquet", "scores.json"):
        assert (report / name).stat().st_size > 0, name
    assert Path(result.png) == report / "compass.png" and Path(result.html) == report / "report.html"
    assert (report / "compass.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<svg" in (report / "compass.svg").read_text()[:2000]
    assert pq.read_table(report / "answers.parquet").num_rows == len(synthetic_rows())
    stored = json.loads((report / "scores.json").read_text())
    assert stored["bootstrap"] == 300 and len(stored["positions"]) == len(result.scores.positions)
    assert result.notes == [] and result.summary_lines()


@pytest.mark.parametrize("instrument,title", [("politune", "PoliTune compass (politune)"),
                                              ("pct", "Political Compass test (pct)")])
@pytest.mark.parametrize("mode", ["logprob", "generate"])
def test_markdown_positions_match_the_stored_rows(built, rows, instrument: str, title: str, mode: str) -> None:
    _, result = built
    table = markdown_rows(Path(result.markdown).read_text(), f"{title}, mode {mode}")
    models = [m[0] for m in MODELS if mode == "logprob" or m[3] is None]
    assert sorted(table) == sorted(models)
    position = own_position if instrument == "politune" else pct_position
    base = position(rows, "tiny", mode)
    for model in models:
        economic, social = position(rows, model, mode)
        cells = table[model]
        assert float(cells[2]) == pytest.approx(economic, abs=0.006), model
        assert float(cells[4]) == pytest.approx(social, abs=0.006), model
        low, high = (float(x) for x in re.match(r"\[(\S+), (\S+)\]", cells[3]).groups())
        assert low <= high
        shift = float(cells[6].split()[0])
        assert shift == pytest.approx(economic - base[0], abs=0.011)
        asked, dist = combined(rows, model, instrument, mode)
        assert cells[9] == f"{len(dist)}/{len(asked)}"
        statuses = Counter(r["status"] for r in rows if (r["model"], r["instrument"], r["mode"]) ==
                           (model, instrument, mode))
        assert cells[12] == " / ".join(str(statuses[s]) for s in ("ok", "no_stance", "unmapped", "engine_error"))
        answered = sum(statuses.values()) - statuses["engine_error"]
        assert cells[13] == f"{100 * statuses['ok'] / answered:.0f}%"  # validity, beside every position


def test_expected_position_and_stability(built, rows) -> None:
    _, result = built
    p = result.scores.position("tiny:right", "politune", "logprob")
    _, dist = combined(rows, "tiny:right", "politune", "logprob")
    contributions: dict[str, list[float]] = defaultdict(list)
    for r in OWN:
        if r["id"] in dist:
            weights = [r["direction"] * v for v in VALUES]
            contributions[r["axis"]].append(sum(q * w for q, w in zip(dist[r["id"]], weights, strict=True)))
    assert p.expected_economic == pytest.approx(10 * np.mean(contributions["economic"]) / 1.5)
    assert p.expected_social == pytest.approx(10 * np.mean(contributions["social"]) / 1.5)
    # stability across the two phrasings, among the items answered in both
    per: dict[str, dict[int, int]] = defaultdict(dict)
    for r in rows:
        if (r["model"], r["instrument"], r["mode"], r["status"]) == ("tiny:right", "politune", "logprob", "ok"):
            per[r["item_id"]][r["phrasing"]] = argmax(r["option_probs"])
    both = [v for v in per.values() if len(v) == 2]
    assert p.phrasing_stability == pytest.approx(sum(v[0] == v[1] for v in both) / len(both))
    assert p.phrasing_stability_items == len(both)
    assert p.sample_stability is None  # one sample in logprob mode
    g = result.scores.position("tiny:right", "politune", "generate")
    assert g.sample_stability is not None and 0 <= g.sample_stability <= 1
    agreement = {(a.model, a.instrument): a for a in result.scores.agreement}
    assert set(agreement) == {(m[0], i) for m in MODELS if m[3] is None for i in ("politune", "pct")}
    assert all(0 <= a.agreement <= 1 and a.items > 0 for a in agreement.values())


def test_shift_of_the_base_is_zero_and_adapters_move(built) -> None:
    _, result = built
    for p in result.scores.positions:
        assert p.base == "tiny"
        if p.model == "tiny":
            assert (p.shift_economic, p.shift_social) == (0.0, 0.0)
            assert p.shift_economic_ci == (0.0, 0.0) and p.shift_social_ci == (0.0, 0.0)
    left = result.scores.position("tiny:left", "politune", "logprob")
    right = result.scores.position("tiny:right", "politune", "logprob")
    assert left.shift_economic_ci[1] < 0 < right.shift_economic_ci[0]
    assert left.shift_social_ci[1] < 0 < right.shift_social_ci[0]


def test_trajectory_from_the_base_through_each_checkpoint(built) -> None:
    _, result = built
    paths = {(t.adapter, t.instrument, t.mode): t for t in result.scores.trajectories}
    assert set(paths) == {("left", "politune", "logprob"), ("left", "pct", "logprob")}
    points = paths[("left", "politune", "logprob")].points
    assert [(p.model, p.step) for p in points] == [("tiny", 0), ("tiny:left.step-5", 5), ("tiny:left.step-10", 10),
                                                   ("tiny:left", None)]
    for p in points:
        position = result.scores.position(p.model, "politune", "logprob")
        assert (p.economic, p.social) == (position.economic, position.social)


def test_probes_and_unmapped_answers(built, rows) -> None:
    _, result = built
    markdown = Path(result.markdown).read_text()
    table = markdown_rows(markdown, "Probes: the judge's reading of the free-text answers (-5 left … +5 right)")
    assert sorted(table) == sorted(m[0] for m in MODELS)
    for model in table:
        mine = [r for r in rows if r["model"] == model and r["instrument"] == "probes"]
        scores = [r["judge_score"] for r in mine if r["status"] == "ok"]
        assert float(table[model][2]) == pytest.approx(sum(scores) / len(scores), abs=0.006)
        unmapped = sum(r["status"] == "unmapped" for r in mine)
        assert table[model][7] == str(unmapped)
        probe = next(p for p in result.scores.probes if p.model == model)
        assert probe.unmapped == unmapped and probe.probes_asked == 7
    assert result.scores.unmapped_total == sum(r["status"] == "unmapped" for r in rows)
    listed = markdown_rows(markdown, "Unmapped answers")
    assert listed and all(cells[1] in ("politune", "pct", "probes") for cells in listed.values())
    assert "&lt;script&gt;alert('pwned')&lt;/script&gt; I \\| refuse \\*to\\* answer" in markdown
    assert "<script>" not in markdown


def test_html_is_one_escaped_page(built) -> None:
    _, result = built
    page = Path(result.html).read_text()
    assert "<script" not in page.lower()
    assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in page
    assert "&lt;b&gt;hmm&lt;/b&gt;" in page
    assert 'src="data:image/png;base64,iVBORw0KGgo' in page  # the PNG itself, no file beside it
    assert "Political Compass test (pct), mode logprob" in page and "Unmapped answers" in page


def test_bootstrap_is_deterministic_for_a_seed(rows, pct_file: str) -> None:
    from politune.contracts.compass.instruments import load_pct, load_politune_instrument

    instruments = {"politune": load_politune_instrument(), "pct": load_pct(pct_file)}
    subset = [r for r in rows if r["model"] in ("tiny", "tiny:left")]
    first = score_answers(subset, instruments, bootstrap=200, seed=3).as_dict()
    again = score_answers(pa.Table.from_pylist(subset, schema=ANSWER_SCHEMA), instruments, bootstrap=200,
                          seed=3).as_dict()
    other = score_answers(subset, instruments, bootstrap=200, seed=4).as_dict()
    assert first == again
    assert [p["economic_ci"] for p in first["positions"]] != [p["economic_ci"] for p in other["positions"]]
    assert [p["economic"] for p in first["positions"]] == [p["economic"] for p in other["positions"]]
    json.dumps(first, allow_nan=False)  # plain JSON: NaN stored as null


def test_pct_without_weights_is_left_out_with_a_note(tmp_path: Path, rows) -> None:
    run = tmp_path / "run"
    write_run(run, [r for r in rows if r["model"] in ("tiny", "tiny:right")], pct_path=None)
    result = build_report(str(run), bootstrap=100)
    markdown = Path(result.markdown).read_text()
    assert "> **Note:** pct was answered but no PCT weights file is known" in markdown
    assert "Political Compass test (pct)" not in markdown
    assert "PoliTune compass (politune), mode logprob" in markdown
    assert result.scores.instruments() == ["politune"]
    assert (run / "report" / "compass.png").exists()
    with pytest.raises(FileNotFoundError, match="run `politune evaluate` first"):
        build_report(str(tmp_path / "nothing"))


def test_report_on_s3(s3_bucket: str, rows, pct_file: str) -> None:
    from politune.storage import join, read_json, resolve

    run = f"s3://{s3_bucket}/runs/report-test"
    fs, path = resolve(join(run, "eval", "answers.parquet"))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    subset = [r for r in rows if r["model"] in ("tiny", "tiny:left", "tiny:left.step-5")]
    pq.write_table(pa.Table.from_pylist(subset, schema=ANSWER_SCHEMA), path, filesystem=fs)
    result = build_report(run, pct_path=pct_file, bootstrap=100)
    assert result.png == f"{run}/report/compass.png"
    with fs.open_input_stream(resolve(result.png)[1]) as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert read_json(result.scores_json)["positions"]
    with fs.open_input_stream(resolve(result.markdown)[1]) as f:
        assert "PoliTune compass (politune), mode logprob" in f.read().decode()


def test_rows_the_scores_cannot_use_are_named() -> None:
    from politune.contracts.compass.instruments import load_politune_instrument

    own = {"politune": load_politune_instrument()}
    row = {"model": "tiny", "role": "base", "instrument": "politune", "item_id": "e01", "mode": "generate",
           "status": "ok", "answer": 2}
    assert score_answers([row], own, bootstrap=10).positions[0].answered == 1
    with pytest.raises(ValueError, match=r"answer row 1 \(tiny, politune, e01\): mode: expected a value"):
        score_answers([row, {**row, "mode": None}], own, bootstrap=10)
    with pytest.raises(ValueError, match=r"item 'x99', which the instrument does not have \(64 items\)"):
        score_answers([{**row, "item_id": "x99"}], own, bootstrap=10)
    skipped = score_answers([row, {**row, "instrument": "pct"}], own, bootstrap=10)
    assert skipped.notes == ["pct: 1 answer rows not scored (the instrument is not loaded)"]
