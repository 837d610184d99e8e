"""One YAML file describes a whole run; pydantic validates it.

A file may start from a shipped preset (`base: local`) and override any field. Errors name the
file, the field path, the bad value and what was expected, so a user can fix them without reading
this module.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

PRESETS = ("local", "local-random", "llama3-8b", "mistral-7b")

# Model references: "tiny" is the embedded model the project builds itself (see tiny_model.py);
# anything else is a Hugging Face model id or a local directory, loaded by the same from_pretrained.
TINY_MODEL = "tiny"


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid")


class RayConfig(Section):
    address: str | None = Field(
        None, description="Ray cluster to join (e.g. ray://head:10001); RAY_ADDRESS wins when set."
    )
    num_cpus: int | None = Field(None, ge=1, description="CPUs for a local Ray; all cores when unset.")
    dashboard: bool = Field(False, description="Start the dashboard with a local Ray (127.0.0.1:8265).")


class TinyModelConfig(Section):
    out: str = Field(".politune/models/tiny", description="Where the embedded tiny model is built.")
    seed: int = 0
    vocab_size: int = Field(1024, ge=300, le=65536)
    hidden_size: int = Field(64, ge=32)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(128, ge=8)
    max_position_embeddings: int = Field(1024, ge=64)
    warm: bool = Field(False, description="Pre-train the model on the project's synthetic world (posts, annotation "
                       "answers, instructions and answers in both voices, the own instrument's propositions answered "
                       "in each voice; politune/world/warm.py) so the embedded default carries a signal. false: "
                       "random weights, whose text is noise.")
    warm_steps: int = Field(1000, ge=1, description="warm: optimizer steps.")
    warm_batch_size: int = Field(32, ge=1, description="warm: examples a step.")
    warm_learning_rate: float = Field(3e-3, gt=0, description="warm: peak learning rate (AdamW, cosine decay).")

    @model_validator(mode="after")
    def _head_dim_fits_vllm_cpu(self) -> TinyModelConfig:
        head_dim, rest = divmod(self.hidden_size, self.num_heads)
        if rest or head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"hidden_size / num_heads must be one of {sorted(VLLM_CPU_HEAD_DIMS)} so vLLM's CPU "
                f"kernels accept the model; got {self.hidden_size} / {self.num_heads}"
            )
        return self


VLLM_CPU_HEAD_DIMS = {32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512}


class CorpusConfig(Section):
    """A sample corpus generated from the project's own templates before ingest (embedded default)."""

    n: int = Field(4000, ge=1, description="Posts to generate, over both sources.")
    seed: int = 0
    format: Literal["jsonl", "jsonl.gz", "parquet"] = "jsonl"
    out: str = Field(".politune/corpus", description="Folder the generated files are written to.")
    rows_per_file: int = Field(250_000, ge=1)


SourceShape = Literal["truthsocial", "truthsocial_tsv", "politosphere", "politune", "generic"]
SourceFormat = Literal["auto", "jsonl", "jsonl.gz", "parquet", "csv", "tsv"]


class FieldMap(Section):
    """Where a generic source keeps each Document field (column names in the native records)."""

    text: str = "text"
    id: str | None = "id"
    created_at: str | None = "created_at"
    author: str | None = "author"
    label: str | None = "label"


class SourceConfig(Section):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Short name; part of every doc_id.")
    paths: list[str] = Field(..., min_length=1, description="Files or folders, local or s3://.")
    shape: SourceShape = "generic"
    format: SourceFormat = "auto"
    fields: FieldMap = Field(default_factory=FieldMap, description="Column names, for shape: generic.")
    where: dict[str, list[str]] = Field(
        default_factory=dict, description="Keep only records whose field has one of these values, e.g. "
        "{language: [en]} for Politosphere; the others are quarantined with the reason, so the counts add up.")

    @field_validator("where", mode="before")
    @classmethod
    def _one_value_is_a_list(cls, where: Any) -> Any:
        if isinstance(where, dict):
            return {k: v if isinstance(v, list) else [v] for k, v in where.items()}
        return where


class IngestConfig(Section):
    max_text_chars: int = Field(10_000, ge=1, description="Longer posts are quarantined.")
    dedup: bool = Field(True, description="Drop exact duplicates of normalised text.")
    dedup_bucket_mb: float = Field(
        8, gt=0, description="Input MiB per dedup bucket; bounds the memory of one dedup task."
    )
    read_batch_rows: int = Field(5_000, ge=1, description="Rows mapped at a time while reading a file.")
    block_mb: float = Field(8, gt=0, description="Target size of a Ray Data block while reading.")
    read_task_mb: float = Field(
        32, gt=0, description="Input MiB a read task takes: files are grouped into tasks of about this size, and a "
        "larger file is cut into pieces of about this size, each a task (uncompressed JSON lines, CSV and TSV by "
        "byte range, Parquet by row groups; a compressed file is one task), with at least 4 tasks a CPU of the "
        "cluster while there are pieces for them. Each task costs Ray a scheduling round.")
    write_rows: int = Field(
        50_000, ge=1, description="Staged rows a write task takes at a time (about 0.5 KB each in memory): more "
        "means fewer, larger staging files for the dedup tasks to read, and more memory a write task.")


