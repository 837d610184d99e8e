from pathlib import Path

import pytest
import yaml

from politune.config import (
    PRESETS,
    ConfigError,
    RunConfig,
    apply_overrides,
    build_config,
    load_config,
    load_preset,
    load_preset_dict,
    resolve_config,
)


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_validates(name: str) -> None:
    cfg = load_preset(name)
    assert isinstance(cfg, RunConfig)
    assert cfg.sources


def test_gpu_presets_use_the_papers_models() -> None:
    llama, mistral = load_preset("llama3-8b"), load_preset("mistral-7b")
    for cfg in (llama, mistral):
        assert cfg.annotate.engine == "vllm"
        assert cfg.annotate.model == "meta-llama/Meta-Llama-3-70B-Instruct"
        assert cfg.annotate.tensor_parallel_size == 8
        assert cfg.train.use_gpu
    assert llama.train.base_model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert mistral.train.base_model == "mistralai/Mistral-7B-Instruct-v0.2"


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_error_names_file_field_value_and_expectation(tmp_path: Path) -> None:
    path = _write(tmp_path, {"base": "local", "ingest": {"max_text_chars": -5}})
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "ingest.max_text_chars" in msg
    assert "-5" in msg
    assert "greater than or equal to 1" in msg


def test_unknown_field_is_an_error_with_its_path(tmp_path: Path) -> None:
    path = _write(tmp_path, {"base": "local", "ingest": {"max_text_char": 10}})
    with pytest.raises(ConfigError, match=r"ingest\.max_text_char: unknown field"):
        load_config(path)


def test_bad_enum_lists_what_is_allowed(tmp_path: Path) -> None:
    data = load_preset_dict("local")
    data["sources"][0]["shape"] = "twitter"
    with pytest.raises(ConfigError) as err:
        load_config(_write(tmp_path, data))
    assert "sources.0.shape" in str(err.value) and "'truthsocial'" in str(err.value) and '"twitter"' in str(err.value)


def test_missing_required_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sources.0.name: required field is missing"):
        load_config(_write(tmp_path, {"run_id": "x", "sources": [{"paths": ["corpus"]}]}))


def test_ingest_without_sources_says_so(tmp_path: Path) -> None:
    from politune.ingest import ingest_corpus

    with pytest.raises(ValueError, match="ingest needs sources"):
        ingest_corpus(load_config(_write(tmp_path, {"run_id": "x", "storage_root": str(tmp_path)})))


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"run.yaml: line 3, column 1: not valid YAML: expected .,. or .\]."):
        load_config(_write(tmp_path, "run_id: x\nsources: [a, b\n"))


def test_empty_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(_write(tmp_path, ""))
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.yaml")


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError, match="unknown preset 'gpt5'; expected one of: local"):
        load_preset("gpt5")


def test_head_dim_must_suit_vllm_cpu_kernels() -> None:
    data = load_preset_dict("local")
    data["tiny_model"] = {"hidden_size": 64, "num_heads": 4}  # head_dim 16
    with pytest.raises(ConfigError, match="tiny_model: got .*head_dim|hidden_size / num_heads"):
        build_config(data)


def test_duplicate_source_names_rejected() -> None:
    data = load_preset_dict("local")
    data["sources"][1]["name"] = data["sources"][0]["name"]
    with pytest.raises(ConfigError, match="repeated: truthsocial"):
        build_config(data)


def test_base_preset_merges_and_lists_replace(tmp_path: Path) -> None:
    path = _write(tmp_path, {"base": "local", "run_id": "mine",
                             "sources": [{"name": "mine", "paths": ["x.jsonl"]}]})
    cfg = load_config(path)
    assert cfg.run_id == "mine"
    assert [s.name for s in cfg.sources] == ["mine"]
    assert cfg.corpus is not None and cfg.corpus.n == 2000  # inherited from the preset


def test_overrides() -> None:
    data = {"ingest": {"dedup": True}, "sources": [{"name": "a", "paths": ["x"]}]}
    out = apply_overrides(data, ["ingest.max_text_chars=500", "ray.dashboard=true", "sources.0.paths=[s3://b/y]"])
    assert out == {"ingest": {"dedup": True, "max_text_chars": 500}, "ray": {"dashboard": True},
                   "sources": [{"name": "a", "paths": ["s3://b/y"]}]}
    assert data["sources"][0]["paths"] == ["x"]  # the input is not changed
    cfg = resolve_config(None, None, ["ingest.max_text_chars=500", "corpus=null"])
    assert cfg.ingest.max_text_chars == 500 and cfg.corpus is None
    with pytest.raises(ConfigError, match="expected FIELD.PATH=VALUE"):
        apply_overrides({}, ["nonsense"])
    with pytest.raises(ConfigError, match="'5' is not an index of a list of 1"):
        apply_overrides(data, ["sources.5.name=b"])
    with pytest.raises(ConfigError, match="not both"):
        resolve_config("a.yaml", "local")


def test_hash_is_stable_and_sensitive() -> None:
    a, b = load_preset("local"), load_preset("local")
    assert a.hash() == b.hash()
    assert load_preset("local", ["ingest.dedup=false"]).hash() != a.hash()
    assert load_preset("local", ["train.num_workers=2"]).section_hash("sources", "ingest") == a.section_hash(
        "sources", "ingest")
