"""What a stage needs before Ray starts: model references checked (naming the config field), the tiny model built,
the sample corpus generated. No Ray here.

The Hugging Face hub cannot be reached from this machine, so the hub answers are a fake hub on 127.0.0.1 that
answers the one route the check asks (`/api/models/<id>/auth-check`) as the hub does, with its error headers."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

from politune.config import load_preset
from politune.models.references import ModelReferenceError, check_hub_model, check_model_reference
from politune.stages import model_fields, pipeline_stages, prepare_stages


def local_cfg(tmp_path: Path, *overrides: str):
    return load_preset("local-random", [f"storage_root={tmp_path / 'runs'}", f"tiny_model.out={tmp_path / 'tiny'}",
                                 f"corpus.out={tmp_path / 'corpus'}", "corpus.n=60", *overrides])


def model_folder(root: Path, *files: str) -> Path:
    root.mkdir(parents=True)
    for name in files:
        (root / name).write_text("{}")
    return root


def test_a_missing_local_folder_names_the_field_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(ModelReferenceError, match=r"train\.base_model: .*/nowhere does not exist"):
        check_model_reference("train.base_model", str(tmp_path / "nowhere"))


@pytest.mark.parametrize(("files", "missing"), [
    (["tokenizer.json", "model.safetensors"], "config.json"),
    (["config.json", "model.safetensors"], "tokenizer"),
    (["config.json", "tokenizer_config.json"], "weights"),
])
def test_an_incomplete_folder_says_what_it_lacks(tmp_path: Path, files: list[str], missing: str) -> None:
    folder = model_folder(tmp_path / "model", *files)
    with pytest.raises(ModelReferenceError, match=rf"annotate\.model: .*not a complete model folder: it has no "
                       rf"{missing}"):
        check_model_reference("annotate.model", str(folder))


def test_a_complete_folder_resolves_to_its_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model_folder(tmp_path / "m", "config.json", "tokenizer.json", "model.safetensors")
    monkeypatch.chdir(tmp_path)
    assert check_model_reference("serve.base_model", "./m") == str(tmp_path / "m")


def test_urls_and_malformed_ids_are_refused() -> None:
    with pytest.raises(ModelReferenceError, match="local model folder or a Hugging Face model id"):
        check_model_reference("train.base_model", "s3://bucket/llama")
    with pytest.raises(ModelReferenceError, match="neither an existing local folder nor a Hugging Face model id"):
        check_model_reference("train.base_model", "not an id!")


@pytest.fixture
def hub_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    """An empty Hugging Face cache, no token, online; the check's remembered answers forgotten."""
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-token"))
    check_hub_model.cache_clear()
    yield monkeypatch
    check_hub_model.cache_clear()


def test_offline_without_the_model_in_the_cache_says_what_to_set(hub_env: pytest.MonkeyPatch) -> None:
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelReferenceError, match=r"train\.base_model: meta-llama/Meta-Llama-3-8B-Instruct .*"
                       r"HF_HUB_OFFLINE is set and the model is not in the local cache"):
        check_model_reference("train.base_model", "meta-llama/Meta-Llama-3-8B-Instruct")


