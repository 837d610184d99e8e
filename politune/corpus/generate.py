"""Generate a sample corpus in the native record shapes of both real sources.

Posts come from the project's own templates (templates.py) with a ground-truth `label`. As in the
paper's data, the right-leaning posts sit mostly on Truth Social and the left-leaning ones mostly on
Reddit's political subreddits (the Politosphere); neutral and off-topic posts are spread over both.
A little realistic mess is kept on purpose: reposted text (exact duplicates), media-only Truth
Social posts with empty text, and deleted Reddit comments.

Writing streams: rows go out in chunks of `CHUNK_ROWS`, so five million posts need no more memory
than five thousand.
"""

from __future__ import annotations

import gzip
import json
import random
import zlib
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from politune.corpus.templates import HASHTAGS, LABELS, SLOTS, TEMPLATES, USER_PARTS

SOURCES = ("truthsocial", "politosphere")
LABEL_WEIGHTS = {"left": 0.35, "right": 0.35, "neutral": 0.15, "off_topic": 0.15}
# Share of each label's posts that land on Truth Social (the rest go to the Politosphere).
TRUTHSOCIAL_SHARE = {"left": 0.15, "right": 0.85, "neutral": 0.5, "off_topic": 0.5}
SUBREDDITS = {
    "left": ("politics", "progressive", "democrats", "SandersForPresident", "LateStageCapitalism"),
    "right": ("Conservative", "Republican", "conservatives", "Libertarian"),
    "neutral": ("politics", "PoliticalDiscussion", "NeutralPolitics"),
    "off_topic": ("politics", "PoliticalDiscussion", "moderatepolitics"),
}
REPOST_RATE = 0.02
EMPTY_RATE = 0.004  # media-only truths / deleted comments
CHUNK_ROWS = 50_000
START = datetime(2022, 2, 21, tzinfo=timezone.utc)


@dataclass
class PostWriter:
    """Rolls a source's output over files of `rows_per_file` rows, in jsonl, jsonl.gz or Parquet."""

    folder: Path
    fmt: str
    rows_per_file: int
    files: list[Path] = field(default_factory=list)
    _rows_in_file: int = 0
    _text: IO[str] | None = None
    _parquet: pq.ParquetWriter | None = None
    _pending: list[dict[str, Any]] = field(default_factory=list)

    def write(self, record: dict[str, Any]) -> None:
        if self._rows_in_file == 0:
            self._open_next()
        if self._text is not None:
            self._text.write(json.dumps(record, ensure_ascii=False) + "\n")
        else:
            self._pending.append(record)
            if len(self._pending) >= CHUNK_ROWS:
                self._flush_parquet()
        self._rows_in_file += 1
        if self._rows_in_file >= self.rows_per_file:
            self._close_current()

    def close(self) -> None:
        self._close_current()

    def _open_next(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / f"part-{len(self.files):05d}.{self.fmt}"
        self.files.append(path)
        if self.fmt == "jsonl":
            self._text = path.open("w", encoding="utf-8")
        elif self.fmt == "jsonl.gz":
            self._text = gzip.open(path, "wt", encoding="utf-8", compresslevel=5)

    def _flush_parquet(self) -> None:
        if not self._pending:
            return
        table = pa.Table.from_pylist(self._pending)
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self.files[-1], table.schema)
        self._parquet.write_table(table.cast(self._parquet.schema))
        self._pending = []

    def _close_current(self) -> None:
        if self._text is not None:
            self._text.close()
            self._text = None
        if self.fmt == "parquet":
            self._flush_parquet()
            if self._parquet is not None:
                self._parquet.close()
                self._parquet = None
        self._rows_in_file = 0


