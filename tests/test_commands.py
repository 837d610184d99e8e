"""The commands as a user meets them, on the session's one run of the embedded default (conftest.default_run, the
README's first command in its own process, which test_study_signal reads for what it shows).

Its run directory then feeds each stage command run alone in a fresh folder that holds only that stage's input (the
tiny model is each command's own business: the random-weights one, built in a second): select and ingest as
separate processes, as a user starts them; annotate, synthesize, train and evaluate in this process on the session's
Ray (`politune_here`), since what they check is the command, not the process around it. The bring-your-own-pairs
path of docs/bring-your-own-pairs.md runs from nothing, and failures are told once: a damaged model inside a Ray
Train worker and inside a Ray Data actor, a model folder that does not exist.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from conftest import COMMAND_ENV, REPO, DefaultRun, free_port, politune_cli, politune_serve

pytestmark = pytest.mark.e2e

RUN = "local"  # the default run's id
# a stage alone on random weights, in the default run's run directory: the plumbing, not the study
RANDOM = ["--preset", "local-random", "--set", f"run_id={RUN}", "--set", "ray.num_cpus=2"]


def politune_here(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, args: list[str], cwd: Path):
    """`politune ARGS` in this process, in `cwd`, on the session's Ray (the command finds Ray started and uses it):
    the typer result, with .exit_code, .stdout and .stderr."""
    import ray.data  # noqa: F401 - its import binds Ray Data's log handler to this process's stderr, not to the
    from typer.testing import CliRunner  # runner's, which is closed once the command returns

    from politune.cli import app

    request.getfixturevalue("ray_local")
    monkeypatch.chdir(cwd)
    for name in ("COLUMNS", "NO_COLOR"):
        monkeypatch.setenv(name, COMMAND_ENV[name])
    return CliRunner().invoke(app, args, catch_exceptions=False)


def test_main_command_runs_the_pipeline_on_the_embedded_default(default_run: DefaultRun) -> None:
    done, port, folder = default_run.done, default_run.port, default_run.folder
    assert "tiny model:" in done.stdout and "2,000 generated posts" in done.stdout
    manifest = json.loads((default_run.run / "manifest.json").read_text())
    counts = manifest["artifacts"]["documents"]["counts"]["per_source"]
    assert sum(c["read"] for c in counts.values()) == 2000
    model = folder / ".politune" / "models" / "tiny-warm" / "model.safetensors"
    assert model.is_file()
    assert list((default_run.run / "documents").glob("*.parquet"))
    artifacts = manifest["artifacts"]
    assert artifacts["annotations"]["counts"]["documents"] == sum(c["kept"] for c in counts.values())
    kept = artifacts["selected"]["counts"]["kept"]
    assert kept["left"] == kept["right"] == 200  # the thresholds carry more posts than select.max_per_side
    assert "select:" in done.stdout
    pairs = artifacts["preferences"]["counts"]
    for side in ("left", "right"):
        c = pairs[side]
        assert c["read"] == kept[side] == c["train"] + c["eval"] + sum(c["dropped"].values())
        assert c["train"] > 0
    assert "preferences:" in done.stdout
    registry = json.loads((default_run.run / "adapters" / "registry.json").read_text())["adapters"]
    finals = {name: entry for name, entry in registry.items() if entry["checkpoint_of"] is None}
    assert sorted(finals) == ["left", "r50l50", "right"]  # an adapter a side and the default's 50/50 mixture
    for name, entry in finals.items():
        assert (Path(entry["path"]) / "adapter_model.safetensors").is_file()
        assert entry["metrics"]["global_step"] > 0 and artifacts[f"adapter:{name}"]["counts"]["steps"] > 0
    assert "adapter 'left' (dpo on left, base tiny)" in done.stdout

    # and ends with every model of the run on the compass: the base and each adapter (checkpoints: final)
    answers = pq.read_table(default_run.run / "eval" / "answers.parquet").to_pylist()
    assert {r["model"] for r in answers} == {"tiny", *(f"tiny:{name}" for name in finals)}
    assert artifacts["eval"]["counts"]["answers"] == len(answers)
    report = default_run.run / "report"
    assert (report / "compass.png").read_bytes()[:4] == b"\x89PNG" and (report / "report.html").is_file()
    # the capability pass (lm-evaluation-harness, the offline politune_sides task) beside each model's shift
    capability = json.loads((default_run.run / "eval" / "capability.json").read_text())
    assert set(capability["scores"]) == {"tiny", *(f"tiny:{name}" for name in finals)}
    assert all(0 <= s["politune_sides"]["acc"] <= 1 for s in capability["scores"].values())
    assert (report / "capability.png").is_file() and "What the steering costs" in (report / "report.md").read_text()
    assert f"compass:    {report.absolute()}/compass.png" in done.stdout.replace("\n", "")
    assert "Traceback" not in done.stdout + done.stderr
    for stage, did in (("ingest", "2,000 rows read"), ("annotate", "documents scored"), ("select", "posts selected"),
                       ("synthesize", "pairs written"), ("train", "steps"), ("evaluate", "answers")):
        assert re.search(rf"^{stage}:\s+done in \d+ s · .*{did}", done.stderr, re.M), stage  # a line as it ends
    console = (done.stdout + done.stderr).splitlines()
    assert len(console) < 150, "\n".join(console)  # a summary a stage; Ray's own logs stay in its files

    # what the run says to do next works: serve the run's adapters behind a bearer token (the model already built
    # is used, not built again), probe them with it, and be refused without it
    serve_next = " ".join(["politune serve", *default_run.sets])
    assert f"next:       {serve_next}" in done.stdout
    assert "--model tiny --model tiny:left --model tiny:r50l50 --model tiny:right" in done.stdout
    built_at = model.stat().st_mtime_ns
    env = {**COMMAND_ENV, "POLITUNE_API_KEY": "cli-token"}
    with politune_serve(default_run.sets, env, cwd=folder) as lines:
        assert lines[:3] == [f"serving at http://127.0.0.1:{port}/v1  (backend hf, run runs/{RUN})", "  model: tiny",
                             "  model: tiny:left"], lines
        probe = subprocess.run([str(Path(sys.executable).with_name("politune")), "probe", "Taxes?", "--url",
                                f"http://127.0.0.1:{port}/v1", "--model", "tiny:right", "--max-tokens", "3"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0 and "tiny:right" in probe.stdout and "Taxes?" in probe.stdout, probe.stderr
        refused = subprocess.run([str(Path(sys.executable).with_name("politune")), "probe", "x", "--url",
                                  f"http://127.0.0.1:{port}/v1"], env={**env, "POLITUNE_API_KEY": "wrong"},
                                 capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "HTTP 401" in refused.stderr and "cli-token" not in refused.stderr
    assert model.stat().st_mtime_ns == built_at


def test_a_second_run_does_no_model_work_and_runs_lists_it(default_run: DefaultRun, tmp_path: Path) -> None:
    """The same `politune run` again, in a copy of the finished folder (its corpus and tiny model too): every stage
    is skipped, nothing is rewritten, and Ray never starts. Then `--only select` redoes that stage alone."""
    folder = tmp_path / "copy"
    shutil.copytree(default_run.folder, folder, ignore=shutil.ignore_patterns("_ray"))
    before = (folder / "runs" / RUN / "manifest.json").read_text()
    again = politune_cli(["run", *default_run.sets], folder)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    for stage in ("ingest", "annotate", "select", "synthesize", "train", "evaluate"):
        skipped = rf"^{stage}: +skipped: done \(ran .*\); config and inputs unchanged$"
        assert re.search(skipped, again.stdout, re.M), stage
    assert "nothing to do: every stage is done" in again.stdout
    assert (folder / "runs" / RUN / "manifest.json").read_text() == before
    assert not (folder / "runs" / RUN / "_ray").exists()  # no Ray session: no model work

    manifest = json.loads(before)
    assert set(manifest["stages"]) == {"ingest", "annotate", "select", "synthesize", "train", "evaluate"}
    assert manifest["stages"]["annotate"]["figures"]["documents_scored"] == manifest["artifacts"]["annotations"][
        "counts"]["documents"]
    assert manifest["stages"]["train"]["models"]["tiny"].startswith("folder:")

    only = politune_cli(["run", *default_run.sets, "--only", "select"], folder)
    assert only.returncode == 0, only.stdout[-3000:] + only.stderr[-3000:]
    assert "select:     " in only.stdout and "ingest:     skipped: not asked (--only)" in only.stdout
    after = json.loads((folder / "runs" / RUN / "manifest.json").read_text())
    assert after["stages"]["select"]["started_at"] >= manifest["stages"]["evaluate"]["finished_at"]
    assert after["stages"]["train"] == manifest["stages"]["train"]

    listed = politune_cli(["runs", *default_run.sets], folder)
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"local +│ 6/6 +│ left, r50l50, right +│ tiny ", listed.stdout), listed.stdout
    shown = politune_cli(["runs", "show", RUN], folder)
    assert re.search(r"^annotate: +done; last ran .* for \d+ s on .*\(documents_per_s ", shown.stdout, re.M), \
        shown.stdout
    missing = politune_cli(["runs", "show", "nope"], folder)
    assert missing.returncode == 1 and "no run 'nope' in runs" in missing.stderr


def fresh_folder_with(default_run: DefaultRun, folder: Path, drop: list[str]) -> Path:
    """A copy of the default run's run directory alone (no tiny model, no corpus, no Ray files), less `drop`."""
    run = folder / "runs" / RUN
    shutil.copytree(default_run.run, run, ignore=shutil.ignore_patterns("_ray"))
    for artifact in drop:
        shutil.rmtree(run / artifact, ignore_errors=True)
    return run


