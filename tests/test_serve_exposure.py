"""Not open by accident: serving beyond this machine without a token is refused at start, before any model is
built or Ray started, unless the config allows it on purpose, and then the console says so (no Ray: fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from politune.config import load_preset
from politune.serve.app import Serving, exposure, serve_summary, start_serving

TOKEN_ENV = "POLITUNE_EXPOSURE_TEST_KEY"


def serve_config(tmp_path: Path, *overrides: str):
    return load_preset("local-random", [f"storage_root={tmp_path / 'runs'}", f"serve.api_key_env={TOKEN_ENV}",
                                        f"tiny_model.out={tmp_path / 'tiny'}", *overrides])


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "politune.example.org"])
def test_serving_beyond_loopback_without_a_token_is_refused_before_anything_starts(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    import ray

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    cfg = serve_config(tmp_path, f"serve.host={host}")
    with pytest.raises(ValueError, match=rf"serve.host={host} serves beyond this machine, and \${TOKEN_ENV} is "
                                         rf"unset or empty.*Set {TOKEN_ENV} to a token.*allow_unauthenticated"):
        start_serving(cfg)
    assert not ray.is_initialized() and not (tmp_path / "tiny").exists()  # no Ray, no model built
    monkeypatch.setenv(TOKEN_ENV, "")
    with pytest.raises(ValueError):
        exposure(cfg.serve)  # an empty token is no token


def test_loopback_or_a_token_or_an_explicit_allowance_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert exposure(serve_config(tmp_path, f"serve.host={host}").serve) is None
    allowed = exposure(serve_config(tmp_path, "serve.host=0.0.0.0", "serve.allow_unauthenticated=true").serve)
    assert allowed and "anyone who reaches it can use every model" in allowed
    summary = serve_summary(Serving("http://127.0.0.1:8000/v1", ["tiny"], "hf", "runs/x", allowed))
    assert summary[0] == f"WARNING: {allowed}"
    monkeypatch.setenv(TOKEN_ENV, "s3cret")
    assert exposure(serve_config(tmp_path, "serve.host=0.0.0.0").serve) is None
