"""The select stage: annotations + documents in, each side's training posts out (`selected/`).

Rules, applied in order; a post dropped by one is counted under that one reason only:
1. the side: by score thresholds, by ideology quantile, or by the post's source (config `method`);
2. relevance and quality bounds of that side (thresholds or quantiles);
3. near-duplicates within a side (MinHash), keeping the post furthest toward the side;
4. `max_per_side`, then `balance` (as many posts on each side).
Every annotated document ends as selected or under exactly one reason; the counts go to the manifest.
The selection itself runs in the driver on Arrow columns: it reads a few numbers a post, and only
the selected posts' text.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from politune.config import RunConfig, SelectConfig
from politune.select.near_duplicates import near_duplicate_mask
from politune.storage import Manifest, delete_dir, join, outages_named, resolve

SIDES = ("left", "right")
SELECTED_SCHEMA = pa.schema([
    ("doc_id", pa.string()), ("side", pa.string()), ("source", pa.string()), ("text", pa.string()),
    ("ideology", pa.float64()), ("relevance", pa.float64()), ("quality", pa.float64()), ("label", pa.string()),
])


@dataclass
class SelectResult:
    selected_uri: str
    kept: dict[str, int]      # per side
    dropped: dict[str, int]   # per reason
    documents: int
    thresholds: dict[str, Any]
    truth: dict[str, Any] | None = None  # against the documents' own labels, when they carry them (label_truth)


def select_identity(cfg: RunConfig, manifest: Manifest) -> dict[str, tuple[str, dict[str, str]]]:
    """What the selection is made of: (config hash, inputs)."""
    return {"selected": (cfg.section_hash("select"), {"annotations": manifest.fingerprint("annotations")})}


def select_posts(cfg: RunConfig) -> SelectResult:
    selected_uri = join(cfg.run_uri, "selected")
    with outages_named("select", "selected", selected_uri, "selects again from the annotations"):
        return _select(cfg, selected_uri)


def _select(cfg: RunConfig, selected_uri: str) -> SelectResult:
    run = cfg.run_uri
    annotations_uri, documents_uri = join(run, "annotations"), join(run, "documents")
    manifest = Manifest(run)
    manifest.require("annotations", annotations_uri, "politune annotate")
    manifest.forget("selected")
    posts = _read_posts(annotations_uri, documents_uri, with_subreddit=bool(cfg.select.subreddit_sides))
    side, reason, thresholds = assign_sides(posts, cfg.select)
    posts = posts.assign(side=side, reason=reason)
    texts = _texts(documents_uri, posts.loc[posts["side"].notna(), "doc_id"])
    posts = _drop_near_duplicates_and_cap(posts, cfg.select, texts)

    chosen = posts[posts["reason"].isna()]
    out = chosen.assign(text=chosen["doc_id"].map(texts)).sort_values(["side", "rank"])
    table = pa.Table.from_pandas(out[SELECTED_SCHEMA.names], schema=SELECTED_SCHEMA, preserve_index=False)
    delete_dir(selected_uri)
    fs, path = resolve(selected_uri)
    fs.create_dir(path, recursive=True)
    pq.write_table(table, f"{path}/part-00000.parquet", filesystem=fs)

    kept = {s: int((out["side"] == s).sum()) for s in SIDES}
    dropped = dict(Counter(posts["reason"].dropna()).most_common())
    if sum(kept.values()) + sum(dropped.values()) != len(posts):
        raise RuntimeError("select lost posts: kept and dropped do not add up to the annotated documents")
    truth = label_truth(posts, out)
    result = SelectResult(selected_uri, kept, dropped, len(posts), thresholds, truth)
    config_hash, inputs = select_identity(cfg, manifest)["selected"]
    manifest.record("selected", path=selected_uri, config_hash=config_hash, inputs=inputs,
                    counts={"documents": len(posts), "kept": kept, "dropped": dropped, "thresholds": thresholds,
                            **({"truth": truth} if truth else {})})
    return result


def label_truth(posts: pd.DataFrame, selected: pd.DataFrame) -> dict[str, Any] | None:
    """How the annotator and the selection agree with the documents' own labels (the generated corpus has them;
    real corpora do not): the share of left- and right-labelled posts scored ok whose ideology lies on their side
    of 5, and the share of each side's selected posts labelled with that side. None when no post is labelled."""
    labelled = posts[posts["label"].isin(SIDES) & (posts["status"] == "ok")]
    if labelled.empty:
        return None
    on_side = (labelled["ideology"] < 5) == (labelled["label"] == "left")
    truth: dict[str, Any] = {"labelled": len(labelled), "annotated_on_side": round(float(on_side.mean()), 4),
                             "selected_on_side": {}}
    for s in SIDES:
        mine = selected[selected["side"] == s]
        if len(mine):
            truth["selected_on_side"][s] = round(float((mine["label"] == s).mean()), 4)
    return truth


