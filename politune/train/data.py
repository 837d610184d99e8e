"""A side's preference pairs as the TRL trainers take them: chat messages, so the chat template of the
base model frames them exactly as serving and evaluation will.

DPO: prompt / chosen / rejected. SFT (the paper's comparison): prompt / completion, the chosen answer.
Every worker reads the whole split; the trainer (accelerate) gives each worker its share of the
batches, so the data is sharded once.
"""

from __future__ import annotations

from typing import Any

import pyarrow.parquet as pq

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
