"""Map a native record of each known source shape to a Document row, or say why it cannot be one.

Shapes:
- truthsocial: a Truth Social status (Mastodon-style API: `content` HTML, `account.username`; a reblog is a
  Repost of the status under `reblog`) or a scraped truth (`text`, `author`, `timestamp`).
- truthsocial_tsv: a row of the Truth Social dataset's truths.tsv (Gerard, Botzer and Weninger, ICWSM 2023):
  `text`, `id`, `timestamp`, `author` (a key into users.tsv); a retruth is a Repost of `truth_retruthed`; replies
  kept, `is_reply` true in meta.
- politosphere: a Reddit comment from the Politosphere dumps or Pushshift's (`body`, HTML entities unescaped;
  `author`; `created_utc`, a number or a string of one), or a Pushshift submission (`title`, and `selftext` unless
  it was removed).
- politune: the project's own Document rows (`doc_id`, `text`, `created_at`, `author`, `meta`, `label`).
- generic: any record with a text column; `fields` in the source config names the columns.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import unicodedata
from datetime import datetime, timezone
from typing import Any

from politune.config import SourceConfig

DELETED_BODIES = {"[deleted]", "[removed]"}
WHERE_REASON = "not selected by sources[].where"
_TAG = re.compile(r"<[^>]+>")
_BREAK = re.compile(r"<br\s*/?>|</p>\s*<p>", re.IGNORECASE)
_SPACE = re.compile(r"\s+")


class Repost(Exception):  # noqa: N818 - a record's kind, not an error
    """A re-post of another record (a Mastodon reblog, a retruth): counted as a duplicate of its original, never a
    document of its own. `original_id` is the original's native id, when the record names it."""

    def __init__(self, field: str, original_id: str | None) -> None:
        super().__init__(f"{field}: repost of {original_id}")
        self.field = field
        self.original_id = original_id


class BadRow(ValueError):
    """A record that cannot become a Document: which field, and why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def dedup_key(text: str) -> str:
    """Text as compared for exact duplicates: Unicode-normalised, case-folded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def text_hash(text: str) -> str:
    return hashlib.blake2b(dedup_key(text).encode(), digest_size=16).hexdigest()


def make_doc_id(source: str, native_id: str | None, text: str) -> str:
    """Stable across reruns, machines and storage: the source name plus the record's own id
    (or, for records without one, its normalised text)."""
    key = f"{source}\x1fid\x1f{native_id}" if native_id is not None else f"{source}\x1ftext\x1f{dedup_key(text)}"
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def strip_html(content: str) -> str:
    return html.unescape(_TAG.sub("", _BREAK.sub("\n", content)))