def test_a_cached_hub_model_needs_no_hub(hub_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    repo = tmp_path / "hf-cache" / "models--org--cached-model"
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    assert check_model_reference("annotate.model", "org/cached-model") == "org/cached-model"


def test_an_unreachable_hub_says_what_to_set(hub_env: pytest.MonkeyPatch) -> None:
    hub_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with pytest.raises(ModelReferenceError, match=r"synthesize\.model: org/model .*cannot be reached.*local model "
                       r"folder.*HF_HUB_OFFLINE=1"):
        check_model_reference("synthesize.model", "org/model")


class FakeHub(http.server.BaseHTTPRequestHandler):
    """The hub's auth-check route: `gated/*` is gated (403 GatedRepo unless the token is `hf_granted`),
    `missing/*` does not exist (404 RepoNotFound), anything else is public."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        repo = self.path.removeprefix("/api/models/").removesuffix("/auth-check")
        token = self.headers.get("authorization", "")
        if repo.startswith("gated/") and token != "Bearer hf_granted":
            self._answer(403, "GatedRepo", "Access to this model is restricted.")
        elif repo.startswith("missing/"):
            self._answer(404, "RepoNotFound", "Repository not found")
        else:
            self._answer(200, None, None)

    def _answer(self, status: int, code: str | None, message: str | None) -> None:
        body = json.dumps({"error": message} if message else {}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message or "")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_hub(hub_env: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    hub_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    yield hub_env
    server.shutdown()


def test_fake_hub_gated_model_without_a_token_asks_for_hf_token(fake_hub: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelReferenceError, match=r"train\.base_model: gated/llama is a gated model and no token is "
                       r"set: .*set HF_TOKEN"):
        check_model_reference("train.base_model", "gated/llama")


def test_fake_hub_gated_model_with_a_token_without_access(fake_hub: pytest.MonkeyPatch) -> None:
    fake_hub.setenv("HF_TOKEN", "hf_not_granted_secret")
    with pytest.raises(ModelReferenceError, match="the token in HF_TOKEN has no access") as raised:
        check_model_reference("train.base_model", "gated/llama")
    assert "hf_not_granted_secret" not in str(raised.value)  # the token itself is never in a message


def test_fake_hub_grants_access_with_the_right_token(fake_hub: pytest.MonkeyPatch) -> None:
    fake_hub.setenv("HF_TOKEN", "hf_granted")
    assert check_model_reference("train.base_model", "gated/llama") == "gated/llama"
    assert check_model_reference("annotate.model", "public/model") == "public/model"


def test_fake_hub_unknown_model(fake_hub: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelReferenceError, match=r"annotate\.model: the hub \(.*\) has no model missing/model \(and "
                       r"there is no local folder missing/model\); if it is private, set HF_TOKEN"):
        check_model_reference("annotate.model", "missing/model")


def test_each_stage_checks_the_models_it_loads(tmp_path: Path) -> None:
    cfg = local_cfg(tmp_path, "annotate.model=org/annotator", "synthesize.model=org/writer", "train.base_model=org/b",
                    "serve.base_model=org/served")
    assert model_fields(cfg, "ingest") == model_fields(cfg, "select") == []
    assert model_fields(cfg, "annotate") == [("annotate.model", "org/annotator")]
    # the consistency check scores pairs with the annotator
    assert model_fields(cfg, "synthesize") == [("synthesize.model", "org/writer"), ("annotate.model", "org/annotator")]
    assert model_fields(cfg, "train") == [("train.base_model", "org/b")]
    assert model_fields(cfg, "serve") == model_fields(cfg, "evaluate") == [("serve.base_model", "org/served")]
    openai = local_cfg(tmp_path, "synthesize.engine=openai", "synthesize.openai_base_url=http://127.0.0.1:1/v1",
                       "synthesize.consistency_check=false", "evaluate.base_url=http://127.0.0.1:1/v1")
    assert model_fields(openai, "synthesize") == []  # the endpoint's model is the endpoint's business
    assert model_fields(openai, "evaluate") == []    # so is an external endpoint's
    released = local_cfg(tmp_path, "synthesize.source=released", "synthesize.released={left: [l.jsonl]}")
    assert model_fields(released, "synthesize") == []
    assert pipeline_stages(released) == ("synthesize", "train", "evaluate")
    assert pipeline_stages(cfg) == ("ingest", "annotate", "select", "synthesize", "train", "evaluate")


def test_a_bad_reference_fails_before_the_tiny_model_is_built(tmp_path: Path) -> None:
    cfg = local_cfg(tmp_path, f"train.base_model={tmp_path / 'missing'}")
    with pytest.raises(ModelReferenceError, match="train.base_model"):
        prepare_stages(cfg, "annotate", "train")
    assert not (tmp_path / "tiny").exists()


def test_prepare_builds_the_tiny_model_and_the_corpus_once(tmp_path: Path) -> None:
    cfg = local_cfg(tmp_path)
    first = prepare_stages(cfg, "ingest", "annotate")
    assert first.tiny_model_built and first.corpus_generated
    assert first.models == {"annotate.model": str(tmp_path / "tiny")}
    assert (tmp_path / "tiny" / "model.safetensors").is_file() and first.corpus["n"] == 60
    again = prepare_stages(cfg, "ingest", "annotate")
    assert not again.tiny_model_built and not again.corpus_generated
    assert prepare_stages(cfg, "select").tiny_model is None  # select loads no model
    stale = prepare_stages(local_cfg(tmp_path, "tiny_model.seed=1"), "train")  # another model: built anew
    assert stale.tiny_model_built


def test_the_tiny_model_named_relatively_or_absolutely_is_built_once(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Stages hand workers absolute paths (with_absolute_paths); the folder must not be rebuilt back and forth."""
    monkeypatch.chdir(tmp_path)
    relative = load_preset("local-random", [f"storage_root={tmp_path / 'runs'}", "tiny_model.out=models/tiny"])
    assert prepare_stages(relative, "train").tiny_model_built
    assert not prepare_stages(relative.with_absolute_paths(), "serve").tiny_model_built
    assert not prepare_stages(relative, "train").tiny_model_built