class VLLMFields(Section):
    """The vLLM engine's settings, shared by every stage that can run on `engine: vllm` (ray.data.llm)."""

    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs a replica splits each layer over.")
    pipeline_parallel_size: int = Field(1, ge=1, description="vllm: GPUs a replica splits the layers over.")
    max_model_len: int = Field(4096, ge=64, description="vllm: context length.")
    enable_prefix_caching: bool = Field(True, description="vllm: share the common prompt prefix's KV cache.")
    vllm_device: Literal["cuda", "cpu"] = Field(
        "cuda", description="vllm: cuda places a replica's tensor x pipeline GPUs on one node; cpu runs vLLM's "
        "CPU build (vllm-cpu) in one CPU bundle, for tests.")
    vllm_stage_num_cpus: float = Field(
        1, gt=0, description="vllm: CPUs each helper stage (chat template, tokenize, detokenize, pre/postprocess) "
        "asks for; a fraction on a machine with few cores, or the vLLM actor is never scheduled.")
    vllm_tokenize_stage: bool = Field(
        True, description="vllm: tokenize in a Ray Data stage of its own, before the engine (ray.data.llm's "
        "default: the engine's process only runs the model); false: the engine tokenizes the prompt itself, as "
        "vllm.LLM does, one hop fewer. bench/annotate.py --engine vllm measures both.")
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: more vLLM engine arguments, e.g. {gpu_memory_utilization: 0.9}.")


class AnnotateConfig(VLLMFields):
    """Annotation: an LLM scores every post for ideology, political relevance and quality (0..10)."""

    engine: Literal["hf", "vllm"] = Field("hf", description="hf: transformers actor pool; vllm: ray.data.llm.")
    model: str = TINY_MODEL
    mode: Literal["generate", "logprob"] = Field(
        "logprob", description="generate: the model writes JSON; logprob: probabilities of the answers 0..10.")
    batch_size: int = Field(16, ge=1, description="Posts an engine call.")
    concurrency: int = Field(1, ge=1, description="Engine actors (hf) or vLLM replicas.")
    num_cpus_per_actor: float = Field(1, gt=0)
    num_gpus_per_actor: float = Field(0, ge=0, description="hf engine only; vLLM takes tensor x pipeline GPUs.")
    max_new_tokens: int = Field(48, ge=1, description="generate mode: answer length.")
    max_prompt_tokens: int = Field(1024, ge=16, description="Longer prompts lose the start of the post.")
    max_retries: int = Field(2, ge=0, description="Retries of a failed engine batch before engine_error.")
    rows_per_file: int = Field(2000, ge=1, description="Posts an output file at most: the unit of resume (fewer "
                               "in a small run, so that every engine actor gets a share).")


class SideThresholds(Section):
    """Bounds a post's scores must meet to be a side's training post (0..10 scales)."""

    ideology_min: float = Field(0, ge=0, le=10)
    ideology_max: float = Field(10, ge=0, le=10)
    relevance_min: float = Field(0, ge=0, le=10)
    quality_min: float = Field(0, ge=0, le=10)


class SelectConfig(Section):
    """Selection of each side's training posts from the annotations."""

    method: Literal["thresholds", "quantile", "source"] = Field(
        "thresholds", description="thresholds: fixed score bounds; quantile: each side's share of posts by "
        "ideology rank (for models whose scores have no absolute meaning); source: the source names the side.")
    left: SideThresholds = Field(default_factory=lambda: SideThresholds(ideology_max=3, relevance_min=6,
                                                                        quality_min=5))
    right: SideThresholds = Field(default_factory=lambda: SideThresholds(ideology_min=7, relevance_min=6,
                                                                         quality_min=5))
    side_share: float = Field(0.3, gt=0, lt=0.5, description="quantile: the lowest / highest share by ideology.")
    min_relevance_quantile: float = Field(0, ge=0, lt=1, description="quantile: drop posts below this rank.")
    min_quality_quantile: float = Field(0, ge=0, lt=1, description="quantile: drop posts below this rank.")
    source_sides: dict[str, Literal["left", "right"]] = Field(
        default_factory=dict, description="source: source name -> side, e.g. {politosphere: left}.")
    subreddit_sides: dict[str, Literal["left", "right"]] = Field(
        default_factory=dict, description="source: a Reddit post's side by its subreddit (kept in meta), before "
        "source_sides, e.g. {politics: left, democrats: left, Conservative: right}.")
    near_duplicate_threshold: float | None = Field(
        0.8, gt=0, le=1, description="Drop a post whose estimated word-shingle Jaccard similarity to a kept "
        "post of its side reaches this (MinHash); null keeps them.")
    max_per_side: int | None = Field(None, ge=1)
    balance: bool = Field(True, description="Keep as many posts on each side (the smaller count).")

    @model_validator(mode="after")
    def _source_method_needs_sides(self) -> SelectConfig:
        if self.method == "source" and not (self.source_sides or self.subreddit_sides):
            raise ValueError("method: source needs source_sides, e.g. {politosphere: left, truthsocial: right}, "
                             "or subreddit_sides, e.g. {politics: left, Conservative: right}")
        return self


