"""Faults cost a retry, never the run or a row: damaged corpus files, a storage outage mid-stage.

Everything here is real: a local Ray on 127.0.0.1, files damaged byte by byte, and the moto S3 server stopped and
started again (ThreadedMotoServer in this process keeps its buckets across a restart). The lost-worker faults
(an actor, a Train worker or a Serve replica killed by pid) are in test_faults_workers.py.
"""

from __future__ import annotations

import codecs
import gzip
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from politune.annotate import annotate_documents
from politune.command import failure_message
from politune.config import build_config
from politune.corpus.generate import generate_corpus
from politune.ingest import ingest_corpus
from politune.ingest import stage as ingest_stage
from politune.storage import StorageUnavailable, read_json, resolve
from politune.synthesize import synthesize_preferences
from politune.train import train_adapter

pytestmark = pytest.mark.integration


def records(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "text": f"{prefix} post number {i} about taxes and borders"} for i in range(n)]


def jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def complete_lines_before_the_cut(compressed: bytes) -> int:
    """Whole lines a gzip stream cut short still holds: what zlib can decompress, up to its last newline."""
    return zlib.decompressobj(wbits=31).decompress(compressed).count(b"\n")


@pytest.fixture(scope="module")
def damaged_corpus(tmp_path_factory) -> dict:
    """A folder of one good file and one of each kind of damage, and what ingest must make of each file:
    (rows kept as documents, rows quarantined, the quarantined (file) row's row number and reason fragment)."""
    root = tmp_path_factory.mktemp("damaged")
    folder = root / "posts"
    folder.mkdir()
    expect: dict[str, tuple[int, int, tuple[int, str] | None]] = {}

    (folder / "good.jsonl").write_text(jsonl(records("good", 20)))
    expect["good.jsonl"] = (20, 0, None)

    whole = gzip.compress(jsonl(records("gz", 300)).encode())
    cut = whole[: len(whole) // 2]  # a partial download
    (folder / "truncated.jsonl.gz").write_bytes(cut)
    before = complete_lines_before_the_cut(cut)
    assert 0 < before < 300
    expect["truncated.jsonl.gz"] = (before, 1, (before + 1, f"damaged: reading stopped at row {before + 1} (byte"))

    (folder / "corrupt.jsonl.gz").write_bytes(b"this was never gzip " * 20)
    expect["corrupt.jsonl.gz"] = (0, 1, (1, "damaged: reading stopped at row 1"))

    (folder / "not-parquet.parquet").write_bytes(b"<html>403 Forbidden</html>\n" * 4)
    expect["not-parquet.parquet"] = (0, 1, (1, "damaged: reading stopped at row 1"))

    pq.write_table(pa.Table.from_pylist(records("pq", 50)), folder / "whole.parquet")
    data = (folder / "whole.parquet").read_bytes()
    (folder / "whole.parquet").unlink()
    (folder / "cut-footer.parquet").write_bytes(data[:-12])
    expect["cut-footer.parquet"] = (0, 1, (1, "damaged: reading stopped at row 1"))

    (folder / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + jsonl(records("bom", 5)).encode())
    expect["bom.jsonl"] = (5, 0, None)

    (folder / "utf16.jsonl").write_bytes(jsonl(records("utf16j", 4)).encode("utf-16"))  # with its BOM
    expect["utf16.jsonl"] = (4, 0, None)

    utf16_csv = "id,text\r\n" + "".join(f'{r["id"]},"{r["text"]}"\r\n' for r in records("utf16c", 6))
    (folder / "utf16.csv").write_bytes(utf16_csv.encode("utf-16-le"))  # no BOM, as some exporters write
    expect["utf16.csv"] = (6, 0, None)

    (folder / "bom.csv").write_bytes(codecs.BOM_UTF8 + b"id,text\n" + b"".join(
        f'{r["id"]},{r["text"]}\n'.encode() for r in records("bomcsv", 3)))
    expect["bom.csv"] = (3, 0, None)

    (folder / "empty.jsonl").write_bytes(b"")
    expect["empty.jsonl"] = (0, 1, (1, "empty file (0 bytes)"))

    (folder / "vanishes-while-read.jsonl").write_text(jsonl(records("gone", 7)))
    expect["vanishes-while-read.jsonl"] = (0, 1, (1, "vanished after it was listed: FileNotFoundError"))
    (folder / "vanishes-after-listing.jsonl").write_text(jsonl(records("early", 7)))
    expect["vanishes-after-listing.jsonl"] = (0, 1, (1, "vanished after it was listed"))
    return {"root": root, "folder": folder, "expect": expect}


def damaged_config(folder: Path, storage_root: Path, name: str = "posts") -> object:
    return build_config({"run_id": "t", "storage_root": str(storage_root), "sources": [
        {"name": name, "paths": [str(folder)], "shape": "generic",
         "fields": {"text": "text", "id": "id", "created_at": None, "author": None, "label": None}}]})


def test_damaged_files_cost_only_their_damaged_part(ray_local, damaged_corpus: dict, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    folder: Path = damaged_corpus["folder"]
    corpus = tmp_path / "posts"
    corpus.mkdir()
    for f in folder.iterdir():
        (corpus / f.name).write_bytes(f.read_bytes())

    # Two files vanish: one between the listing and Ray Data's own look-up, one after Ray Data looked it up,
    # before its read task opens it.
    listed = ingest_stage.list_source_files

    def list_then_lose_one(source):
        listing = listed(source)
        (corpus / "vanishes-after-listing.jsonl").unlink()
        return listing

    class LosesOneBeforeReading(ingest_stage.CorpusDatasource):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            (corpus / "vanishes-while-read.jsonl").unlink(missing_ok=True)

    monkeypatch.setattr(ingest_stage, "list_source_files", list_then_lose_one)
    monkeypatch.setattr(ingest_stage, "CorpusDatasource", LosesOneBeforeReading)

    result = ingest_corpus(damaged_config(corpus, tmp_path / "runs"))

    expect = damaged_corpus["expect"]
    counts = result.counts["posts"]
    assert counts["read"] == counts["kept"] + counts["duplicates"] + counts["quarantined"]
    assert counts["kept"] == sum(kept for kept, _, _ in expect.values())
    assert counts["quarantined"] == sum(q for _, q, _ in expect.values())

    docs = pq.read_table(resolve(result.documents_uri)[1]).to_pylist()
    ids = {d["doc_id"] for d in docs}
    assert len(ids) == len(docs)
    texts = {d["text"] for d in docs}
    assert "bom post number 0 about taxes and borders" in texts  # the BOM's first record is kept
    assert "utf16c post number 0 about taxes and borders" in texts and "bomcsv post number 0 about taxes and " \
        "borders" in texts
    for prefix, (kept, _, _) in {"good": expect["good.jsonl"], "gz": expect["truncated.jsonl.gz"],
                                 "bom": expect["bom.jsonl"], "utf16j": expect["utf16.jsonl"],
                                 "utf16c": expect["utf16.csv"], "bomcsv": expect["bom.csv"]}.items():
        assert sum(t.startswith(f"{prefix} post") for t in texts) == kept, prefix

    quarantined = pq.read_table(resolve(result.quarantine_uri)[1]).to_pylist()
    file_rows = {Path(r["file"]).name: r for r in quarantined if r["field"] == "(file)"}
    assert set(file_rows) == {name for name, (_, _, at) in expect.items() if at}
    assert {Path(f).name: r for f, r in result.damaged_files["posts"].items()} == {
        name: r["reason"] for name, r in file_rows.items()}
    for name, (_, _, at) in expect.items():
        if at:
            row, fragment = at
            assert file_rows[name]["row"] == row, name
            assert fragment in file_rows[name]["reason"], (name, file_rows[name]["reason"])
    cut = file_rows["truncated.jsonl.gz"]["reason"]
    assert "of the gzip-decompressed stream): EOFError: Compressed file ended before the end-of-stream marker" in cut

    manifest = read_json(f"{result.documents_uri.rsplit('/', 1)[0]}/manifest.json")
    assert manifest["artifacts"]["quarantine"]["counts"]["posts"]["damaged_files"] == len(file_rows)


def test_a_source_whose_every_file_is_damaged_is_an_error_naming_it(ray_local, damaged_corpus: dict,
                                                                   tmp_path: Path) -> None:
    folder = tmp_path / "all-bad"
    folder.mkdir()
    for name in ("truncated.jsonl.gz", "corrupt.jsonl.gz", "empty.jsonl"):
        (folder / name).write_bytes((damaged_corpus["folder"] / name).read_bytes())
    folder.joinpath("truncated.jsonl.gz").write_bytes(b"\x1f\x8b\x08\x00" + b"\x00" * 6)  # a header, no data
    cfg = damaged_config(folder, tmp_path / "runs", name="broken")
    with pytest.raises(ValueError, match=r"source 'broken': none of its 3 files could be read \(.*corrupt.jsonl.gz: "
                                         r"damaged: reading stopped at row 1"):
        ingest_corpus(cfg)
    manifest = Path(cfg.run_uri) / "manifest.json"
    assert not manifest.exists() or "documents" not in read_json(str(manifest))["artifacts"]


# --- storage outages: the moto S3 server stopped at a chosen request, and started again ------------------------


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    from politune.config import TinyModelConfig
    from politune.world.tiny import build_tiny_model

    return build_tiny_model(TinyModelConfig(), tmp_path_factory.mktemp("tiny") / "tiny")


def s3_run(bucket: str, run_id: str, corpus: Path, model: Path, **sections) -> object:
    return build_config({
        "run_id": run_id, "storage_root": f"s3://{bucket}/outages", "tiny_model": {"out": str(model)},
        "sources": [{"name": "truthsocial", "paths": [str(corpus / "truthsocial")], "shape": "truthsocial"},
                    {"name": "politosphere", "paths": [str(corpus / "politosphere")], "shape": "politosphere"}],
        **sections})


def artifacts(cfg) -> dict:
    return read_json(f"{cfg.run_uri}/manifest.json")["artifacts"]


def key_of(cfg, *parts: str) -> str:
    """The request path prefix of a run's key: /<bucket>/<prefix>/<run>/<parts>."""
    return "/" + "/".join([cfg.run_uri.removeprefix("s3://"), *parts])


def test_storage_outage_while_ingest_writes_documents(ray_local, s3_server, s3_bucket: str, tiny_model: Path,
                                                      tmp_path: Path) -> None:
    corpus = Path(generate_corpus(300, tmp_path / "corpus", seed=5)["out"])
    cfg = s3_run(s3_bucket, "ingest-outage", corpus, tiny_model)
    first = ingest_corpus(cfg)
    assert "documents" in artifacts(cfg)

    # the storage goes away as the dedup pass writes documents/, and stays away
    outages = s3_server.outages
    s3_server.stop_on(lambda method, path: path.startswith(key_of(cfg, "documents", "part-")))
    try:
        with pytest.raises(StorageUnavailable) as failed:
            ingest_corpus(cfg)
        assert s3_server.outages == outages + 1 and s3_server.down
        message = failure_message("ingest", failed.value)
    finally:
        s3_server.start()
    assert message.startswith(f"ingest: storage at {s3_server.endpoint} stopped answering while ingest was making "
                              f"documents ({cfg.run_uri}/documents), after retries: AWS Error NETWORK_CONNECTION")
    assert "run the same command again when the storage answers" in message
    # the earlier, whole documents were being replaced: the manifest no longer calls any documents done
    assert "documents" not in artifacts(cfg)

    again = ingest_corpus(cfg)
    assert again.counts == first.counts and "documents" in artifacts(cfg)


def test_storage_outage_during_annotate_costs_a_retry_then_a_rerun_resumes(
        ray_local, s3_server, s3_bucket: str, tiny_model: Path, tmp_path: Path) -> None:
    corpus = Path(generate_corpus(240, tmp_path / "corpus", seed=6)["out"])
    cfg = s3_run(s3_bucket, "annotate-outage", corpus, tiny_model,
                 annotate={"batch_size": 8, "rows_per_file": 40})
    documents = ingest_corpus(cfg).totals["kept"]

    # 1. A short outage as the second annotation file is written: Ray Data's write retries ride it out.
    written: list[str] = []

    def second_file(method: str, path: str) -> bool:
        if path.startswith(key_of(cfg, "annotations")) and ".parquet" in path and path not in written:
            written.append(path)
        return len(written) >= 2

    outages = s3_server.outages
    s3_server.stop_on(second_file, restart_after_s=6)
    # 2. Then a long one as the finished annotations are recorded in the manifest: a clear error, nothing recorded.
    s3_server.stop_on(lambda method, path: path.startswith(key_of(cfg, "manifest.json")))
    try:
        with pytest.raises(StorageUnavailable, match=r"while annotate was making annotations .*rerun|run the same "):
            annotate_documents(cfg)
        assert s3_server.outages == outages + 2
    finally:
        s3_server.start()
    assert "annotations" not in artifacts(cfg)

    # every document was scored once, through the short outage; the rerun finds them all done
    result = annotate_documents(cfg)
    assert (result.documents, result.resumed_from, result.annotated_now) == (documents, documents, 0)
    fs, path = resolve(f"{cfg.run_uri}/annotations")
    ids = pq.read_table(path, filesystem=fs, columns=["doc_id"])["doc_id"].to_pylist()
    assert len(ids) == len(set(ids)) == documents
    assert artifacts(cfg)["annotations"]["counts"]["documents"] == documents


def test_storage_outage_during_training_then_a_rerun_resumes_from_its_checkpoint(
        ray_local, s3_server, s3_bucket: str, tiny_model: Path, tmp_path: Path) -> None:
    from test_train import TRAIN, write_labelled_pairs

    raw = {"run_id": "train-outage", "storage_root": f"s3://{s3_bucket}/outages",
           "tiny_model": {"out": str(tiny_model)},
           "synthesize": {"source": "released", "released": write_labelled_pairs(tmp_path), "eval_share": 0.2},
           "train": {**TRAIN, "max_steps": 8, "save_steps": 2, "max_failures": 1}}
    cfg = build_config(raw)
    synthesize_preferences(cfg)

    # The storage goes away as a checkpoint is saved after Ray Train recorded one (its controller writes the
    # snapshot of its checkpoints asynchronously: an outage before that would leave nothing to resume from).
    recorded: list[str] = []

    def saving_after_one_was_recorded(method: str, path: str) -> bool:
        # written whole: a PutObject, or the POST that completes a multipart upload
        if path.endswith("/checkpoint_manager_snapshot.json") and method == "PUT" or (
                method == "POST" and "/checkpoint_manager_snapshot.json?uploadId=" in path):
            recorded.append(path)
        return bool(recorded) and "/adapter_steps/step-" in path

    outages = s3_server.outages
    s3_server.stop_on(saving_after_one_was_recorded)
    try:
        with pytest.raises(StorageUnavailable) as failed:
            train_adapter(cfg, "left")
        assert s3_server.outages == outages + 1
        message = failure_message("train", failed.value)
    finally:
        s3_server.start()
    assert f"storage at {s3_server.endpoint} stopped answering while train was making adapter left " in message
    assert "resumes from the last checkpoint saved" in message
    assert not any(k.startswith("adapter:") for k in artifacts(cfg))

    result = train_adapter(cfg, "left")
    m = result.metrics
    assert m["resumed_from_step"] in (2, 4, 6) and m["global_step"] == 8  # from a checkpoint, not from 0
    assert "adapter:left" in artifacts(cfg)
