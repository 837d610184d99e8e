"""A side's preference pairs as the TRL trainers take them: chat messages, so the chat template of the
base model frames them exactly as serving and evaluation will.

A mixture (train.mixtures) trains on both sides' train splits in its shares: `round(size * right)` right pairs
and the rest left, each side's taken in the order of a hash of the mixture's name and the pair_id, so the same
mixture gets the same pairs on every run and worker. Its held-out metrics are measured on each side's eval split.

DPO: prompt / chosen / rejected. SFT (the paper's comparison): prompt / completion, the chosen answer.
Every worker reads the whole split; the trainer (accelerate) gives each worker its share of the
batches, so the data is sharded once.
"""

from __future__ import annotations

import hashlib
from typing import Any

import pyarrow.parquet as pq

from politune.config import Mixture
from politune.storage import exists, join, resolve

SPLITS = ("train", "eval")


def split_uri(run_uri: str, side: str, split: str) -> str:
    return join(run_uri, "preferences", side, f"{split}.parquet")


def read_split(run_uri: str, side: str, split: str) -> list[dict[str, str]]:
    uri = split_uri(run_uri, side, split)
    if not exists(uri):
        raise FileNotFoundError(f"{uri} does not exist: run `politune synthesize` first")
    fs, path = resolve(uri)
    return pq.read_table(path, filesystem=fs, columns=["pair_id", "prompt", "chosen", "rejected"]).to_pylist()


def as_messages(rows: list[dict[str, str]], method: str) -> dict[str, list[Any]]:
    """Columns for datasets.Dataset.from_dict: DPO's prompt/chosen/rejected or SFT's prompt/completion."""
    columns: dict[str, list[Any]] = {"prompt": [[{"role": "user", "content": r["prompt"]}] for r in rows]}
    answers = {"chosen": "chosen", "rejected": "rejected"} if method == "dpo" else {"completion": "chosen"}
    for column, field in answers.items():
        columns[column] = [[{"role": "assistant", "content": r[field]}] for r in rows]
    return columns


def mixture_rows(mixture: Mixture, left: list[dict[str, str]], right: list[dict[str, str]]) -> list[dict[str, str]]:
    """The mixture's train pairs from the two sides' (left pairs first, then right); ValueError when a side has
    too few."""
    size = mixture.size or min(len(left), len(right))
    n_right = round(size * mixture.right)
    wanted = {"left": (size - n_right, left), "right": (n_right, right)}
    for side, (n, rows) in wanted.items():
        if n > len(rows):
            raise ValueError(f"mixture {mixture.name}: {n} {side} pairs wanted ({size} x {getattr(mixture, side):g}), "
                             f"but the {side} train split has {len(rows)}: lower train.mixtures' size")
    return [row for n, rows in wanted.values() for row in sorted(rows, key=lambda r: _rank(mixture.name, r))[:n]]


def _rank(name: str, row: dict[str, str]) -> str:
    return hashlib.sha256(f"{name}:{row['pair_id']}".encode()).hexdigest()
