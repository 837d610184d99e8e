"""Which stages `politune run` runs: a stage is skipped while the manifest records its artifacts as made with its
config section from today's inputs; a change to a section or to anything upstream reruns from there. No Ray here:
the manifest is written as each stage would record it (the stages' own identity functions), and the plan read back.
The real skip, in a second `politune run` on a finished run, is in test_commands.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from politune.config import build_config
from politune.pipeline import is_done, planned_stages
from politune.stages import pipeline_stages
from politune.stages import stage as stage_named
from politune.storage import Manifest

STAGES = ("ingest", "annotate", "select", "synthesize", "train", "evaluate")


def config(tmp_path: Path, **sections: dict) -> object:
    return build_config({"base": "local-random", "run_id": "r", "storage_root": str(tmp_path / "runs"), "corpus": None,
                         "sources": [{"name": "posts", "paths": [str(tmp_path / "posts.jsonl")]}], **sections})


def record_done(cfg, *stages: str) -> None:
    """Record each stage's artifacts in the manifest as that stage does once it has written them."""
    for stage in stages:
        manifest = Manifest(cfg.run_uri)
        for artifact, (config_hash, inputs) in stage_named(stage).identity(cfg, manifest).items():
            manifest.record(artifact, config_hash=config_hash, inputs=inputs, counts={}, path=artifact)


@pytest.fixture
def finished(tmp_path: Path):
    (tmp_path / "posts.jsonl").write_text('{"text": "a post"}\n')
    cfg = config(tmp_path)
    record_done(cfg, *STAGES)
    return cfg


def test_a_finished_run_has_nothing_to_do(finished) -> None:
    assert planned_stages(finished) == ()
    manifest = Manifest(finished.run_uri)
    assert all(is_done(finished, stage, manifest) for stage in STAGES)


def test_a_new_run_runs_every_stage(tmp_path: Path) -> None:
    assert planned_stages(config(tmp_path)) == STAGES  # its sources are not even there yet


def test_a_changed_section_reruns_from_its_stage(tmp_path: Path, finished) -> None:
    assert planned_stages(config(tmp_path, select={"method": "thresholds"})) == STAGES[2:]
    assert planned_stages(config(tmp_path, train={"beta": 0.2})) == ("train", "evaluate")
    assert planned_stages(config(tmp_path, serve={"base_model": "./other"})) == ("evaluate",)
    assert planned_stages(config(tmp_path, serve={"port": 8123})) == ()  # the port does not change an answer


def test_a_changed_corpus_reruns_everything(tmp_path: Path, finished) -> None:
    with open(tmp_path / "posts.jsonl", "a") as f:
        f.write('{"text": "one more"}\n')
    assert planned_stages(finished) == STAGES


def test_an_upstream_rerun_with_other_inputs_makes_downstream_stale(tmp_path: Path, finished) -> None:
    """Only ingest is redone (say, by a stage command); annotate and after now read other documents."""
    (tmp_path / "more.jsonl").write_text('{"text": "b"}\n')
    cfg = config(tmp_path, sources=[{"name": "posts", "paths": [str(tmp_path / "posts.jsonl"),
                                                                str(tmp_path / "more.jsonl")]}])
    record_done(cfg, "ingest")
    manifest = Manifest(cfg.run_uri)
    assert is_done(cfg, "ingest", manifest) and not is_done(cfg, "annotate", manifest)
    assert planned_stages(cfg) == STAGES[1:]


def test_a_half_written_stage_is_not_done(finished) -> None:
    """A stage forgets its artifact before rewriting it: stopped halfway, it is not done, nor is anything after."""
    Manifest(finished.run_uri).forget("selected")
    assert planned_stages(finished) == STAGES[2:]


def test_from_and_only(finished) -> None:
    assert planned_stages(finished, from_stage="train") == ("train", "evaluate")
    assert planned_stages(finished, only="annotate") == ("annotate",)
    with pytest.raises(ValueError, match="--from tokenize: not a stage of this run; its stages are ingest, "):
        planned_stages(finished, from_stage="tokenize")
    with pytest.raises(ValueError, match="not both"):
        planned_stages(finished, from_stage="train", only="train")


def test_a_run_of_released_pairs_starts_at_synthesize(tmp_path: Path) -> None:
    cfg = config(tmp_path, synthesize={"source": "released", "released": {"left": ["l.jsonl"], "right": ["r.jsonl"]}})
    assert pipeline_stages(cfg) == ("synthesize", "train", "evaluate")
    record_done(cfg, "synthesize", "train", "evaluate")
    assert planned_stages(cfg) == ()
    with pytest.raises(ValueError, match="--only ingest: not a stage of this run"):
        planned_stages(cfg, only="ingest")


def test_a_run_folder_copied_with_its_corpus_is_still_done(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Sources named relative to the working folder: the copy's files have other absolute paths, same contents."""
    import shutil

    first, copy = tmp_path / "first", tmp_path / "copy"
    (first / "corpus").mkdir(parents=True)
    (first / "corpus" / "posts.jsonl").write_text('{"text": "a post"}\n')
    monkeypatch.chdir(first)
    cfg = build_config({"base": "local-random", "run_id": "r", "storage_root": "runs", "corpus": None,
                        "sources": [{"name": "posts", "paths": ["corpus"]}]})
    record_done(cfg, *STAGES)
    shutil.copytree(first, copy)
    monkeypatch.chdir(copy)
    assert planned_stages(cfg) == ()


def test_a_stage_says_what_it_did_in_words() -> None:
    from politune.pipeline import figure_words
    from politune.stage_watch import describe

    assert figure_words({"documents_scored": 1200, "documents_per_s": 41.04, "adapters": ["left"],
                         "seconds_by_mode": {"compass": 3.0}}) == ["1,200 documents scored", "41.0 documents/s"]
    assert describe({"steps": 8, "rows_read": 3000}, {"loss:left": 0.69314}, 2.0) == \
        "3,000 rows read (1,500.0/s) · 8 steps (4.0/s) · loss:left 0.693"
    assert describe({}, {}, 1.0) == ""


def test_a_due_ingest_lists_the_sources_once_before_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The plan's check that ingest is due lists every source file (on S3, a request a page): the run does not
    check it again. Each stage here is a stand-in that records its artifacts as the real one would."""
    from types import SimpleNamespace

    from politune import pipeline
    from politune.ingest import stage as ingest_stage

    (tmp_path / "posts.jsonl").write_text('{"text": "a post"}\n')
    cfg = config(tmp_path)
    listed = []
    real_listing = ingest_stage.list_source_files
    monkeypatch.setattr(ingest_stage, "list_source_files", lambda source: listed.append(source.name)
                        or real_listing(source))
    monkeypatch.setattr(pipeline, "prepare_stages", lambda cfg, *stages: SimpleNamespace(tiny_model=None, corpus=None))
    monkeypatch.setattr(pipeline, "stage_figures", lambda stage, output, seconds: {})
    monkeypatch.setattr(pipeline, "model_revision", lambda ref, cfg: "stand-in")
    ran = []
    monkeypatch.setattr(pipeline, "build", lambda s, cfg: ran.append(s.name) or (record_done(cfg, s.name)
                                                                                 if s.identity else None))
    pipeline.run_pipeline(cfg)
    assert ran == [*STAGES, "report"]  # and the report after evaluate
    assert listed == ["posts", "posts"]  # the plan's check, then the stand-in recording (the real ingest's own)
    assert pipeline.run_pipeline(cfg).skipped.keys() == set(STAGES) and ran == [*STAGES, "report"]