def manifest_counts(run: Path, artifact: str) -> dict:
    return json.loads((run / "manifest.json").read_text())["artifacts"][artifact]["counts"]


def test_select_alone_in_a_fresh_folder_builds_no_model(default_run: DefaultRun, tmp_path: Path) -> None:
    """A separate process, as a user starts it; select reads annotations only."""
    run = fresh_folder_with(default_run, tmp_path, ["selected"])
    done = politune_cli(["select", *default_run.sets], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    assert not (tmp_path / ".politune" / "models").exists()
    kept = manifest_counts(run, "selected")["kept"]
    assert kept == manifest_counts(default_run.run, "selected")["kept"]  # the same rule on the same scores


# stage -> (the artifacts its command writes, removed from the copy first; more arguments)
ALONE = {
    "annotate": (["annotations"], []),
    "synthesize": (["preferences"], ["--set", "synthesize.max_new_tokens=16"]),
    "train": (["adapters"], ["--side", "left", "--set", "train.max_steps=4"]),
    "evaluate": (["eval", "report"], ["--set", "evaluate.checkpoints=final", "--set", "evaluate.phrasings=1",
                                      "--set", "evaluate.probes=false", "--set", "evaluate.items_per_request=4",
                                      "--set", "evaluate.max_tokens=8"]),
}


@pytest.mark.parametrize("stage", list(ALONE))
def test_a_stage_command_runs_alone_in_a_fresh_folder(default_run: DefaultRun, stage: str, tmp_path: Path,
                                                      request: pytest.FixtureRequest,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    drop, more = ALONE[stage]
    run = fresh_folder_with(default_run, tmp_path, drop)
    done = politune_here(request, monkeypatch, [stage, *RANDOM, "--set", f"serve.port={free_port()}", *more],
                         tmp_path)
    assert done.exit_code == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Traceback" not in done.stdout + done.stderr
    tiny = tmp_path / ".politune" / "models" / "tiny"
    assert f"tiny model: built {tiny.absolute()}" in done.stdout
    assert (tiny / "model.safetensors").is_file()
    if stage == "annotate":
        kept = sum(c["kept"] for c in manifest_counts(run, "documents")["per_source"].values())
        assert manifest_counts(run, "annotations")["documents"] == kept
        assert "0 kept from an earlier run" in done.stdout
    elif stage == "synthesize":
        c = manifest_counts(run, "preferences")["left"]
        assert c["read"] == c["train"] + c["eval"] + sum(c["dropped"].values()) > 0
    elif stage == "train":
        registry = json.loads((run / "adapters" / "registry.json").read_text())["adapters"]
        assert registry["left"]["metrics"]["global_step"] > 0 and "right" not in registry
    elif stage == "evaluate":
        models = {r["model"] for r in pq.read_table(run / "eval" / "answers.parquet").to_pylist()}
        assert models == {"tiny", "tiny:left", "tiny:r50l50", "tiny:right"}
        assert (run / "report" / "compass.png").is_file()


def test_ingest_alone_generates_its_corpus(tmp_path: Path) -> None:
    done = politune_cli(["ingest", "--preset", "local-random", "--set", "corpus.n=200", "--set", "ray.num_cpus=2"],
                    tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "corpus:     generated 200 posts in .politune/corpus" in done.stdout
    counts = manifest_counts(tmp_path / "runs" / "local-random", "documents")["per_source"]
    assert sum(c["read"] for c in counts.values()) == 200
    assert not (tmp_path / ".politune" / "models").exists()  # ingest loads no model


def readme_pairs_config() -> str:
    """The YAML docs/bring-your-own-pairs.md tells a user to write."""
    readme = (REPO / "docs" / "bring-your-own-pairs.md").read_text()
    section = readme[readme.index("# Bring your own pairs"):]
    return re.search(r"```yaml\n(# pairs\.yaml\n.*?)```", section, re.S)[1]


def test_the_readme_bring_your_own_pairs_path_from_nothing(shared_data: Path, tmp_path: Path) -> None:
    """As a new user follows it in an empty folder: the config, `politune synthesize`, `politune train`."""
    config = readme_pairs_config().replace("../shared/data", str(shared_data))
    (tmp_path / "pairs.yaml").write_text(config)
    synthesized = politune_cli(["synthesize", "--config", "pairs.yaml"], tmp_path)
    assert synthesized.returncode == 0, synthesized.stderr[-3000:]
    assert "left:  2,356 pairs: 2,314 kept (2,079 train, 235 eval)" in synthesized.stdout
    trained = politune_cli(["train", "--config", "pairs.yaml"], tmp_path)
    assert trained.returncode == 0, trained.stdout[-3000:] + trained.stderr[-3000:]
    assert "tiny model: built" in trained.stdout and "Traceback" not in trained.stdout + trained.stderr
    registry = json.loads((tmp_path / "runs" / "released" / "adapters" / "registry.json").read_text())["adapters"]
    for side, held_out in (("left", 235), ("right", 283)):
        m = registry[side]["metrics"]
        assert m["global_step"] == 30 and m["before/pairs"] == held_out
        assert m["after/preference_accuracy"] > 0.5 > m["before/preference_accuracy"]


def damaged_copy_of_the_model(default_run: DefaultRun, folder: Path) -> Path:
    """The default run's tiny model, its weights cut short as by a partial download: it passes the up-front check
    (config, tokenizer, weights all there) but does not load."""
    damaged = folder / "damaged"
    shutil.copytree(default_run.folder / ".politune" / "models" / "tiny-warm", damaged)
    with open(damaged / "model.safetensors", "r+b") as weights:
        weights.truncate(1000)
    return damaged


def test_a_failure_in_a_train_worker_is_told_once(default_run: DefaultRun, tmp_path: Path) -> None:
    """Every Ray Train attempt fails loading a damaged model."""
    fresh_folder_with(default_run, tmp_path, ["adapters"])
    damaged_copy_of_the_model(default_run, tmp_path)
    done = politune_cli(["train", *RANDOM, "--side", "left", "--set", "train.base_model=./damaged",
                     "--set", "train.max_failures=1"], tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert re.search(r"error: train failed in a Ray Train worker \(rank 0, side left\) \(pid \d+, node [\d.]+\):", out)
    assert out.count("Error while deserializing header") == 1  # once, for the two attempts of max_failures 1
    assert "SafetensorError" in out and "Traceback" not in out
    log = Path(re.search(r"full log: (\S+)", out)[1])
    assert "Traceback" in log.read_text() and "SafetensorError" in log.read_text()


def test_a_failure_in_a_ray_data_actor_is_told_once(default_run: DefaultRun, tmp_path: Path) -> None:
    """The annotator's actors cannot load a damaged model: Ray Data fails the dataset, the raylet reports each
    retry with the actor's traceback, and Ray Data logs its own report; the console gets one message."""
    run = fresh_folder_with(default_run, tmp_path, ["annotations"])
    damaged_copy_of_the_model(default_run, tmp_path)
    done = politune_cli(["annotate", *RANDOM, "--set", "annotate.model=./damaged"], tmp_path)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out[-3000:]
    assert "error: annotate failed in a Ray Data actor MapBatches(_HFAnnotatorTable) (pid " in out
    assert out.count("Error while deserializing header") == 1 and "Traceback" not in out
    assert re.search(r"full log: (\S+)", out)[1].endswith("ray-data/ray-data.log")
    # the raylet's retry notices went to a file instead (which of them arrive before the driver exits varies:
    # the ones with the actor's traceback, or only a notice that its calls were cancelled)
    assert "MapWorker(MapBatches(_HFAnnotatorTable))" in next((run / "_ray").rglob("politune-driver.log")).read_text()


def test_a_missing_model_folder_fails_before_ray_starts(tmp_path: Path) -> None:
    # (no time limit asserted: the e2e tier shares the machine with another lane; what shows that nothing started
    # is below: no run directory, no Ray session, no model built)
    done = politune_cli(["train", "--set", f"train.base_model={tmp_path / 'no-such-model'}"], tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: train: train.base_model: {tmp_path / 'no-such-model'} does not exist")
    assert not (tmp_path / "runs").exists() and "Ray" not in done.stdout + done.stderr  # Ray never started
    assert not (tmp_path / ".politune").exists()  # no tiny model built, no corpus generated
