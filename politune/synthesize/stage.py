"""The synthesize stage: each side's preference pairs, cleaned and split, in `preferences/`.

Two sources:
- generate: the synthesizer writes one pair a selected post (instruction, chosen, rejected; hf_writer.py
  on transformers, llm_writer.py on vLLM or an OpenAI-compatible endpoint), the cleaner repairs or drops
  it, and the consistency check scores chosen and rejected with the annotator and keeps the pair only
  when chosen leans toward its side of rejected;
- released: pair files are imported (the released PoliTune sets, or any prompt/chosen/rejected or TRL
  chat-shaped set) and cleaned, so a run can skip annotation and synthesis.

Output, per side: `preferences/<side>/{train,eval}.parquet` (Preference rows) and `.jsonl` (the
released sets' flat shape); `preferences/dropped.parquet` (each dropped pair with its reason and
field) and `preferences/unreadable.jsonl` (records that could not be read, with file, line and
field). Every post or record ends in exactly one of them, and the manifest has the counts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import ray.data

from politune.config import RunConfig
from politune.contracts.pair_prompts import PROMPT_VERSION
from politune.engines.blocks import blocks_for_pool
from politune.models import resolve_model
from politune.prepare import prepares
from politune.ray_runtime import init_ray
from politune.storage import Manifest, delete_dir, join, outages_named, resolve
from politune.synthesize.clean import DROP_REASONS, GENERATION_DROP_REASONS, clean_pairs
from politune.synthesize.consistency import check_consistency
from politune.synthesize.formats import PREFERENCE_SCHEMA, BadRecord, pair_id, read_pairs, write_pairs
from politune.synthesize.hf_writer import HFPairWriter
from politune.synthesize.llm_writer import openai_replier, vllm_replier
from politune.synthesize.llm_writer import write_pairs as llm_write_pairs

SIDES = ("left", "right")
MOST_ROWS_A_BLOCK = 1000  # posts a writer actor takes at once (its drafts come back to the driver, not to files)
DROPPED_SCHEMA = pa.schema([*PREFERENCE_SCHEMA, pa.field("reason", pa.string()), pa.field("field", pa.string()),
                            pa.field("detail", pa.string())])  # an engine's error, or the consistency scores


@dataclass
class SideCounts:
    read: int = 0
    unreadable: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    repaired: dict[str, int] = field(default_factory=dict)
    train: int = 0
    eval: int = 0
    consistency_checked: int = 0  # pairs the consistency check scored (kept = checked - inconsistent - unscored)


@dataclass
class SynthesizeResult:
    preferences_uri: str
    sides: dict[str, SideCounts]


def synthesize_identity(cfg: RunConfig, manifest: Manifest) -> dict[str, tuple[str, dict[str, str]]]:
    """What the pairs are made of: (config hash, inputs): the selected posts, or the released sets' files."""
    s = cfg.synthesize
    if s.source == "generate":
        inputs = {"selected": manifest.fingerprint("selected")}
    else:
        inputs = {f"released {side}": ", ".join(s.released.get(side, [])) for side in SIDES}
    return {"preferences": (cfg.section_hash("synthesize", "dtype"), inputs)}


def synthesize_models(cfg: RunConfig) -> list[tuple[str, str]]:
    """The models synthesize loads (config field, reference): the writer and the consistency check's annotator;
    none when it imports pairs, and no writer when an OpenAI-compatible endpoint writes (its model is its own)."""
    s = cfg.synthesize
    if s.source != "generate":
        return []
    writer = [] if s.engine == "openai" else [("synthesize.model", s.model)]
    return writer + ([("annotate.model", cfg.annotate.model)] if s.consistency_check else [])


@prepares(synthesize_models)
def synthesize_preferences(cfg: RunConfig) -> SynthesizeResult:
    out_uri = join(cfg.run_uri, "preferences")
    with outages_named("synthesize", "preferences", out_uri, "writes the pairs again"):
        return _synthesize(cfg, out_uri)


def _synthesize(cfg: RunConfig, out_uri: str) -> SynthesizeResult:
    s = cfg.synthesize
    manifest = Manifest(cfg.run_uri)
    manifest.forget("preferences")  # recorded again once the pairs are whole
    if s.source == "generate":
        pairs, unreadable = _generated_pairs(cfg), []
        models = [s.model]
    else:
        pairs, unreadable = _released_pairs(s.released)
        models = []
    config_hash, inputs = synthesize_identity(cfg, manifest)["preferences"]
    counts, kept, dropped = {}, [], []
    for side in SIDES:
        side_pairs = [p for p in pairs if p["side"] == side]
        counts[side] = SideCounts(read=len(side_pairs), unreadable=sum(1 for b in unreadable if b.side == side))
        side_kept, side_dropped, counts[side].repaired = _clean_side(side, side_pairs, s.clean)
        kept += side_kept
        dropped += side_dropped
    if s.source == "generate" and s.consistency_check and kept:
        for side in SIDES:
            counts[side].consistency_checked = sum(1 for p in kept if p["side"] == side)
        kept, inconsistent = check_consistency(cfg, kept)
        dropped += inconsistent

    delete_dir(out_uri)  # a rerun replaces the pairs
    reasons = DROP_REASONS + (GENERATION_DROP_REASONS if s.source == "generate" else ())
    for side in SIDES:
        c = counts[side]
        c.dropped = {r: sum(1 for d in dropped if d["side"] == side and d["reason"] == r) for r in reasons}
        c.train, c.eval = _write_splits(out_uri, side, [p for p in kept if p["side"] == side], s.eval_share)
    _write_table(join(out_uri, "dropped.parquet"), dropped, DROPPED_SCHEMA)
    _write_unreadable(join(out_uri, "unreadable.jsonl"), unreadable)
    manifest.record("preferences", path=out_uri, config_hash=config_hash, inputs=inputs,
                    models=models, counts={side: vars(c) for side, c in counts.items()})
    return SynthesizeResult(out_uri, counts)


