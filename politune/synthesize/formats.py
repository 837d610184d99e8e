"""Preference pairs in the released PoliTune sets' shape and in TRL's, read and written (local or s3://).

- flat: one record a pair with `prompt`, `chosen` and `rejected` strings, as jsonl or CSV: the shape
  of the released sets (../shared/data/politune/{left,right}.jsonl).
- chat: TRL's conversational shape: `prompt` a message list ending with the user's turn, `chosen` and
  `rejected` the assistant's reply as a message list. The implicit-prompt variant (chosen and rejected
  each hold the whole conversation) is read too.

Reading returns Preference rows plus the records that could not be read, each with its file, line
and field: nothing is dropped silently.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from politune.storage import resolve

PREFERENCE_SCHEMA = pa.schema([
    ("pair_id", pa.string()), ("side", pa.string()),
    ("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()),
    ("doc_id", pa.string()),          # the selected post it came from; null for imported sets
    ("synthesizer", pa.string()),     # model id, or where an imported set came from
    ("prompt_version", pa.string()),
])
Shape = Literal["flat", "chat"]


@dataclass
class BadRecord:
    file: str
    line: int
    field: str
    reason: str
    raw: str
    side: str | None = None


def pair_id(side: str, prompt: str, chosen: str, rejected: str) -> str:
    """Stable id of a pair: the same texts on the same side always get the same id."""
    return hashlib.sha1("\x1f".join((side, prompt, chosen, rejected)).encode()).hexdigest()[:20]


def read_pairs(uri: str, side: str, source: str = "released") -> tuple[list[dict[str, Any]], list[BadRecord]]:
    """Preference rows from a flat or chat file (jsonl, or CSV for flat), and the records that failed."""
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as stream:
        text = stream.read().decode("utf-8-sig")
    records = _csv_records(text) if path.endswith(".csv") else _jsonl_records(uri, text)
    rows, bad = [], []
    for line, record in records:
        if isinstance(record, BadRecord):
            bad.append(record)
            continue
        try:
            prompt, chosen, rejected = _texts(record)
        except _FieldError as err:
            bad.append(BadRecord(uri, line, err.field, err.reason, json.dumps(record)[:500]))
            continue
        rows.append({"pair_id": pair_id(side, prompt, chosen, rejected), "side": side, "prompt": prompt,
                     "chosen": chosen, "rejected": rejected, "doc_id": None, "synthesizer": source,
                     "prompt_version": None})
    for b in bad:
        b.side = side
    return rows, bad


def write_pairs(rows: list[dict[str, Any]], uri: str, shape: Shape = "flat") -> None:
    """Write pairs as jsonl (flat or chat) or CSV (flat), by the file's extension."""
    fs, path = resolve(uri)
    if path.endswith(".csv"):
        if shape != "flat":
            raise ValueError(f"{uri}: CSV holds the flat shape only")
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=["prompt", "chosen", "rejected"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        data = buffer.getvalue()
    else:
        data = "".join(json.dumps(_shaped(r, shape), ensure_ascii=False) + "\n" for r in rows)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as out:
        out.write(data.encode())


def _shaped(row: dict[str, Any], shape: Shape) -> dict[str, Any]:
    if shape == "flat":
        return {k: row[k] for k in ("prompt", "chosen", "rejected")}
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


class _FieldError(ValueError):
    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field, self.reason = field, reason


def _texts(record: Any) -> tuple[str, str, str]:
    if not isinstance(record, dict):
        raise _FieldError("-", f"expected an object, got {type(record).__name__}")
    if isinstance(record.get("chosen"), list):
        return _chat_texts(record)
    out = []
    for name in ("prompt", "chosen", "rejected"):
        value = record.get(name)
        if not isinstance(value, str):
            raise _FieldError(name, "missing" if value is None else f"expected a string, got {type(value).__name__}")
        out.append(value)
    return out[0], out[1], out[2]


def _chat_texts(record: dict[str, Any]) -> tuple[str, str, str]:
    """TRL's conversational shape, explicit prompt or implicit (the conversation repeated in each answer)."""
    chosen, rejected = record["chosen"], record.get("rejected")
    if not isinstance(rejected, list):
        raise _FieldError("rejected", "expected a message list like chosen")
    prompt_messages = record.get("prompt")
    if prompt_messages is None:  # implicit: everything before the last message is the prompt
        prompt_messages, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if not isinstance(prompt_messages, list):
        raise _FieldError("prompt", "expected a message list")
    users = [m.get("content") for m in prompt_messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users or not isinstance(users[-1], str):
        raise _FieldError("prompt", "no user message")
    return users[-1], _reply(chosen, "chosen"), _reply(rejected, "rejected")


def _reply(messages: list[Any], name: str) -> str:
    replies = [m.get("content") for m in messages if isinstance(m, dict) and m.get("role") == "assistant"]
    if len(replies) != 1 or not isinstance(replies[0], str):
        raise _FieldError(name, "expected exactly one assistant message")
    return replies[0]


def _jsonl_records(uri: str, text: str) -> list[tuple[int, Any]]:
    records: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            records.append((number, BadRecord(uri, number, "-", f"not JSON: {err.msg}", line[:500])))
    return records


def _csv_records(text: str) -> list[tuple[int, Any]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    return [(reader.line_num, row) for row in reader]
