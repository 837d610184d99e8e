"""The consistency check (beyond the paper, on by default): does chosen lean toward its side of rejected?

The annotator (annotate's prompts, engine and mode) scores both answers on the ideology scale, 0 = far
left … 10 = far right. A left pair is kept when rejected − chosen ≥ margin, a right pair when
chosen − rejected ≥ margin. A pair with an answer the annotator could not score is dropped as
`unscored`, one that leans the wrong way as `inconsistent`, with both scores in `detail`.
"""

from __future__ import annotations

from typing import Any

import ray.data

from politune.config import RunConfig
from politune.contracts.annotator.hf_engine import HFEngine, annotator_answer_ids
from politune.contracts.annotator.parse import expected_and_argmax
from politune.contracts.annotator.vllm_engine import VLLMEngine

ROLES = ("chosen", "rejected")


def check_consistency(cfg: RunConfig, pairs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]],
                                                                             list[dict[str, Any]]]:
    """The pairs that pass, and the dropped ones with reason, field and detail."""
    ideology = ideology_scores(cfg, [{"doc_id": f"{p['pair_id']}|{role}", "text": p[role]}
                                     for p in pairs for role in ROLES])
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


def ideology_scores(cfg: RunConfig, texts: list[dict[str, str]]) -> dict[str, float | None]:
    """doc_id -> the annotator's ideology score of its text, None when it gave none."""
    answers = ray.data.from_items(texts)
    a = cfg.annotate
    if a.engine == "vllm" and a.mode == "logprob":
        # only the ideology question is needed: one request a text, not the three of annotation
        asks = answers.map(lambda row: {**row, "scale": "ideology"}, num_cpus=a.vllm_stage_num_cpus)
        rows = VLLMEngine(cfg, answer_ids=annotator_answer_ids(cfg)).score_scales(asks).take_all()
        return {r["doc_id"]: None if r["error"] else float(expected_and_argmax(r["answer_logprobs"])[0])
                for r in rows}
    engine = HFEngine(cfg) if a.engine == "hf" else VLLMEngine(cfg)
    return {r["doc_id"]: r["ideology"] if r["status"] == "ok" else None for r in engine.annotate(answers).take_all()}