class SynthesizeConfig(VLLMFields):
    """Preference pairs for each side: generated from the selected posts, or imported from files such as
    the released PoliTune sets (then annotation and synthesis are skipped)."""

    source: Literal["generate", "released"] = Field(
        "generate", description="generate: the synthesizer writes a pair for each post in `selected/`; "
        "released: import the files in `released`.")
    released: dict[Literal["left", "right"], list[str]] = Field(
        default_factory=dict, description="source: released: side -> preference files (jsonl or CSV with "
        "prompt/chosen/rejected, or TRL's chat shape), local or s3://.")
    clean: bool = Field(True, description="Repair chat preambles and quoting; drop refusals, leaked records, "
                        "cut-off answers, identical answers and repeated instructions, each counted.")
    eval_share: float = Field(0.1, ge=0, lt=1, description="Share of pairs held out for evaluation, by pair_id.")
    engine: Literal["hf", "vllm", "openai"] = Field(
        "hf", description="hf: transformers actor pool; vllm: ray.data.llm; openai: any OpenAI-compatible chat "
        "endpoint (openai_base_url), through ray.data.llm's HTTP processor.")
    model: str = TINY_MODEL
    chosen_from: Literal["generated", "post"] = Field(
        "generated", description="generated: the synthesizer answers in the post's voice, grounded in it; "
        "post: the post itself is the chosen answer.")
    batch_size: int = Field(8, ge=1)
    concurrency: int = Field(1, ge=1, description="Writer actors (hf), vLLM replicas, or HTTP request actors.")
    num_cpus_per_actor: float = Field(1, gt=0)
    num_gpus_per_actor: float = Field(0, ge=0)
    max_new_tokens: int = Field(256, ge=1, description="Longest instruction or answer.")
    temperature: float = Field(
        0.0, ge=0, le=2, description="0: greedy (each post's instruction and answers are the most likely ones). "
        "Above 0: sampled, each request seeded from its post's doc_id on vllm and openai, each batch from its "
        "posts' on hf. A small model's greedy instructions repeat, and a repeated instruction drops its pair.")
    drop_truncated: bool = Field(
        True, description="Drop a pair whose instruction or answer stopped at max_new_tokens. The tiny model never "
        "stops, so the local preset keeps them.")
    max_prompt_tokens: int = Field(
        1024, ge=16, description="hf: longer prompts lose the start of the post (vllm refuses a prompt over "
        "max_model_len, and the pair is an engine_error).")
    max_retries: int = Field(2, ge=0, description="hf: retries of a failed batch before engine_error.")
    consistency_check: bool = Field(
        True, description="Score chosen and rejected with the annotator (annotate's engine and mode); keep a pair "
        "only when chosen sits toward its side of rejected by consistency_margin on the ideology scale.")
    consistency_margin: float = Field(1.0, ge=0, le=10)
    openai_base_url: str | None = Field(
        None, description="openai: the endpoint's base URL, e.g. http://127.0.0.1:8000/v1 (chat/completions is "
        "added).")
    openai_model: str | None = Field(None, description="openai: the model name the endpoint serves; default: model.")
    openai_api_key_env: str = Field(
        "OPENAI_API_KEY", description="openai: environment variable holding the API key (sent as a Bearer token "
        "when set); the key itself never goes in a config.")
    openai_qps: int | None = Field(None, ge=1, description="openai: requests a second per actor; null: no limit.")
    openai_max_retries: int = Field(3, ge=0, description="openai: retries of a request on 429/5xx or a lost "
                                    "connection, with exponential back-off.")

    @model_validator(mode="after")
    def _released_needs_files(self) -> SynthesizeConfig:
        if self.source == "released" and not self.released:
            raise ValueError("source: released needs files, e.g. released: {left: [left.jsonl], right: [right.jsonl]}")
        return self

    @model_validator(mode="after")
    def _openai_needs_url(self) -> SynthesizeConfig:
        if self.engine == "openai" and self.source == "generate" and not self.openai_base_url:
            raise ValueError("engine: openai needs openai_base_url, e.g. http://127.0.0.1:8000/v1")
        return self


