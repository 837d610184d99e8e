"""The `vllm` serve back end's ray.serve.llm LLMConfig, built from the serve section without vLLM (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest

from politune.config import load_preset
from politune.serve.llm_app import llm_config_kwargs

CREDENTIALS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "POLITUNE_API_KEY")


@pytest.mark.parametrize(("preset", "base"), [("llama3-8b", "meta-llama/Meta-Llama-3-8B-Instruct"),
                                              ("mistral-7b", "mistralai/Mistral-7B-Instruct-v0.2")])
def test_gpu_presets_serve_the_train_base_with_its_adapters_from_s3(preset: str, base: str) -> None:
    cfg = load_preset(preset)
    assert cfg.serve.backend == "vllm" and cfg.serve.base_model == cfg.train.base_model == base
    kwargs = llm_config_kwargs(cfg)
    assert kwargs["model_loading_config"] == {"model_id": base, "model_source": base}
    assert kwargs["lora_config"] == {"dynamic_lora_loading_path": f"s3://politune/runs/{preset}/adapters",
                                     "max_num_adapters_per_replica": 4}
    engine = kwargs["engine_kwargs"]
    assert engine == {"enable_lora": True, "max_lora_rank": 16, "max_loras": 4, "tensor_parallel_size": 1,
                      "pipeline_parallel_size": 1, "max_model_len": 8192}
    assert engine["max_lora_rank"] >= cfg.train.lora.rank  # every adapter the run trains can be served
    assert kwargs["accelerator_type"] is None
    assert kwargs["placement_group_config"] == {"bundle_per_worker": {"GPU": 1}, "strategy": "STRICT_PACK"}
    assert kwargs["deployment_config"] == {
        "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8},
        "max_ongoing_requests": 128, "max_queued_requests": 64}
    assert kwargs["runtime_env"] == {"env_vars": {}}
    assert "log_engine_metrics" not in kwargs  # GPU replicas export vLLM's metrics


def test_served_id_accelerator_tensor_parallel_and_engine_extras() -> None:
    cfg = load_preset("llama3-8b", ["serve.model_id=llama3", "serve.accelerator_type=H100",
                                    "serve.tensor_parallel_size=2", "serve.lora_path=gs://bucket/adapters/",
                                    "serve.vllm_engine_kwargs={gpu_memory_utilization: 0.85, max_loras: 2}"])
    kwargs = llm_config_kwargs(cfg)
    assert kwargs["model_loading_config"]["model_id"] == "llama3"
    assert kwargs["accelerator_type"] == "H100"
    assert kwargs["lora_config"]["dynamic_lora_loading_path"] == "gs://bucket/adapters"
    engine = kwargs["engine_kwargs"]
    assert engine["tensor_parallel_size"] == 2 and engine["gpu_memory_utilization"] == 0.85
    assert engine["max_loras"] == 2  # vllm_engine_kwargs has the last word


def test_a_local_run_without_lora_path_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_preset("local", ["serve.backend=vllm", f"storage_root={tmp_path}"])
    with pytest.raises(ValueError, match=r"reads only s3:// or gs://.*storage_root: s3://.*serve\.lora_path"):
        llm_config_kwargs(cfg)
    with pytest.raises(ValueError, match=r"serve\.lora_path is '/data/adapters'"):
        llm_config_kwargs(load_preset("local", ["serve.backend=vllm", "serve.lora_path=/data/adapters"]))
    # a local run can still serve adapters copied to S3
    cfg = load_preset("local", ["serve.backend=vllm", f"storage_root={tmp_path}", "serve.lora_path=s3://b/a"])
    assert llm_config_kwargs(cfg)["lora_config"]["dynamic_lora_loading_path"] == "s3://b/a"


def test_cpu_device_runs_vllms_cpu_build_in_one_cpu_bundle(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIALS:
        monkeypatch.setenv(name, "secret-value")
    monkeypatch.delenv("VLLM_CPU_KVCACHE_SPACE", raising=False)
    cfg = load_preset("local", ["serve.backend=vllm", "serve.vllm_device=cpu", "storage_root=s3://b/runs",
                                "serve.max_model_len=256", "tiny_model.out=/models/tiny"])
    kwargs = llm_config_kwargs(cfg)
    assert kwargs["model_loading_config"] == {"model_id": "tiny", "model_source": "/models/tiny"}
    assert kwargs["lora_config"]["dynamic_lora_loading_path"] == "s3://b/runs/local/adapters"
    assert kwargs["placement_group_config"] == {"bundles": [{"CPU": 1}]}
    assert kwargs["log_engine_metrics"] is False
    engine = kwargs["engine_kwargs"]
    assert (engine["dtype"], engine["enforce_eager"], engine["max_model_len"]) == ("float32", True, 256)
    assert engine["max_num_seqs"] == 1  # vLLM's CPU kernels mix up batches of base and LoRA requests
    # only the KV cache size goes to the replicas; credentials reach them from the node's environment
    assert kwargs["runtime_env"] == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "1"}}
    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "4")
    assert llm_config_kwargs(cfg)["runtime_env"] == {"env_vars": {"VLLM_CPU_KVCACHE_SPACE": "4"}}


def test_no_credential_ever_lands_in_the_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in CREDENTIALS:
        monkeypatch.setenv(name, "secret-value")
    for overrides in ([], ["serve.vllm_device=cpu"]):
        assert "secret-value" not in repr(llm_config_kwargs(load_preset("llama3-8b", overrides)))