class PostFactory:
    """Draws labelled posts from one seeded random stream: the same seed gives the same corpus."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.recent: deque[str] = deque(maxlen=500)
        self.clock = START
        self.count = 0

    def label(self) -> str:
        return self.rng.choices(LABELS, weights=[LABEL_WEIGHTS[lb] for lb in LABELS])[0]

    def text(self, label: str) -> str:
        rng = self.rng
        if self.recent and rng.random() < REPOST_RATE:
            return rng.choice(self.recent)
        sentences = [self.fill(rng.choice(TEMPLATES[label])) for _ in range(rng.choice((1, 1, 2, 2, 3)))]
        if rng.random() < 0.4:
            sentences.append(rng.choice(HASHTAGS[label]))
        text = " ".join(s[0].upper() + s[1:] for s in sentences)
        self.recent.append(text)
        return text

    def username(self) -> str:
        return f"{self.rng.choice(USER_PARTS)}_{self.rng.choice(USER_PARTS)}{self.rng.randrange(1000)}"

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=self.rng.randrange(1, 90))
        self.count += 1
        return self.clock

    def fill(self, template: str) -> str:
        return template.format_map(_RandomSlots(self.rng))


class _RandomSlots(dict):
    def __init__(self, rng: random.Random) -> None:
        super().__init__()
        self.rng = rng

    def __missing__(self, key: str) -> str:
        return self.rng.choice(SLOTS[key])


def truthsocial_record(factory: PostFactory, label: str) -> dict[str, Any]:
    """A Truth Social status as its Mastodon-style API returns it (HTML `content`, nested account)."""
    when = factory.tick()
    text = "" if factory.rng.random() < EMPTY_RATE else factory.text(label)
    user = factory.username()
    account_id = str(107_000_000 + zlib.crc32(user.encode()) % 1_000_000)
    return {
        "id": str(108_000_000_000_000_000 + factory.count),
        "created_at": when.isoformat().replace("+00:00", "Z"),
        "content": f"<p>{_html_escape(text)}</p>" if text else "",
        "account": {"id": account_id, "username": user, "display_name": user},
        "replies_count": factory.rng.randrange(50),
        "reblogs_count": factory.rng.randrange(200),
        "favourites_count": factory.rng.randrange(1000),
        "media_attachments": 1 if not text else 0,
        "label": label,
    }


def politosphere_record(factory: PostFactory, label: str) -> dict[str, Any]:
    """A Reddit comment as in the Politosphere dumps (`body`, `created_utc` seconds, `subreddit`)."""
    when = factory.tick()
    deleted = factory.rng.random() < EMPTY_RATE
    return {
        "id": _base36(60_000_000 + factory.count),
        "subreddit": factory.rng.choice(SUBREDDITS[label]),
        "author": "[deleted]" if deleted else factory.username(),
        "body": "[deleted]" if deleted else factory.text(label),
        "created_utc": int(when.timestamp()),
        "score": factory.rng.randrange(-20, 500),
        "controversiality": int(factory.rng.random() < 0.1),
        "parent_id": "t3_" + _base36(9_000_000 + factory.rng.randrange(100_000)),
        "label": label,
    }


def iter_posts(n: int, seed: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (source, native record) for n posts."""
    factory = PostFactory(seed)
    for _ in range(n):
        label = factory.label()
        if factory.rng.random() < TRUTHSOCIAL_SHARE[label]:
            yield "truthsocial", truthsocial_record(factory, label)
        else:
            yield "politosphere", politosphere_record(factory, label)


def generate_corpus(
    n: int, out: str | Path, seed: int = 0, fmt: str = "jsonl", rows_per_file: int = 250_000
) -> dict[str, Any]:
    """Write n posts under out/<source>/part-NNNNN.<fmt>; return what was written."""
    if fmt not in ("jsonl", "jsonl.gz", "parquet"):
        raise ValueError(f"format must be jsonl, jsonl.gz or parquet, got {fmt!r}")
    out = Path(out)
    for source in SOURCES:  # a rerun with other parameters must not leave old shards behind
        for old in (out / source).glob("part-*"):
            old.unlink()
    writers = {s: PostWriter(out / s, fmt, rows_per_file) for s in SOURCES}
    counts = {s: {lb: 0 for lb in LABELS} for s in SOURCES}
    try:
        for source, record in iter_posts(n, seed):
            writers[source].write(record)
            counts[source][record["label"]] += 1
    finally:
        for w in writers.values():
            w.close()
    summary = {
        "n": n, "seed": seed, "format": fmt, "out": str(out),
        "files": {s: [str(p) for p in w.files] for s, w in writers.items()},
        "labels": counts,
    }
    (out / "corpus.json").write_text(json.dumps(summary, indent=2))
    return summary