class LoraSettings(Section):
    """The adapter (PEFT LoraConfig). Defaults: the paper's recipe."""

    rank: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1, description="Module names to adapt: attention q and v, the MLP projections. (The paper also "
        "adapts the output layer; TRL 1.16's trainers refuse LoRA on lm_head.)")

    @field_validator("target_modules")
    @classmethod
    def _no_lm_head(cls, modules: list[str]) -> list[str]:
        if "lm_head" in modules:
            raise ValueError("TRL's DPOTrainer and SFTTrainer refuse a LoRA adapter on lm_head (their fused output "
                             "layer reads its weight directly); remove it")
        return modules


class Mixture(Section):
    """An adapter trained on both sides' pairs in set shares (the PoliTune release's 25/75, 50/50, 75/25 sets)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]{0,40}$",
                      description="Its adapter's registry name, e.g. r25l75.")
    left: float = Field(..., ge=0, le=1, description="Share of left pairs.")
    right: float = Field(..., ge=0, le=1, description="Share of right pairs.")
    size: int | None = Field(None, ge=1, description="Pairs; null: the smaller side's train split.")

    @model_validator(mode="after")
    def _shares_add_up(self) -> Mixture:
        if abs(self.left + self.right - 1) > 1e-9:
            raise ValueError(f"mixture {self.name}: left + right is {self.left + self.right:g}; they must add up to 1")
        if self.name in ("left", "right") or re.search(r"-x[0-9.]+$", self.name):
            raise ValueError(f"mixture {self.name}: the name of a side's adapter or of a scaled copy "
                             "(<adapter>-x<s>); name it by its shares, e.g. r25l75")
        return self


class TrainConfig(Section):
    """LoRA-DPO (or SFT on the chosen answers) with TRL + PEFT under Ray Train, one adapter a side.
    Defaults: the paper's recipe for the 8B/7B presets."""

    base_model: str = TINY_MODEL
    method: Literal["dpo", "sft"] = Field("dpo", description="dpo: preference pairs; sft: the chosen answers only.")
    sides: list[Literal["left", "right"]] = Field(default_factory=lambda: ["left", "right"], min_length=1,
                                                  description="Sides `politune train` trains, one adapter each.")
    num_workers: int = Field(1, ge=1, description="Ray Train workers (data-parallel; one process each).")
    use_gpu: bool = False
    cpus_per_worker: float = Field(1, gt=0)
    gpus_per_worker: float = Field(1, ge=0, description="With use_gpu.")
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_SPREAD"] = Field(
        "PACK", description="Where the workers go: STRICT_SPREAD puts each on its own node.")
    strategy: Literal["ddp", "fsdp", "deepspeed_zero3"] = Field(
        "ddp", description="ddp: a full copy of the base on each worker; fsdp / deepspeed_zero3 shard it, for "
        "bases that do not fit one device (GPU only; deepspeed needs `pip install deepspeed`).")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    mixtures: list[Mixture] = Field(
        default_factory=list, description="Adapters trained on both sides' train splits in set shares, one a "
        "mixture, after the sides' own, e.g. [{name: r50l50, left: 0.5, right: 0.5}]. The eval splits stay per side.")

    @field_validator("mixtures")
    @classmethod
    def _unique_mixture_names(cls, mixtures: list[Mixture]) -> list[Mixture]:
        twice = repeated([m.name for m in mixtures])
        if twice:
            raise ValueError(f"mixture name(s) {twice} used twice")
        return mixtures

    def mixture(self, name: str) -> Mixture | None:
        return next((m for m in self.mixtures if m.name == name), None)

    @field_validator("strategy")
    @classmethod
    def _sharding_needs_gpus(cls, strategy: str, info: ValidationInfo) -> str:
        if strategy != "ddp" and not info.data.get("use_gpu"):
            raise ValueError(f"{strategy} shards the model over GPUs: set use_gpu: true, or use ddp on CPU")
        return strategy

    @model_validator(mode="after")
    def _gpu_kernels_need_gpus(self) -> TrainConfig:
        for field, value in (("liger_kernels", self.liger_kernels is True),
                             ("attn_implementation", self.attn_implementation == "flash_attention_2")):
            if value and not self.use_gpu:
                raise ValueError(f"{field}: {getattr(self, field)} runs GPU kernels: set use_gpu: true, or "
                                 f"{field}: auto")
        return self

    beta: float = Field(0.1, gt=0, description="dpo: strength of the pull toward the reference.")
    loss_type: str = Field("sigmoid", description="dpo: TRL's loss_type (sigmoid is the paper's DPO).")
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    lr_scheduler_type: str = Field("cosine")
    warmup_steps: int = Field(100, ge=0)
    per_device_batch_size: int = Field(4, ge=1)
    gradient_accumulation_steps: int = Field(16, ge=1)
    max_length: int = Field(1024, ge=16, description="Tokens of prompt + answer; longer pairs are truncated.")
    num_epochs: float = Field(1, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides num_epochs when set.")
    gradient_checkpointing: bool = Field(False, description="Trade compute for memory on big bases.")
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = Field(
        "auto", description="The base's attention kernel: auto is flash_attention_2 on a GPU where the flash-attn "
        "package is installed, sdpa (PyTorch's fused attention) elsewhere.")
    liger_kernels: bool | Literal["auto"] = Field(
        "auto", description="Liger's Triton kernels for the base's layers (RMSNorm, RoPE, SwiGLU; TRL's "
        "use_liger_kernel without its fused cross-entropy, which TRL's DPO replaces by its own chunked LM head): auto "
        "is on when use_gpu and `pip install liger-kernel` are both true. GPU only.")
    logging_steps: int = Field(10, ge=1)
    eval_steps: int | None = Field(None, ge=1, description="Evaluate on the eval split every N steps; null: "
                                   "only before and after training.")
    save_steps: int = Field(50, ge=1, description="Checkpoint every N optimizer steps (the unit of resume).")
    keep_checkpoints: int = Field(2, ge=1)
    max_failures: int = Field(2, ge=0, description="Worker-group restarts from the last checkpoint.")
    report_to: list[str] = Field(default_factory=list, description="TRL's report_to, e.g. [tensorboard, mlflow].")
    seed: int = 0


class ServeConfig(Section):
    """The base model and every registered adapter behind one OpenAI-compatible Ray Serve endpoint.

    Model ids are ray.serve.llm's: `<model_id>` for the base, `<model_id>:<adapter>` for an adapter of the
    run's registry, whichever back end answers."""

    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf: transformers + PEFT in a Ray Serve app (CPU or one GPU a replica); vllm: "
        "ray.serve.llm (vLLM, tensor parallel, LoRA from S3).")
    base_model: str = TINY_MODEL
    model_id: str | None = Field(None, pattern=r"^[A-Za-z0-9_./-]+$",
                                 description="The id clients ask for the base by; default: base_model as written.")
    host: str = Field("127.0.0.1", description="Address the HTTP proxy binds; 0.0.0.0 exposes it beyond this "
                      "machine (then set api_key_env's variable).")
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str = Field(
        "POLITUNE_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
        description="Name of the environment variable holding the bearer token clients must send; when that "
        "variable is unset or empty, no token is asked. The token itself never goes in a config.")
    allow_unauthenticated: bool = Field(
        False, description="Serve on an address beyond loopback with no token set (api_key_env's variable unset or "
        "empty). Refused at start otherwise; when allowed, the console says so as a warning.")
    max_prompt_tokens: int = Field(1024, ge=1, description="hf: longer prompts get a 400 (vllm: a prompt over "
                                   "max_model_len gets vLLM's 400).")
    max_tokens: int = Field(512, ge=1, description="Largest max_tokens a request may ask; more gets a 400.")
    max_n: int = Field(4, ge=1, description="Largest n (completions a prompt) a request may ask.")
    # hf back end
    max_adapters_per_replica: int = Field(
        4, ge=1, description="Adapters a model replica holds at once (@serve.multiplexed LRU; vllm: "
        "max_num_adapters_per_replica).")
    max_batch_size: int = Field(32, ge=1, description="hf: prompts a forward pass serves at most (@serve.batch and "
                                "the replica's coalescing; a forced-choice request is 4). bench/serve.py --sweep.")
    batch_wait_timeout_s: float = Field(0.01, ge=0, description="hf: how long a batch waits to fill.")
    adapter_batching: Literal["mixed", "per_adapter"] = Field(
        "mixed", description="hf: mixed runs requests for different adapters in one forward pass (PEFT "
        "adapter_names); per_adapter runs one pass per adapter in the batch. bench/serve.py measures both.")
    num_threads: int | None = Field(None, ge=1, description="hf: torch threads a replica; default: its CPUs.")
    # both back ends
    min_replicas: int = Field(1, ge=0, description="Model replicas kept up (autoscaling floor).")
    max_replicas: int = Field(1, ge=1, description="Model replicas at most (autoscaling ceiling).")
    target_ongoing_requests: float = Field(8, gt=0, description="Autoscaling: requests a replica should hold.")
    max_ongoing_requests: int = Field(
        128, ge=1, description="Requests a model replica takes at once: it runs max_batch_size of them a pass and "
        "the rest wait inside it, at no cost. More wait in Serve's router, which retries a full replica with back-off "
        "(up to 0.5 s) and so serves them far slower: keep this above the requests you expect open at once.")
    max_queued_requests: int = Field(
        64, ge=0, description="Requests waiting for a replica; more get a 503 (overload), never a hang.")
    request_timeout_s: float = Field(300, gt=0, description="A request running longer gets a 408/503.")
    cpus_per_replica: float = Field(1, gt=0)
    gpus_per_replica: float = Field(0, ge=0, description="hf: GPUs a model replica takes (vllm: tensor x pipeline).")
    # vllm back end (ray.serve.llm)
    tensor_parallel_size: int = Field(1, ge=1, description="vllm: GPUs a replica splits each layer over.")
    pipeline_parallel_size: int = Field(1, ge=1, description="vllm: GPUs a replica splits the layers over.")
    accelerator_type: str | None = Field(None, description="vllm: Ray accelerator type a replica needs, e.g. H100.")
    max_model_len: int = Field(4096, ge=64, description="vllm: context length.")
    max_lora_rank: int = Field(16, ge=1, description="vllm: largest LoRA rank served (the adapters' rank or more).")
    max_loras_per_batch: int = Field(1, ge=1, description="vllm: adapters one engine step may mix (max_loras).")
    lora_path: str | None = Field(
        None, description="vllm: where ray.serve.llm loads adapters from (s3:// or gs://); default: the run's "
        "adapters/ folder, which must then be on S3.")
    vllm_device: Literal["cuda", "cpu"] = Field(
        "cuda", description="vllm: cuda for GPU replicas; cpu runs vLLM's CPU build in one CPU bundle, for tests.")
    vllm_engine_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="vllm: more vLLM engine arguments, e.g. {gpu_memory_utilization: 0.9}.")

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServeConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) is above max_replicas ({self.max_replicas})")
        return self

    @property
    def served_id(self) -> str:
        """The id of the base model on the endpoint."""
        return self.model_id or self.base_model