class RecordMapper:
    """Turns one source's native records into Document dicts. Picklable: it travels to Ray workers."""

    def __init__(self, source: SourceConfig, max_text_chars: int) -> None:
        self.source = source
        self.max_text_chars = max_text_chars

    def to_document(self, record: dict[str, Any]) -> dict[str, Any]:
        for field, wanted in self.source.where.items():
            if str(record.get(field)) not in wanted:
                raise BadRow(field, f"{WHERE_REASON}: {field} is {record.get(field)!r}, not one of {wanted}")
        shape = self.source.shape
        if shape == "truthsocial_tsv":
            record = _dataset_flags(record)
            text_field, text, native_id, created, author, used = self._truthsocial_tsv(record)
        elif shape == "truthsocial":
            text_field, text, native_id, created, author, used = self._truthsocial(record)
        elif shape == "politosphere":
            text_field, text, native_id, created, author, used = self._politosphere(record)
        elif shape == "politune":
            text_field, text, native_id, created, author, used = self._politune(record)
        else:
            text_field, text, native_id, created, author, used = self._generic(record)
        text = self._check_text(text, text_field)
        label_field = self.source.fields.label if shape == "generic" else "label"
        label = _optional_str(record, label_field) if label_field else None
        meta = {k: v for k, v in record.items() if k not in used and k != label_field}
        if shape == "politune" and isinstance(record.get("meta"), str):
            meta = {**_parse_meta(record["meta"]), **{k: v for k, v in meta.items() if k != "meta"}}
        doc_id = record.get("doc_id") if shape == "politune" and isinstance(record.get("doc_id"), str) else None
        return {
            "doc_id": doc_id or make_doc_id(self.source.name, native_id, text),
            "source": self.source.name,
            "text": text,
            "created_at": created,
            "author": author,
            "meta": json.dumps(meta, ensure_ascii=False, sort_keys=True, default=str),
            "label": label,
        }

    # --- shapes -------------------------------------------------------------------------------
    # Each shape returns (text field, text, native id, created_at, author, fields not kept in meta).
    def _truthsocial(self, r: dict[str, Any]) -> tuple:
        reblog = r.get("reblog")
        if isinstance(reblog, dict):  # Mastodon API: a re-post has empty content and the original under `reblog`
            raise Repost("reblog", _native_id(reblog, "id"))
        if "text" in r and r["text"] is not None:
            text_field, text = "text", r["text"]
        elif "content" in r:
            text_field, text = "content", r["content"]
            if isinstance(text, str):
                text = strip_html(text)
        else:
            raise BadRow("text", "missing (a Truth Social record needs `text` or `content`)")
        account = r.get("account")
        if isinstance(account, dict):
            author = account.get("username") or account.get("acct")
            author = str(author) if author is not None else None
        else:
            author = _optional_str(r, "author")
        created_field = "created_at" if "created_at" in r else "timestamp"
        return (text_field, text, _native_id(r, "id"), _timestamp(r, created_field), author,
                {"id", created_field, "author", "text", "content"})

    def _truthsocial_tsv(self, r: dict[str, Any]) -> tuple:
        if r.get("is_retruth") is True:
            original = r.get("truth_retruthed")
            raise Repost("is_retruth", original if original not in (None, "", "-1") else None)
        if "text" not in r:
            raise BadRow("text", "missing (the Truth Social dataset's truths.tsv has a `text` column)")
        author = r.get("author")
        return ("text", r["text"], _native_id(r, "id"), _timestamp(r, "timestamp"), author or None,
                {"id", "timestamp", "author", "text", "is_retruth"})

    def _politosphere(self, r: dict[str, Any]) -> tuple:
        if "body" not in r and "title" in r:
            return self._reddit_submission(r)
        if "body" not in r:
            raise BadRow("body", "missing (a Reddit comment needs `body`, a submission `title`)")
        body = r["body"]
        if isinstance(body, str):
            body = html.unescape(body)  # Reddit keeps its HTML escaping in bodies: &gt; quotes, &amp;, &lt;
        if isinstance(body, str) and body.strip() in DELETED_BODIES:
            raise BadRow("body", f"comment was deleted or removed ({body.strip()})")
        return ("body", body, _native_id(r, "id"), _timestamp(r, "created_utc"), _optional_str(r, "author"),
                {"body", "id", "created_utc", "author"})

    def _reddit_submission(self, r: dict[str, Any]) -> tuple:
        """A submission (Pushshift's RS_ files): its title, and its self text when it has one left."""
        title, selftext = r["title"], r.get("selftext")
        if not isinstance(title, str):
            raise BadRow("title", f"expected a string, got {type(title).__name__}")
        text = html.unescape(title)
        if isinstance(selftext, str) and selftext.strip() and selftext.strip() not in DELETED_BODIES:
            text = f"{text}\n\n{html.unescape(selftext)}"
        return ("title", text, _native_id(r, "id"), _timestamp(r, "created_utc"), _optional_str(r, "author"),
                {"title", "selftext", "id", "created_utc", "author"})

    def _politune(self, r: dict[str, Any]) -> tuple:
        if "text" not in r:
            raise BadRow("text", "missing")
        return ("text", r["text"], _native_id(r, "id"), _timestamp(r, "created_at"), _optional_str(r, "author"),
                {"text", "id", "doc_id", "source", "created_at", "author", "meta"})

    def _generic(self, r: dict[str, Any]) -> tuple:
        f = self.source.fields
        if f.text not in r:
            raise BadRow(f.text, f"missing (the source's text column is `{f.text}`; set sources[].fields.text)")
        used = {name for name in (f.text, f.id, f.created_at, f.author) if name}
        return (f.text, r[f.text], _native_id(r, f.id) if f.id else None,
                _timestamp(r, f.created_at) if f.created_at else None,
                _optional_str(r, f.author) if f.author else None, used)

    def _check_text(self, text: Any, field: str) -> str:
        if text is None:
            raise BadRow(field, "is null")
        if not isinstance(text, str):
            raise BadRow(field, f"expected a string, got {type(text).__name__}")
        text = text.strip()
        if not text:
            raise BadRow(field, "empty or only whitespace")
        if len(text) > self.max_text_chars:
            raise BadRow(field, f"{len(text):,} characters, over the limit of {self.max_text_chars:,}")
        return text


def _dataset_flags(r: dict[str, Any]) -> dict[str, Any]:
    """The Truth Social dataset writes booleans as t / f."""
    flags = {"t": True, "f": False}
    return {**r, **{k: flags[r[k]] for k in ("is_retruth", "is_reply") if r.get(k) in flags}}


def _native_id(r: dict[str, Any], field: str) -> str | None:
    value = r.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadRow(field, f"expected a string or integer id, got {type(value).__name__}")
    return str(value)


def _optional_str(r: dict[str, Any], field: str) -> str | None:
    value = r.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        raise BadRow(field, f"expected a string, got {type(value).__name__}")
    return value


def _timestamp(r: dict[str, Any], field: str) -> str | None:
    """ISO 8601 in UTC from an ISO string, epoch seconds (or milliseconds), or a datetime."""
    value = r.get(field)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
        value = float(value)
    if isinstance(value, bool):
        raise BadRow(field, "expected a timestamp, got bool")
    if isinstance(value, (int, float)):
        seconds = value / 1000 if abs(value) > 1e11 else value
        try:
            return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat().replace("+00:00", "Z")
        except (OverflowError, OSError, ValueError):
            raise BadRow(field, f"epoch value {value} is out of range") from None
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            raise BadRow(field, f"not an ISO 8601 time or epoch seconds: {value[:40]!r}") from None
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
        return parsed.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
    raise BadRow(field, f"expected a timestamp, got {type(value).__name__}")


def _parse_meta(meta: str) -> dict[str, Any]:
    try:
        parsed = json.loads(meta)
    except json.JSONDecodeError:
        raise BadRow("meta", "not valid JSON") from None
    if not isinstance(parsed, dict):
        raise BadRow("meta", "expected a JSON object")
    return parsed

