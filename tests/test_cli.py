"""The command line as a user meets it: help texts and config commands (the commands end to end: test_commands.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
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


def test_a_missing_source_path_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the local preset's sample corpus is generated here, not in the checkout
    result = runner.invoke(app, ["ingest", "--set", f"storage_root={tmp_path}", "--set", "corpus.n=10", "--set",
                                 f"sources.0.paths=[{tmp_path / 'nowhere'}]"])
    assert result.exit_code == 1
    assert "source 'truthsocial'" in result.output and "nowhere does not exist" in result.output