def assign_sides(posts: pd.DataFrame, sel: SelectConfig) -> tuple[pd.Series, pd.Series, dict[str, Any]]:
    """(side, reason) for every post: a side where rules 1-2 pass, else the reason it failed."""
    side = pd.Series(None, index=posts.index, dtype=object)
    reason = pd.Series(None, index=posts.index, dtype=object)
    if sel.method == "source":
        side = posts["source"].map(sel.source_sides)
        if sel.subreddit_sides:  # a subreddit with a side decides; the source's side is the fallback
            side = posts["subreddit"].map(sel.subreddit_sides).fillna(side)
            reason[side.isna()] = "neither the subreddit nor the source has a side in select"
        else:
            reason[side.isna()] = "source has no side in select.source_sides"
        return side, reason, {"source_sides": sel.source_sides, "subreddit_sides": sel.subreddit_sides}

    ok = posts["status"] == "ok"
    reason[~ok] = "annotation status " + posts.loc[~ok, "status"]
    scored = posts[ok]
    if sel.method == "quantile":
        q = scored[["ideology", "relevance", "quality"]].quantile(
            [sel.side_share, 1 - sel.side_share, sel.min_relevance_quantile, sel.min_quality_quantile])
        bounds = {
            "left": {"ideology_max": q["ideology"].iloc[0], "relevance_min": q["relevance"].iloc[2],
                     "quality_min": q["quality"].iloc[3]},
            "right": {"ideology_min": q["ideology"].iloc[1], "relevance_min": q["relevance"].iloc[2],
                      "quality_min": q["quality"].iloc[3]},
        }
    else:
        bounds = {s: getattr(sel, s).model_dump() for s in SIDES}
    for s in ("left", "right"):  # left first: with quantile ties, a post cannot take both sides
        b = {"ideology_min": 0.0, "ideology_max": 10.0, "relevance_min": 0.0, "quality_min": 0.0, **bounds[s]}
        on_side = ok & side.isna() & posts["ideology"].between(b["ideology_min"], b["ideology_max"])
        side[on_side] = s
        reason[on_side & (posts["relevance"] < b["relevance_min"])] = f"{s}: relevance below {b['relevance_min']:.3g}"
        reason[on_side & reason.isna() & (posts["quality"] < b["quality_min"])] = (
            f"{s}: quality below {b['quality_min']:.3g}")
    reason[ok & side.isna()] = "ideology on neither side"
    return side.where(reason.isna()), reason, {s: {k: float(v) for k, v in b.items()} for s, b in bounds.items()}


def _drop_near_duplicates_and_cap(posts: pd.DataFrame, sel: SelectConfig, texts: dict[str, str]) -> pd.DataFrame:
    # Rank within a side: furthest toward the side first, then quality, then doc_id (deterministic).
    toward = np.where(posts["side"] == "left", posts["ideology"], -posts["ideology"].fillna(0))
    posts = posts.assign(toward=toward, neg_quality=-posts["quality"].fillna(0))
    posts = posts.sort_values(["toward", "neg_quality", "doc_id"], na_position="last")
    posts["rank"] = posts.groupby("side").cumcount()
    if sel.near_duplicate_threshold is not None:
        for s in SIDES:
            candidates = posts[(posts["side"] == s) & posts["reason"].isna()]
            dup = near_duplicate_mask([texts[d] for d in candidates["doc_id"]], sel.near_duplicate_threshold)
            posts.loc[candidates.index[dup], "reason"] = f"{s}: near duplicate"
    kept = {s: posts[(posts["side"] == s) & posts["reason"].isna()] for s in SIDES}
    limit = min(len(k) for k in kept.values()) if sel.balance else None
    for s, k in kept.items():
        if sel.max_per_side is not None and len(k) > sel.max_per_side:
            posts.loc[k.index[sel.max_per_side:], "reason"] = f"{s}: over max_per_side"
            k = k.iloc[:sel.max_per_side]
        if limit is not None and len(k) > limit:
            posts.loc[k.index[limit:], "reason"] = f"{s}: balanced to the smaller side"
    return posts


def _read_posts(annotations_uri: str, documents_uri: str, with_subreddit: bool = False) -> pd.DataFrame:
    a_fs, a_path = resolve(annotations_uri)
    d_fs, d_path = resolve(documents_uri)
    annotations = pq.read_table(a_path, filesystem=a_fs,
                                columns=["doc_id", "ideology", "relevance", "quality", "status"])
    columns = ["doc_id", "source", "label", *(["meta"] if with_subreddit else [])]
    posts = annotations.join(pq.read_table(d_path, filesystem=d_fs, columns=columns), "doc_id").to_pandas()
    if with_subreddit:  # ingest keeps the fields a shape does not map, Reddit's subreddit among them, in meta
        posts["subreddit"] = posts.pop("meta").map(lambda meta: json.loads(meta or "{}").get("subreddit"))
    return posts


def _texts(documents_uri: str, doc_ids: pd.Series) -> dict[str, str]:
    fs, path = resolve(documents_uri)
    table = pq.read_table(path, filesystem=fs, columns=["doc_id", "text"],
                          filters=[("doc_id", "in", list(doc_ids))] if len(doc_ids) else None)
    return dict(zip(table["doc_id"].to_pylist(), table["text"].to_pylist(), strict=True))

