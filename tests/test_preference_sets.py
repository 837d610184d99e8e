"""Preference pairs: the released PoliTune sets' shapes read and written (locally and on S3), and the
cleaner's verdicts checked against rows of the released sets read by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from politune.synthesize.clean import clean_pairs, judge_pair, repair_text
from politune.synthesize.formats import read_pairs, write_pairs

RELEASED = Path(__file__).resolve().parents[2] / "shared" / "data" / "politune"
needs_released = pytest.mark.skipif(not (RELEASED / "left.jsonl").exists(),
                                    reason=f"the released PoliTune sets are not in {RELEASED}")


def released(side: str) -> list[dict]:
    rows, bad = read_pairs(str(RELEASED / f"{side}.jsonl"), side)
    assert bad == []
    return rows


@needs_released
@pytest.mark.parametrize("name, shape", [("pairs.jsonl", "flat"), ("pairs.csv", "flat"), ("chat.jsonl", "chat")])
def test_released_sets_round_trip(tmp_path: Path, name: str, shape: str) -> None:
    rows = released("left")
    assert len(rows) == 2356 and len({r["pair_id"] for r in rows}) == len(rows)
    write_pairs(rows, str(tmp_path / name), shape=shape)
    again, bad = read_pairs(str(tmp_path / name), "left")
    assert bad == [] and again == rows


def test_round_trip_through_s3(s3_bucket: str) -> None:
    rows, _ = read_pairs_from_lines(['{"prompt": "p", "chosen": "c, with \\"quotes\\"\\nand lines", "rejected": "r"}'])
    uri = f"s3://{s3_bucket}/preferences/left.jsonl"
    write_pairs(rows, uri, shape="chat")
    again, bad = read_pairs(uri, "left")
    assert bad == [] and again == rows


def read_pairs_from_lines(lines: list[str], tmp: Path | None = None) -> tuple[list[dict], list]:
    import tempfile

    path = Path(tmp or tempfile.mkdtemp()) / "in.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return read_pairs(str(path), "left")


def test_bad_records_are_kept_with_line_and_field(tmp_path: Path) -> None:
    lines = [
        '{"prompt": "p1", "chosen": "c1", "rejected": "r1"}',
        "{not json",
        '{"prompt": "p3", "chosen": "c3"}',
        '{"prompt": "p4", "chosen": 4, "rejected": "r4"}',
        json.dumps({"chosen": [{"role": "user", "content": "p5"}, {"role": "assistant", "content": "c5"}],
                    "rejected": [{"role": "user", "content": "p5"}, {"role": "assistant", "content": "r5"}]}),
        json.dumps({"prompt": [{"role": "user", "content": "p6"}],
                    "chosen": [{"role": "assistant", "content": "a"}, {"role": "assistant", "content": "b"}],
                    "rejected": [{"role": "assistant", "content": "r6"}]}),
        "[1, 2]",
    ]
    rows, bad = read_pairs_from_lines(lines, tmp_path)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in rows] == [("p1", "c1", "r1"), ("p5", "c5", "r5")]
    assert [(b.line, b.field, b.reason) for b in bad] == [
        (2, "-", "not JSON: Expecting property name enclosed in double quotes"),
        (3, "rejected", "missing"),
        (4, "chosen", "expected a string, got int"),
        (6, "chosen", "expected exactly one assistant message"),
        (7, "-", "expected an object, got list"),
    ]
    assert all(b.file.endswith("in.jsonl") for b in bad)


def test_csv_needs_the_flat_shape(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="CSV holds the flat shape only"):
        write_pairs([], str(tmp_path / "x.csv"), shape="chat")


# Rows of the released sets read by hand (line numbers from 1), with the verdict each should get.
HAND_CHECKED = {
    ("left", 28): (None, ["chosen: preamble", "chosen: quotes", "rejected: preamble", "rejected: quotes"]),
    ("left", 186): ("refusal", "chosen"),      # "I cannot provide a response that is sarcastic or derogatory …"
    ("left", 198): ("leaked_record", "rejected"),  # "{'text': '[exposing liberal elitism!] (URL)', 'subreddit': …"
    ("left", 382): ("refusal", "prompt"),      # "I cannot generate an instruction that promotes …"
    ("left", 611): ("duplicate_prompt", "prompt"),  # the instruction of line 603
    ("left", 1440): (None, []),                # "I'm sorry, but if you had a point, …": in character, not a refusal
    ("left", 1995): ("refusal", "chosen"),     # "I apologize if my previous response came across as offensive …"
    ("left", 2052): (None, ["chosen: quotes"]),
    ("right", 13): (None, ["chosen: preamble", "chosen: quotes", "rejected: preamble", "rejected: quotes"]),
    ("right", 50): ("refusal", "rejected"),    # "I cannot fulfill requests that involve endorsing political …"
    # headlines in quotes, without a full stop: complete, not truncated (both leaning right, though: the
    # consistency check's job)
    ("right", 275): (None, ["chosen: quotes", "rejected: quotes"]),
    ("right", 781): ("refusal", "chosen"),     # "I cannot support a Democratic candidate. Can I help you …"
    ("right", 1176): ("leaked_record", "rejected"),  # "{'text': '#UnitedWeStand …', 'index': 1788, 'hashtags': 2}"
    ("right", 1262): (None, []),               # "I apologize, but I don't think that's accurate. The DWAC …"
    ("right", 366): ("duplicate_prompt", "prompt"),  # the instruction of line 268
    ("right", 2500): (None, []),               # "Defending Freedom: Pro-2nd Amendment Kari Lake vs …"
}


@needs_released
def test_cleaner_agrees_with_the_hand_checked_rows() -> None:
    for side in ("left", "right"):
        verdicts, _ = clean_pairs(released(side))
        for (s, line), expected in HAND_CHECKED.items():
            if s != side:
                continue
            v = verdicts[line - 1]
            got = (v.reason, v.field) if v.reason else (None, v.repairs)
            assert got == expected, f"{side} line {line}"


@needs_released
def test_cleaner_counts_on_the_released_sets() -> None:
    """Every refusal below was read (each matched sentence listed once); the counts guard against drift."""
    left = clean_pairs(released("left"))[1].as_dict()
    right = clean_pairs(released("right"))[1].as_dict()
    assert left["dropped"] == {"empty": 0, "refusal": 16, "leaked_record": 21, "truncated": 0, "identical": 0,
                               "duplicate_prompt": 5}
    assert right["dropped"] == {"empty": 0, "refusal": 51, "leaked_record": 15, "truncated": 0, "identical": 0,
                                "duplicate_prompt": 38}
    assert left["kept"] + sum(left["dropped"].values()) == 2356
    assert right["kept"] + sum(right["dropped"].values()) == 2825


@pytest.mark.parametrize("text, repaired, fixes", [
    ("Here's a response from a Democratic perspective:\r\n\r\nTax the rich.", "Tax the rich.", ["preamble"]),
    ('"Tax the rich."', "Tax the rich.", ["quotes"]),
    ('"Tax" the "rich"', '"Tax" the "rich"', []),  # quotes inside: not a wrapped answer
    ("Here is why: taxes fund schools.", "Here is why: taxes fund schools.", []),  # no line break: not a preamble
])
def test_repairs(text: str, repaired: str, fixes: list[str]) -> None:
    assert repair_text(text) == (repaired, fixes)


@pytest.mark.parametrize("pair, reason, field", [
    ({"prompt": "Q?", "chosen": "Yes.", "rejected": "  "}, "empty", "rejected"),
    ({"prompt": "Q?", "chosen": "We must fund schools, and the", "rejected": "No."}, "truncated", "chosen"),
    ({"prompt": "Q?", "chosen": "Yes.", "rejected": "No.", "rejected_truncated": True}, "truncated", "rejected"),
    ({"prompt": "Q?", "chosen": "Same  answer.", "rejected": "same answer."}, "identical", "rejected"),
    ({"prompt": "Q?", "chosen": "As an AI, I have no views.", "rejected": "No."}, "refusal", "chosen"),
    ({"prompt": "Q?", "chosen": "Yes. #VoteBlue", "rejected": "No URL"}, None, None),
])
def test_judge_pair(pair: dict, reason: str | None, field: str | None) -> None:
    verdict = judge_pair(pair)
    assert (verdict.reason, verdict.field) == (reason, field)


def import_config(root: Path, left: list[str], right: list[str], **synthesize):
    from politune.config import build_config

    return build_config({"run_id": "imp", "storage_root": str(root / "runs"),
                         "synthesize": {"source": "released", "released": {"left": left, "right": right},
                                        **synthesize}})


@pytest.mark.integration
@needs_released
def test_importing_the_released_sets_accounts_for_every_pair(tmp_path: Path, s3_bucket: str) -> None:
    import boto3
    import pyarrow.parquet as pq

    from politune.synthesize import synthesize_preferences

    boto3.client("s3").upload_file(str(RELEASED / "right.jsonl"), s3_bucket, "released/right.jsonl")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "Q?", "chosen": "Yes."}\nnot json\n')
    cfg = import_config(tmp_path, [str(RELEASED / "left.jsonl"), str(broken)],
                        [f"s3://{s3_bucket}/released/right.jsonl"])
    result = synthesize_preferences(cfg)
    out = Path(result.preferences_uri)
    for side, total in (("left", 2356), ("right", 2825)):
        c = result.sides[side]
        assert c.read == total and c.read == c.train + c.eval + sum(c.dropped.values())
        assert 0.07 < c.eval / (c.train + c.eval) < 0.13
        train = pq.read_table(out / side / "train.parquet").to_pylist()
        assert len(train) == c.train and {r["side"] for r in train} == {side}
        jsonl, bad = read_pairs(str(out / side / "train.jsonl"), side)
        assert bad == [] and [r["pair_id"] for r in jsonl] == [r["pair_id"] for r in train]
    assert result.sides["left"].unreadable == 2
    dropped = pq.read_table(out / "dropped.parquet").to_pylist()
    assert len(dropped) == sum(sum(c.dropped.values()) for c in result.sides.values())
    assert {(r["reason"], r["field"]) for r in dropped} >= {("refusal", "rejected"), ("duplicate_prompt", "prompt")}
    unreadable = [json.loads(line) for line in (out / "unreadable.jsonl").read_text().splitlines()]
    assert [(u["line"], u["field"]) for u in unreadable] == [(1, "rejected"), (2, "-")]

    eval_ids = {r["pair_id"] for r in pq.read_table(out / "left" / "eval.parquet").to_pylist()}
    synthesize_preferences(cfg)  # a rerun splits the same way
    assert eval_ids == {r["pair_id"] for r in pq.read_table(out / "left" / "eval.parquet").to_pylist()}


def test_generating_pairs_needs_the_selected_posts(tmp_path: Path) -> None:
    from politune.config import build_config
    from politune.synthesize import synthesize_preferences

    cfg = build_config({"run_id": "g", "storage_root": str(tmp_path)})
    with pytest.raises(FileNotFoundError, match="selected does not exist: run `politune select` first"):
        synthesize_preferences(cfg)


@pytest.mark.integration
@needs_released
def test_synthesize_job_imports_the_released_sets(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"run_id": "job", "storage_root": str(tmp_path / "runs"), "synthesize": {
        "source": "released", "released": {"left": [str(RELEASED / "left.jsonl")],
                                           "right": [str(RELEASED / "right.jsonl")]}}}))
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "jobs/synthesize.py", "--config", str(config)], cwd=repo,
                          capture_output=True, text=True, timeout=300, env={"COLUMNS": "120", "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert "left:  2,356 pairs: 2,314 kept" in done.stdout and "16 × refusal" in done.stdout
    assert (tmp_path / "runs" / "job" / "preferences" / "right" / "train.parquet").exists()
