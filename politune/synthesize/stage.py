"""The synthesize stage: each side's preference pairs, cleaned and split, in `preferences/`.

Built so far: importing pair files (the released PoliTune sets, or any prompt/chosen/rejected or TRL
chat-shaped set), so a run can skip annotation and synthesis. Writing pairs from `selected/` with the
synthesizer model is not built yet and says so.

Output, per side: `preferences/<side>/{train,eval}.parquet` (Preference rows) and `.jsonl` (the
released sets' flat shape); `preferences/dropped.parquet` (each dropped pair with its reason and
field) and `preferences/unreadable.jsonl` (records that could not be read, with file, line and
field). Every record read ends in exactly one of them, and the manifest has the counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from politune.config import RunConfig
from politune.storage import Manifest, delete_dir, join, resolve
from politune.synthesize.clean import DROP_REASONS, clean_pairs
from politune.synthesize.formats import PREFERENCE_SCHEMA, BadRecord, pair_id, read_pairs, write_pairs

SIDES = ("left", "right")
DROPPED_SCHEMA = PREFERENCE_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("field", pa.string()))


@dataclass
class SideCounts:
    read: int = 0
    unreadable: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    train: int = 0
    eval: int = 0


@dataclass
class SynthesizeResult:
    preferences_uri: str
    sides: dict[str, SideCounts]


def synthesize_preferences(cfg: RunConfig) -> SynthesizeResult:
    s = cfg.synthesize
    if s.source == "generate":
        raise ValueError("synthesize.source: generate (pairs written by the synthesizer from selected/) is not "
                         "built yet; use source: released with files such as the released PoliTune sets")
    out_uri = join(cfg.run_uri, "preferences")
    delete_dir(out_uri)  # a rerun replaces the pairs
    counts, dropped, unreadable = {}, [], []
    for side in SIDES:
        pairs, bad = [], []
        for uri in s.released.get(side, []):
            rows, failed = read_pairs(uri, side, source=f"released:{uri}")
            pairs += rows
            bad += failed
        counts[side], side_dropped = _write_side(out_uri, side, pairs, s.clean, s.eval_share)
        counts[side].unreadable = len(bad)
        dropped += side_dropped
        unreadable += bad
    _write_table(join(out_uri, "dropped.parquet"), dropped, DROPPED_SCHEMA)
    _write_unreadable(join(out_uri, "unreadable.jsonl"), unreadable)

    Manifest(cfg.run_uri).record(
        "preferences", path=out_uri, config_hash=cfg.section_hash("synthesize"),
        inputs={f"released {side}": ", ".join(s.released.get(side, [])) for side in SIDES}, models=[],
        counts={side: vars(c) for side, c in counts.items()})
    return SynthesizeResult(out_uri, counts)


def is_eval(pair_id: str, eval_share: float) -> bool:
    """The split by pair_id: the same pair is always on the same side of it, whatever else is in the set."""
    return int(pair_id[:8], 16) / 16**8 < eval_share


def _write_side(out_uri: str, side: str, pairs: list[dict[str, Any]], clean: bool,
                eval_share: float) -> tuple[SideCounts, list[dict[str, Any]]]:
    counts = SideCounts(read=len(pairs))
    kept, dropped = pairs, []
    if clean:
        verdicts, report = clean_pairs(pairs)
        # a repaired pair gets the id of what is written, so reading the output back gives the same ids
        kept = [{**v.pair, "pair_id": pair_id(side, v.pair["prompt"], v.pair["chosen"], v.pair["rejected"])}
                for v in verdicts if v.reason is None]
        dropped = [{**v.pair, "reason": v.reason, "field": v.field} for v in verdicts if v.reason]
        counts.dropped, counts.repaired = report.as_dict()["dropped"], report.as_dict()["repaired"]
    else:
        counts.dropped = dict.fromkeys(DROP_REASONS, 0)
    splits = {"train": [p for p in kept if not is_eval(p["pair_id"], eval_share)],
              "eval": [p for p in kept if is_eval(p["pair_id"], eval_share)]}
    for split, rows in splits.items():
        _write_table(join(out_uri, side, f"{split}.parquet"), rows, PREFERENCE_SCHEMA)
        write_pairs(rows, join(out_uri, side, f"{split}.jsonl"))
    counts.train, counts.eval = len(splits["train"]), len(splits["eval"])
    return counts, dropped


def _write_table(uri: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path, filesystem=fs)


def _write_unreadable(uri: str, records: list[BadRecord]) -> None:
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as out:
        out.write("".join(json.dumps(vars(r), ensure_ascii=False) + "\n" for r in records).encode())
