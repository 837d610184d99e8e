"""The command line as a user meets it: help texts, config commands, and the main job end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from conftest import free_port, politune_serve
from typer.testing import CliRunner

from politune.cli import app

runner = CliRunner()
COMMANDS = [[], ["run"], ["ingest"], ["annotate"], ["select"], ["synthesize"], ["train"], ["serve"], ["probe"],
            ["evaluate"], ["report"], ["config"],
            ["config", "show"], ["config", "check"], ["model"], ["model", "build-tiny"], ["corpus"],
            ["corpus", "generate"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "politune")
def test_every_command_says_what_it_does(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    lines = [line.strip() for line in result.output.splitlines() if line.strip()]
    summary = lines[1]  # after "Usage: ..."
    assert summary[0].isupper() and summary.endswith("."), summary


def test_config_show_prints_a_valid_resolved_config(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "show", "llama3-8b"])
    assert result.exit_code == 0
    shown = yaml.safe_load(result.output)
    assert shown["annotate"]["model"] == "meta-llama/Meta-Llama-3-70B-Instruct"
    path = tmp_path / "shown.yaml"
    path.write_text(result.output)
    assert runner.invoke(app, ["config", "check", str(path)]).exit_code == 0


def test_config_check_reports_the_problem(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("base: local\ningest:\n  dedup: maybe\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert "ingest.dedup" in result.output and '"maybe"' in result.output


def test_a_missing_source_path_is_a_clear_error(tmp_path: Path) -> None:
    result = runner.invoke(app, ["ingest", "--set", f"storage_root={tmp_path}", "--set",
                                 f"sources.0.paths=[{tmp_path / 'nowhere'}]"])
    assert result.exit_code == 1
    assert "source 'truthsocial'" in result.output and "nowhere does not exist" in result.output


def test_main_command_runs_the_pipeline_on_the_embedded_default(tmp_path: Path) -> None:
    """What the README's first command runs, in a fresh folder, as a separate process."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(COLUMNS="160", NO_COLOR="1")
    port = free_port()  # evaluate serves the run's models there
    sets = ["--set", "corpus.n=800", "--set", "ray.num_cpus=2", "--set", f"serve.port={port}"]
    done = subprocess.run([sys.executable, "-m", "politune.cli", "run", *sets], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tiny model:" in done.stdout and "800 generated posts" in done.stdout
    manifest = json.loads((tmp_path / "runs" / "local" / "manifest.json").read_text())
    counts = manifest["artifacts"]["documents"]["counts"]["per_source"]
    assert sum(c["read"] for c in counts.values()) == 800
    assert (tmp_path / ".politune" / "models" / "tiny" / "model.safetensors").is_file()
    assert list((tmp_path / "runs" / "local" / "documents").glob("*.parquet"))
    artifacts = manifest["artifacts"]
    assert artifacts["annotations"]["counts"]["documents"] == sum(c["kept"] for c in counts.values())
    kept = artifacts["selected"]["counts"]["kept"]
    assert kept["left"] == kept["right"] > 0  # the quantile rule carries posts through the tiny model
    assert "select:" in done.stdout
    pairs = artifacts["preferences"]["counts"]
    for side in ("left", "right"):
        c = pairs[side]
        assert c["read"] == kept[side] == c["train"] + c["eval"] + sum(c["dropped"].values())
        assert c["train"] > 0  # noise, but pairs reach training
    assert "preferences:" in done.stdout
    registry = json.loads((tmp_path / "runs" / "local" / "adapters" / "registry.json").read_text())["adapters"]
    finals = {name: entry for name, entry in registry.items() if entry["checkpoint_of"] is None}
    assert sorted(finals) == ["left", "right"]  # the main command trains an adapter a side
    for side, entry in finals.items():
        assert (Path(entry["path"]) / "adapter_model.safetensors").is_file()
        assert entry["metrics"]["global_step"] > 0 and artifacts[f"adapter:{side}"]["counts"]["steps"] > 0
    assert "adapter 'left' (dpo on left, base tiny)" in done.stdout

    # and ends with every model of the run on the compass: the base, both adapters, each saved checkpoint
    answers = pq.read_table(tmp_path / "runs" / "local" / "eval" / "answers.parquet").to_pylist()
    last = {name: entry["metrics"]["global_step"] for name, entry in finals.items()}
    steps = {name for name, entry in registry.items() if entry["checkpoint_of"] and entry["step"] != last[
        entry["checkpoint_of"]]}  # the last save is the final adapter itself, evaluated once
    assert {r["model"] for r in answers} == {"tiny", "tiny:left", "tiny:right", *(f"tiny:{name}" for name in steps)}
    assert artifacts["eval"]["counts"]["answers"] == len(answers)
    report = tmp_path / "runs" / "local" / "report"
    assert (report / "compass.png").read_bytes()[:4] == b"\x89PNG" and (report / "report.html").is_file()
    assert f"compass:    {report.absolute()}/compass.png" in done.stdout.replace("\n", "")

    # what the run says to do next works: serve its adapters, probe them
    assert f"next:       politune serve --set corpus.n=800 --set ray.num_cpus=2 --set serve.port={port}" in done.stdout
    assert "--model tiny --model tiny:left --model tiny:right" in done.stdout
    with politune_serve(sets[:4] + ["--set", f"serve.port={port}"], env, cwd=tmp_path) as lines:
        assert lines[1:3] == ["  model: tiny", "  model: tiny:left"], lines
        probe = subprocess.run([str(Path(sys.executable).with_name("politune")), "probe", "Taxes?", "--url",
                                f"http://127.0.0.1:{port}/v1", "--model", "tiny:right", "--max-tokens", "3"],
                               env=env, capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0 and "tiny:right" in probe.stdout, probe.stderr