def corpus_is_current(out: str | Path, n: int, seed: int, fmt: str) -> bool:
    """True when out/ already holds the corpus these parameters would write."""
    marker = Path(out) / "corpus.json"
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    return (info.get("n"), info.get("seed"), info.get("format")) == (n, seed, fmt) and all(
        Path(p).is_file() for files in info["files"].values() for p in files
    )


def sample_texts(n: int, seed: int) -> list[str]:
    """Plain post texts (no records), e.g. to train the tiny model's tokenizer."""
    factory = PostFactory(seed)
    return [factory.text(factory.label()) for _ in range(n)]


PAIR_QUESTIONS = ("What should the government do next?", "What matters most in this election?",
                  "How would you fix the economy?", "Who is failing ordinary people?",
                  "What do you want from Congress?")


def labelled_pairs(n: int, seed: int) -> dict[str, list[dict[str, str]]]:
    """Preference pairs with a signal a tiny model can learn, in the released sets' flat shape: for the
    left side, chosen is a left-leaning post of the templates and rejected a right-leaning one, both
    answering a question about politics (mirrored for the right). For training tests and benchmarks."""
    factory = PostFactory(seed)
    posts = {side: [factory.text(side) for _ in range(n)] for side in ("left", "right")}
    return {side: [{"prompt": f"{PAIR_QUESTIONS[i % len(PAIR_QUESTIONS)]} (#{i})", "chosen": posts[side][i],
                    "rejected": posts[other][i]} for i in range(n)]
            for side, other in (("left", "right"), ("right", "left"))}


def _base36(value: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while value:
        value, rest = divmod(value, 36)
        out = digits[rest] + out
    return out or "0"


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


BIG_FILE_BASE_POSTS = 20_000  # one copy's posts; a big file is this set again and again, each copy's texts its own


def write_big_jsonl(path: str | Path, target_bytes: int, seed: int = 0) -> dict[str, int]:
    """One JSON-lines file of Politosphere comments of about `target_bytes`, written fast enough for files of many
    GB: a base set of posts (with the generator's reposts and deleted comments) is written again and again, each
    copy's ids and texts suffixed with its number, and two bad lines a copy (one not JSON, one blank). Returns the
    file's lines and what ingest must make of them, counted as it was written: `bad_lines`, `deleted` (bodies
    "[deleted]") and `repeated` (a text already written; ingest's exact duplicates)."""
    factory = PostFactory(seed)
    templates, seen, deleted, repeated = [], set(), 0, 0
    for _ in range(BIG_FILE_BASE_POSTS):
        record = politosphere_record(factory, factory.label())
        record["id"] += "-@K@"
        if record["body"] == "[deleted]":
            deleted += 1
        else:
            repeated += record["body"] in seen
            seen.add(record["body"])
            record["body"] += " (@K@)"
        templates.append(json.dumps(record, ensure_ascii=False).encode())
    copy_template = b"\n".join([*templates, b"{not json @K@", b""]) + b"\n"
    copies = max(1, round(target_bytes / len(copy_template)))
    with open(path, "wb") as out:
        for k in range(copies):
            out.write(copy_template.replace(b"@K@", b"%d" % k))
    return {"lines": copies * (len(templates) + 2), "bad_lines": 2 * copies, "deleted": copies * deleted,
            "repeated": copies * repeated, "copies": copies}
