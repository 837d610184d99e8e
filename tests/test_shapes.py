import json

import pytest

from politune.config import FieldMap, SourceConfig
from politune.ingest.shapes import BadRow, RecordMapper, dedup_key, make_doc_id, strip_html


def mapper(shape: str, name: str = "src", max_chars: int = 100, **fields) -> RecordMapper:
    return RecordMapper(SourceConfig(name=name, paths=["x"], shape=shape, fields=FieldMap(**fields)), max_chars)


def test_truthsocial_api_record() -> None:
    doc = mapper("truthsocial").to_document({
        "id": "1081", "created_at": "2022-03-01T10:00:00.000Z", "content": "<p>Back the blue &amp; vote</p>",
        "account": {"username": "eagle1"}, "reblogs_count": 3, "label": "right"})
    assert doc["text"] == "Back the blue & vote"
    assert doc["author"] == "eagle1"
    assert doc["created_at"] == "2022-03-01T10:00:00Z"
    assert doc["label"] == "right"
    assert json.loads(doc["meta"]) == {"account": {"username": "eagle1"}, "reblogs_count": 3}
    assert doc["doc_id"] == make_doc_id("src", "1081", "ignored when an id exists")


def test_politosphere_comment() -> None:
    doc = mapper("politosphere").to_document({
        "id": "k2x", "body": "  Tax the rich  ", "author": "maple", "created_utc": 1645401654, "subreddit": "politics"})
    assert doc["text"] == "Tax the rich"
    assert doc["created_at"] == "2022-02-21T00:00:54Z"
    assert json.loads(doc["meta"]) == {"subreddit": "politics"}
    assert doc["label"] is None


def test_generic_field_map() -> None:
    doc = mapper("generic", text="message", id="uid", created_at=None, author=None, label="side").to_document(
        {"message": "hello", "uid": 7, "side": "left", "extra": 1})
    assert (doc["text"], doc["label"], doc["created_at"]) == ("hello", "left", None)
    assert json.loads(doc["meta"]) == {"extra": 1}


def test_politune_shape_keeps_doc_id_and_meta() -> None:
    doc = mapper("politune").to_document({"doc_id": "abc", "source": "old", "text": "t", "meta": '{"a": 1}'})
    assert doc["doc_id"] == "abc"
    assert json.loads(doc["meta"]) == {"a": 1}


@pytest.mark.parametrize("record, field, reason", [
    ({"id": "1", "body": "[removed]"}, "body", "deleted or removed"),
    ({"id": "1", "body": "   "}, "body", "empty or only whitespace"),
    ({"id": "1", "body": None}, "body", "is null"),
    ({"id": "1", "body": 42}, "body", "expected a string, got int"),
    ({"id": "1"}, "body", "missing"),
    ({"id": "1", "body": "x" * 101}, "body", "101 characters, over the limit of 100"),
    ({"id": [1], "body": "ok"}, "id", "expected a string or integer id, got list"),
    ({"id": "1", "body": "ok", "created_utc": "yesterday"}, "created_utc", "not an ISO 8601 time"),
    ({"id": "1", "body": "ok", "author": 5}, "author", "expected a string, got int"),
])
def test_bad_rows_name_field_and_reason(record, field, reason) -> None:
    with pytest.raises(BadRow) as err:
        mapper("politosphere").to_document(record)
    assert err.value.field == field
    assert reason in err.value.reason


def test_doc_id_is_stable_and_source_scoped() -> None:
    assert make_doc_id("a", "1", "x") == make_doc_id("a", "1", "y")
    assert make_doc_id("a", "1", "x") != make_doc_id("b", "1", "x")
    assert make_doc_id("a", None, "Hello  World") == make_doc_id("a", None, "hello world")


def test_dedup_key_and_html() -> None:
    assert dedup_key("  Tax\tthe RICH ") == dedup_key("tax the rich")
    assert strip_html("<p>a<br/>b</p><p>c &lt;3</p>") == "a\nb\nc <3"


def test_epoch_milliseconds_and_naive_iso() -> None:
    m = mapper("generic")
    assert m.to_document({"text": "t", "created_at": 1645401654000})["created_at"] == "2022-02-21T00:00:54Z"
    assert m.to_document({"text": "t", "created_at": "2022-02-21 00:00:54"})["created_at"] == "2022-02-21T00:00:54Z"


def test_reddit_bodies_as_pushshift_keeps_them() -> None:
    """HTML entities unescaped (Reddit stores `>` quotes as &gt;), numbers as strings (older Pushshift months)."""
    doc = mapper("politosphere").to_document({
        "id": "c1", "body": "&gt; they said\n\nTax cuts &amp; tariffs &lt;3", "author": "maple",
        "created_utc": "1432068778", "score": "12"})
    assert doc["text"] == "> they said\n\nTax cuts & tariffs <3"
    assert doc["created_at"] == "2015-05-19T20:52:58Z"
    assert json.loads(doc["meta"]) == {"score": "12"}
    with pytest.raises(BadRow, match=r"deleted or removed \(\[removed\]\)"):
        mapper("politosphere").to_document({"id": "c2", "body": "[removed]"})


def test_where_keeps_only_the_wanted_values() -> None:
    english = RecordMapper(SourceConfig(name="p", paths=["x"], shape="politosphere", where={"language": "en"}), 100)
    assert english.source.where == {"language": ["en"]}
    assert english.to_document({"id": "a", "body": "hello", "language": "en"})["text"] == "hello"
    with pytest.raises(BadRow) as bad:
        english.to_document({"id": "b", "body": "hallo", "language": "de"})
    assert (bad.value.field, bad.value.reason) == (
        "language", "not selected by sources[].where: language is 'de', not one of ['en']")


def test_a_mastodon_reblog_is_a_repost_of_its_original() -> None:
    from politune.ingest.shapes import Repost

    with pytest.raises(Repost) as repost:
        mapper("truthsocial").to_document({"id": "2", "content": "", "reblog": {"id": "1", "content": "<p>Hi</p>"}})
    assert (repost.value.field, repost.value.original_id) == ("reblog", "1")
    assert mapper("truthsocial").to_document({"id": "3", "content": "<p>Own</p>", "reblog": None})["text"] == "Own"


def test_a_pushshift_submission_is_its_title_and_self_text() -> None:
    m = mapper("politosphere")
    doc = m.to_document({"id": "s1", "title": "Tax plan &amp; you", "selftext": "Read it &gt; here",
                         "created_utc": "1432068778", "subreddit": "politics"})
    assert doc["text"] == "Tax plan & you\n\nRead it > here"
    assert m.to_document({"id": "s2", "title": "Link post", "selftext": "[removed]"})["text"] == "Link post"
    assert json.loads(doc["meta"]) == {"subreddit": "politics"}