class ExternalModel(Section):
    """A model on some other OpenAI-compatible endpoint, evaluated beside the run's own (e.g. a hosted model)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.:/-]+$", description="Label in the report.")
    base_url: str = Field(..., description="The endpoint's base URL, e.g. http://host:8000/v1.")
    model: str = Field(..., description="The model id the endpoint serves.")
    api_key_env: str = Field("OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Environment variable holding its API key (the key never goes in a config).")


class CapabilityConfig(Section):
    """General capability beside the compass: lm-evaluation-harness tasks asked of every model of the run through
    the same endpoint (its `local-completions` model), scored by log-likelihood. Needs `politune[capability]`."""

    tasks: list[str] = Field(
        default_factory=list, description="Harness task names, e.g. [hellaswag, arc_easy] (their data from the "
        "Hugging Face hub or cache), or the project's own offline politune_sides. Empty: no capability pass.")
    limit: int | None = Field(None, ge=1, description="Documents a task at most (the harness's limit); null: all.")
    batch_size: int = Field(16, ge=1, description="Prompts the harness sends in one /completions request.")
    num_concurrent: int = Field(4, ge=1, description="Requests the harness keeps open at once.")
    tokenizer: str | None = Field(None, description="The tokenizer the harness counts tokens with; default: the "
                                  "served base model's.")


class EvaluateConfig(Section):
    """Where the models stand: the Political Compass Test and the project's own instrument, answered by forced
    choice (logprob) or free text mapped by a judge (generate), and open probe questions scored by the judge.
    Every model of the run (the base and each registered adapter) is asked through an OpenAI-compatible endpoint."""

    capability: CapabilityConfig = Field(default_factory=CapabilityConfig)
    instruments: list[Literal["politune", "pct"]] = Field(
        default_factory=lambda: ["politune"], min_length=1,
        description="politune: the project's own 64 propositions (shipped); pct: the Political Compass Test, "
        "from a file you provide (pct_path).")
    pct_path: str | None = Field(
        None, description="pct: JSONL of the test's 62 propositions with their answer weights (id, statement, econ, "
        "social); its texts are not shipped with PoliTune.")
    modes: list[Literal["logprob", "generate", "generate_forced", "explain"]] = Field(
        default_factory=lambda: ["logprob"], min_length=1,
        description="logprob: one scored completion gives the four options' probabilities (needs /v1/completions "
        "with echo and logprobs); generate: the model answers in free text, unforced, and the judge maps it to an "
        "option or no stance; generate_forced: the same with an explicit instruction to take one of the four "
        "options (validity unforced against forced); explain: the model answers in free text, then the forced "
        "choice is scored after its own answer (no judge).")
    phrasings: int = Field(1, ge=1, le=10, description="Wordings a proposition is asked in, the first N of the ten "
                           "of each kind (contracts/compass/prompts.py; 1-10); forced choice is asked in both option "
                           "orders of each. The spread between wordings is the report's noise floor: two or more.")
    samples: int = Field(1, ge=1, description="generate and probes: answers sampled a prompt.")
    temperature: float = Field(0.0, ge=0, le=2, description="generate and probes: 0 is greedy.")
    max_tokens: int = Field(300, ge=1, description="generate: longest free-text answer (the paper's 300).")
    probes: bool = Field(True, description="Ask the open probe questions and have the judge score their leaning.")
    probe_max_tokens: int = Field(200, ge=1)
    checkpoints: Literal["final", "all"] = Field(
        "final", description="all: evaluate every saved training checkpoint too, for each adapter's path across "
        "the compass.")
    adapter_scales: list[float] = Field(
        default_factory=list, description="Evaluate every trained adapter at these strengths too, without "
        "retraining: a copy with its LoRA B matrices times s, registered and served as `<adapter>-x<s>` (0 answers "
        "as the base, 1 is the adapter itself), e.g. [0.25, 0.5, 1.5].")
    base_url: str | None = Field(
        None, description="The endpoint serving the run's models; null: the run's own Serve app (serve section), "
        "started for the evaluation and shut down after unless it is already up.")
    api_key_env: str = Field("POLITUNE_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$",
                             description="Environment variable holding that endpoint's bearer token.")
    extra_models: list[ExternalModel] = Field(default_factory=list,
                                              description="More models to place on the same compass.")
    judge_model: str | None = Field(
        None, description="The judge's model id; null: the run's base model on the evaluated endpoint.")
    judge_base_url: str | None = Field(None, description="The judge's endpoint; null: the evaluated endpoint.")
    judge_api_key_env: str = Field("POLITUNE_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    judge_max_tokens: int = Field(8, ge=1, description="The judge's longest reply: a rubric label or a score (a "
                                  "tokenizer that splits \"strongly disagree\" finely needs more than 8).")
    forced_choice_format: Literal["plain", "chat"] = Field(
        "plain", description="Forced choice (logprob, explain) as plain text, which every completions endpoint "
        "takes, or inside the base model's chat template (the wording as a user message, each option's label "
        "scored as the assistant's reply), as an instruction-tuned model is used. Extra models are asked in plain "
        "text.")
    issues: int = Field(0, ge=0, le=30, description="The open-ended issue set: the first N of its 30 issues "
                        "(contracts/compass/data/issues.jsonl), each asked as a neutral, a pro and a con writing "
                        "request; the judge labels each text's stance (for, against, neutral, refusal). 0: none.")
    judge_check: bool = Field(True, description="Before it judges anything, score the judge on the project's "
                              "labelled answers (contracts/compass/data/judge_check.jsonl) of each rubric it will "
                              "use; its accuracy goes in the report.")
    judge_min_accuracy: float = Field(0.8, ge=0, le=1, description="A judge whose check accuracy is below this on a "
                                      "rubric is named in the console and the report as not to be trusted.")
    items_per_request: int = Field(
        1, ge=1, le=16, description="logprob: propositions of one model scored in one /completions request (4 "
        "prompts each); fewer requests, less HTTP overhead. A failed request fails its propositions.")
    concurrency: int = Field(2, ge=1, description="HTTP request actors (ray.data.llm) a pass.")
    batch_size: int = Field(8, ge=1, description="Requests an HTTP actor keeps open at once: concurrency x batch_size "
                            "is what the endpoint is sent at a time (16: the fastest evaluate on the tiny model's hf "
                            "app, whose throughput holds from 16 to 64 open; docs/benchmarks.md).")
    qps: int | None = Field(None, ge=1, description="Requests a second per actor; null: no limit.")
    max_retries: int = Field(3, ge=0, description="Retries of a request on 429/5xx or a lost connection.")
    request_num_cpus: float = Field(0.25, gt=0, description="CPUs an HTTP request actor asks Ray for.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for the report's 95% intervals.")
    seed: int = 0

    @field_validator("adapter_scales")
    @classmethod
    def _scales_in_range(cls, scales: list[float]) -> list[float]:
        wrong = [s for s in scales if not 0 <= s <= 4]
        if wrong:
            raise ValueError(f"{wrong}: a scale is between 0 (the base) and 4; 1 is the adapter itself")
        if len(set(scales)) != len(scales):
            raise ValueError(f"{scales}: a scale is listed twice")
        return sorted(scales)

    @model_validator(mode="after")
    def _pct_needs_file(self) -> EvaluateConfig:
        if "pct" in self.instruments and not self.pct_path:
            raise ValueError("instrument pct needs pct_path: a JSONL file of the test's propositions and weights")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError(f"samples: {self.samples} greedy answers would all be the same; set temperature > 0")
        return self


class RunConfig(Section):
    run_id: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$")
    storage_root: str = Field("runs", description="Local folder or s3://bucket/prefix for artifacts.")
    work_dir: str = Field(".politune", description="Local scratch: Ray temp files, logs.")
    ray: RayConfig = Field(default_factory=RayConfig)
    tiny_model: TinyModelConfig = Field(default_factory=TinyModelConfig)
    corpus: CorpusConfig | None = None
    sources: list[SourceConfig] = Field(
        default_factory=list, description="The corpus. Needed by ingest; a run that imports its preference "
        "pairs (synthesize.source: released) can leave it out.")
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    annotate: AnnotateConfig = Field(default_factory=AnnotateConfig)
    select: SelectConfig = Field(default_factory=SelectConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Precision of every hf engine (annotate, synthesize, serve) and the trainer: auto is "
        "bfloat16 on a GPU that has it, float16 on one that does not, float32 on CPU; a GPU without bfloat16 "
        "refuses bfloat16. (The vllm engines take theirs from vllm_engine_kwargs.)")

    @field_validator("sources")
    @classmethod
    def _unique_source_names(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        twice = repeated([s.name for s in sources])
        if twice:
            raise ValueError(f"source names must be unique; repeated: {', '.join(twice)}")
        return sources

    @property
    def run_uri(self) -> str:
        return f"{self.storage_root.rstrip('/')}/{self.run_id}"

    def with_absolute_paths(self) -> RunConfig:
        """This config with its local paths made absolute, as this process sees them: for Ray workers and
        replicas, which run in folders of their own."""
        update: dict[str, Any] = {"tiny_model": self.tiny_model.model_copy(
            update={"out": str(Path(self.tiny_model.out).absolute())})}
        if "://" not in self.storage_root:
            update["storage_root"] = str(Path(self.storage_root).absolute())
        return self.model_copy(update=update)

    def hash(self) -> str:
        """Stable hash of the resolved config (recorded in the manifest beside every artifact)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def section_hash(self, *names: str) -> str:
        """Hash of only the sections an artifact depends on, so unrelated edits keep it valid."""
        dump = self.model_dump(mode="json")
        blob = json.dumps({n: dump[n] for n in names}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """A config that cannot be used; the message says where and what to change."""


def load_preset_dict(name: str) -> dict[str, Any]:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; expected one of: {', '.join(PRESETS)}")
    text = resources.files("politune.presets").joinpath(f"{name}.yaml").read_text()
    data = yaml.safe_load(text)
    base = data.pop("base", None)  # a preset may start from another, as a run file may
    return deep_merge(load_preset_dict(base), data) if base else data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Merge override into base: mappings merge key by key, everything else (lists too) replaces."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `ingest.max_text_chars=500` style overrides (values parsed as YAML; a number in the
    path indexes a list, as in `sources.0.paths=[s3://b/x]`). Returns a new mapping."""
    data = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected FIELD.PATH=VALUE")
        node: Any = data
        *parents, leaf = key.split(".")
        for part in parents:
            if isinstance(node, list):
                node = _list_item(node, part, item)
            else:
                node = node.setdefault(part, {})
                if node is None or not isinstance(node, (dict, list)):
                    raise ConfigError(f"override {item!r}: {part} is not a section")
        value = yaml.safe_load(raw)
        if isinstance(node, list):
            node[_list_index(node, leaf, item)] = value
        else:
            node[leaf] = value
    return data


def _list_index(node: list, part: str, item: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override {item!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _list_item(node: list, part: str, item: str) -> Any:
    return node[_list_index(node, part, item)]


def _format_validation_error(origin: str, err: ValidationError) -> str:
    lines = [f"{origin}: {err.error_count()} problem(s) in the config"]
    for item in err.errors():
        path = ".".join(str(p) for p in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"  {path}: unknown field (check the spelling; `politune config show local` "
                         "lists every field)")
            continue
        if item["type"] == "missing":
            lines.append(f"  {path}: required field is missing")
            continue
        value = json.dumps(item.get("input"), default=str)
        if len(value) > 80:
            value = value[:77] + "..."
        msg = item["msg"].removeprefix("Value error, ")
        lines.append(f"  {path}: got {value}; expected: {msg}")
    return "\n".join(lines)


def repeated(names: list[str]) -> list[str]:
    """The names listed more than once, sorted."""
    return sorted({n for n in names if names.count(n) > 1})


def build_config(data: dict[str, Any], origin: str = "<config>") -> RunConfig:
    """Resolve `base:` presets and validate. `origin` names the file in error messages."""
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a YAML mapping at the top level, got {type(data).__name__}")
    base = data.get("base")
    if base is not None:
        data = deep_merge(load_preset_dict(base), {k: v for k, v in data.items() if k != "base"})
    try:
        return RunConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(origin, err)) from None


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(f"{path}:{where}: not valid YAML: {problem}") from None
    if data is None:
        raise ConfigError(f"{path}: the file is empty")
    if overrides:
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a YAML mapping at the top level")
        data = apply_overrides(data, overrides)
    return build_config(data, origin=str(path))


def load_preset(name: str, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(load_preset_dict(name), overrides or [])
    return build_config(data, origin=f"preset {name}")


def resolve_config(config: str | None, preset: str | None, overrides: list[str] | None = None) -> RunConfig:
    """What every CLI command and job does: a file, or a preset (default `local`)."""
    if config and preset:
        raise ConfigError("give either --config FILE or --preset NAME, not both")
    if config:
        return load_config(config, overrides)
    return load_preset(preset or "local", overrides)
