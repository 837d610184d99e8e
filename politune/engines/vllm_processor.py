"""A ray.data.llm vLLM processor config from a stage's vLLM settings (config.VLLMFields).

One processor is a chain of Ray Data stages: chat template -> tokenize -> vLLM replicas -> detokenize.
A replica takes tensor_parallel_size x pipeline_parallel_size GPUs, all on one node (STRICT_PACK), and
`concurrency` replicas run side by side. `vllm_device: cpu` runs vLLM's CPU build instead (for tests).
A request vLLM refuses comes back as an error row (should_continue_on_error), in ERROR_COLUMN.
"""

from __future__ import annotations

import os
from typing import Any

from politune.config import VLLMFields

ERROR_COLUMN = "__inference_error__"  # set by ray.data.llm on a request that failed (should_continue_on_error)
# JSON without free whitespace: a weak model otherwise writes newlines after "{" until max_new_tokens
STRUCTURED_OUTPUTS = {"backend": "xgrammar", "disable_any_whitespace": True}


def vllm_processor_config(settings: VLLMFields, model_source: str, batch_size: int, concurrency: int, *,
                          structured_outputs: bool, detokenize: bool) -> Any:
    """vLLMEngineProcessorConfig for `model_source` with these settings."""
    from ray.data.llm import (
        ChatTemplateStageConfig,
        DetokenizeStageConfig,
        TokenizerStageConfig,
        vLLMEngineProcessorConfig,
    )

    s = settings
    engine_kwargs: dict[str, Any] = {
        "tensor_parallel_size": s.tensor_parallel_size, "pipeline_parallel_size": s.pipeline_parallel_size,
        "max_model_len": s.max_model_len, "enable_prefix_caching": s.enable_prefix_caching,
    }
    if structured_outputs:
        engine_kwargs["structured_outputs_config"] = STRUCTURED_OUTPUTS
    if s.vllm_device == "cpu":
        engine_kwargs["enforce_eager"] = True  # no graph capture: starts faster, and CPU gains little from it
        placement = {"bundles": [{"CPU": 1}], "strategy": "PACK"}
    else:
        gpus = s.tensor_parallel_size * s.pipeline_parallel_size
        placement = {"bundles": [{"GPU": 1, "CPU": 1}] * gpus, "strategy": "STRICT_PACK"}
    engine_kwargs.update(s.vllm_engine_kwargs)
    helper_cpus = s.vllm_stage_num_cpus
    return vLLMEngineProcessorConfig(
        model_source=model_source,
        engine_kwargs=engine_kwargs,
        batch_size=batch_size,
        concurrency=(concurrency, concurrency),  # a fixed number of replicas, not an autoscaling range
        placement_group_config=placement,
        runtime_env={"env_vars": {k: v for k, v in os.environ.items() if k.startswith("VLLM_")}},
        should_continue_on_error=True,
        chat_template_stage=ChatTemplateStageConfig(enabled=True, num_cpus=helper_cpus),
        tokenize_stage=TokenizerStageConfig(enabled=s.vllm_tokenize_stage, num_cpus=helper_cpus),
        detokenize_stage=DetokenizeStageConfig(enabled=detokenize, num_cpus=helper_cpus),
    )
