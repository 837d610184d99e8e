"""The command line as a user meets it: help texts and config commands (the commands end to end: test_commands.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from politune.cli import app

runner = CliRunner()
COMMANDS = [[], ["run"], ["ingest"], ["annotate"], ["select"], ["synthesize"], ["train"], ["serve"], ["probe"],
            ["evaluate"], ["report"], ["config"],
            ["config", "show"], ["config", "check"], ["model"], ["model", "build-tiny"], ["corpus"],
            ["corpus", "generate"], ["runs"], ["runs", "show"], ["plan"]]


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


def test_a_missing_source_path_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the local preset's sample corpus is generated here, not in the checkout
    result = runner.invoke(app, ["ingest", "--set", f"storage_root={tmp_path}", "--set", "corpus.n=10", "--set",
                                 f"sources.0.paths=[{tmp_path / 'nowhere'}]"])
    assert result.exit_code == 1
    assert "source 'truthsocial'" in result.output and "nowhere does not exist" in result.output


def test_build_tiny_takes_its_folder_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "run.yaml"
    config.write_text(f"base: local-random\nrun_id: x\ntiny_model:\n  out: {tmp_path / 'from-config'}\n")
    built = runner.invoke(app, ["model", "build-tiny", "--config", str(config)])
    assert built.exit_code == 0 and built.output.startswith(f"built {tmp_path / 'from-config'} (")
    assert (tmp_path / "from-config" / "model.safetensors").is_file()
    again = runner.invoke(app, ["model", "build-tiny", "--config", str(config)])
    assert again.output.startswith(f"up to date: {tmp_path / 'from-config'}")
    elsewhere = runner.invoke(app, ["model", "build-tiny", "--config", str(config), "--out", str(tmp_path / "o"),
                                    "--seed", "1"])
    assert elsewhere.output.startswith(f"built {tmp_path / 'o'} (")
    assert json.loads((tmp_path / "o" / "politune_tiny.json").read_text())["config"]["seed"] == 1
