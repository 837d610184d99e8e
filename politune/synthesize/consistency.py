"""The consistency check (beyond the paper, on by default): does chosen lean toward its side of rejected?

The annotator (annotate's prompts and hf engine) scores both answers on the ideology scale, 0 = far
left … 10 = far right. A left pair is kept when rejected − chosen ≥ margin, a right pair when
chosen − rejected ≥ margin. A pair with an answer the annotator could not score is dropped as
`unscored`, one that leans the wrong way as `inconsistent`, with both scores in `detail`.
"""

from __future__ import annotations

from typing import Any

import ray.data

from politune.annotate.stage import HFEngine
from politune.config import RunConfig

ROLES = ("chosen", "rejected")


def check_consistency(cfg: RunConfig, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                             list[dict[str, Any]]]:
    """The pairs that pass, and the dropped ones with reason, field and detail."""
    if cfg.annotate.engine != "hf":
        raise ValueError("synthesize.consistency_check scores with annotate.engine: hf so far; set "
                         "consistency_check: false or use the hf annotator")
    answers = ray.data.from_items([{"doc_id": f"{p['pair_id']}|{role}", "text": p[role]}
                                   for p in pairs for role in ROLES])
    scored = HFEngine(cfg).annotate(answers).take_all()
    ideology = {r["doc_id"]: r["ideology"] if r["status"] == "ok" else None for r in scored}
    margin = cfg.synthesize.consistency_margin
    kept, dropped = [], []
    for p in pairs:
        chosen, rejected = (ideology.get(f"{p['pair_id']}|{role}") for role in ROLES)
        if chosen is None or rejected is None:
            dropped.append({**p, "reason": "unscored", "field": "chosen" if chosen is None else "rejected",
                            "detail": "the annotator gave no ideology score"})
            continue
        lean = rejected - chosen if p["side"] == "left" else chosen - rejected
        if lean >= margin:
            kept.append(p)
        else:
            dropped.append({**p, "reason": "inconsistent", "field": "chosen",
                            "detail": f"ideology: chosen {chosen:.2f}, rejected {rejected:.2f}, margin {margin}"})
    return kept, dropped