def _released_pairs(released: dict[str, list[str]]) -> tuple[list[dict[str, Any]], list[BadRecord]]:
    pairs, bad = [], []
    for side in SIDES:
        for uri in released.get(side, []):
            rows, failed = read_pairs(uri, side, source=f"released:{uri}")
            pairs += rows
            bad += failed
    return pairs, bad


def _generated_pairs(cfg: RunConfig) -> list[dict[str, Any]]:
    """One draft pair a selected post, from the synthesizer; a post whose engine call failed carries the error."""
    s = cfg.synthesize
    selected_uri = join(cfg.run_uri, "selected")
    manifest = Manifest(cfg.run_uri)
    manifest.require("selected", selected_uri, "politune select")
    init_ray(cfg)
    fs, path = resolve(selected_uri)
    posts = ray.data.read_parquet(path, filesystem=fs, columns=["doc_id", "side", "text"])
    if s.engine == "hf":
        selected = sum((manifest.artifact("selected") or {}).get("counts", {}).get("kept", {}).values())
        drafts = _hf_drafts(cfg, blocks_for_pool(posts, selected, s.concurrency, s.batch_size, MOST_ROWS_A_BLOCK))
    else:
        replier = vllm_replier(cfg) if s.engine == "vllm" else openai_replier(cfg)
        drafts = llm_write_pairs(posts.take_all(), replier, s.chosen_from)
    if not s.drop_truncated:
        drafts = [{**d, "prompt_truncated": False, "chosen_truncated": False, "rejected_truncated": False}
                  for d in drafts]
    return [{**d, "pair_id": pair_id(d["side"], d["prompt"] or d["doc_id"], d["chosen"] or "", d["rejected"] or ""),
             "synthesizer": s.model, "prompt_version": PROMPT_VERSION} for d in drafts]


def _hf_drafts(cfg: RunConfig, posts: ray.data.Dataset) -> list[dict[str, Any]]:
    s = cfg.synthesize
    return posts.map_batches(
        HFPairWriter,
        fn_constructor_kwargs=dict(
            model_path=resolve_model(s.model, cfg), chosen_from=s.chosen_from, max_new_tokens=s.max_new_tokens,
            max_prompt_tokens=s.max_prompt_tokens, max_retries=s.max_retries,
            num_threads=max(1, int(s.num_cpus_per_actor)), device="cuda" if s.num_gpus_per_actor > 0 else "cpu",
            dtype=cfg.dtype, run_id=cfg.run_id, temperature=s.temperature),
        batch_size=s.batch_size, compute=ray.data.ActorPoolStrategy(size=s.concurrency),
        num_cpus=s.num_cpus_per_actor, num_gpus=s.num_gpus_per_actor or None, batch_format="pyarrow",
    ).take_all()


def is_eval(pair_id: str, eval_share: float) -> bool:
    """The split by pair_id: the same pair is always on the same side of it, whatever else is in the set."""
    return int(pair_id[:8], 16) / 16**8 < eval_share


def _clean_side(side: str, pairs: list[dict[str, Any]],
                clean: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Kept pairs, dropped pairs (with reason, field, detail) and repair counts of one side."""
    dropped = [{**p, "reason": "engine_error", "field": "-", "detail": p["error"]} for p in pairs if p.get("error")]
    kept = [p for p in pairs if not p.get("error")]
    if not clean:
        return kept, dropped, {}
    verdicts, report = clean_pairs(kept)
    # a repaired pair gets the id of what is written, so reading the output back gives the same ids
    kept = [{**v.pair, "pair_id": pair_id(side, v.pair["prompt"], v.pair["chosen"], v.pair["rejected"])}
            for v in verdicts if v.reason is None]
    dropped += [{**v.pair, "reason": v.reason, "field": v.field, "detail": None} for v in verdicts if v.reason]
    return kept, dropped, report.as_dict()["repaired"]


def _write_splits(out_uri: str, side: str, kept: list[dict[str, Any]], eval_share: float) -> tuple[int, int]:
    splits = {"train": [p for p in kept if not is_eval(p["pair_id"], eval_share)],
              "eval": [p for p in kept if is_eval(p["pair_id"], eval_share)]}
    for split, rows in splits.items():
        _write_table(join(out_uri, side, f"{split}.parquet"), rows, PREFERENCE_SCHEMA)
        write_pairs(rows, join(out_uri, side, f"{split}.jsonl"))
    return len(splits["train"]), len(splits["eval"])


def _write_table(uri: str, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    table = pa.Table.from_pylist([{k: r.get(k) for k in schema.names} for r in rows], schema=schema)
    pq.write_table(table, path, filesystem=fs)


def _write_unreadable(uri: str, records: list[BadRecord]) -> None:
    fs, path = resolve(uri)
    with fs.open_output_stream(path) as out:
        out.write("".join(json.dumps(vars(r), ensure_ascii=False) + "\n" for r in records).encode())
