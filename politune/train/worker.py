"""What each Ray Train worker runs: TRL's DPOTrainer (or SFTTrainer) with a PEFT LoRA config.

- The model is the base; `peft_config` makes TRL wrap it, and with no `ref_model` the reference is the
  same base with the adapter disabled: one copy of the weights.
- Ray Train has already set up torch.distributed (gloo on CPU, NCCL on GPU); accelerate joins that
  process group and shards the batches. Every worker reads the whole split (data.py), so the data is
  sharded once. `use_cpu=True` on CPU matters: without it accelerate does not see the process group
  and every worker silently trains on everything alone.
- Checkpoints: when the trainer saves (every `save_steps`), rank 0 hands the HF checkpoint folder
  (adapter, optimizer, scheduler, trainer state, RNG) to `ray.train.report`; every rank reports, as
  Ray requires. After a failure, or when the same run is started again, `ray.train.get_checkpoint()`
  returns the latest one and training resumes from its step.
- Step adapters: at each save rank 0 also copies the checkpoint's adapter files (adapter_config.json,
  adapter_model.safetensors; no optimizer state) and the metrics logged so far to
  `<steps_uri>/step-<N>/`, a folder of the Ray Train run (stage.py). These are kept whatever
  keep_checkpoints says, and the stage registers each one as `<adapter>.step-<N>` after training.
- At the end rank 0 measures the held-out metrics, writes the adapter and its logs to the run
  directory, and reports the final metrics.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
import torch
import torch.distributed as dist
from ray.train import Checkpoint
from transformers import TrainerCallback

from politune.config import RunConfig, TrainConfig
from politune.engines.metrics import StageMetrics
from politune.failures import WorkerFailure
from politune.models import resolve_model
from politune.models.loading import load_causal_lm, resolve_dtype
from politune.storage import resolve
from politune.train.data import as_messages, mixture_rows, read_split
from politune.train.heldout import preference_metrics

HF_CHECKPOINT = "checkpoint"  # the HF checkpoint folder inside a Ray checkpoint
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")  # what a step adapter keeps of a checkpoint
STEP_METRICS = "metrics.json"  # beside a step adapter's files: the metrics logged up to that step
logger = logging.getLogger(__name__)


class ReportCheckpoints(TrainerCallback):
    """After each HF save: rank 0 publishes the checkpoint's adapter to `steps_uri` (when given) and reports the
    checkpoint folder to Ray Train; the others report metrics only. (Ray's RayTrainReportCallback copies from
    every rank with no barrier, and may copy a folder rank 0 is still writing.)"""

    def __init__(self, steps_uri: str | None = None) -> None:
        self.steps_uri = steps_uri

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if dist.is_initialized():
            dist.barrier()
        metrics = {k: v for log in state.log_history for k, v in log.items() if isinstance(v, (int, float))}
        metrics["step"] = state.global_step
        if ray.train.get_context().get_world_rank() == 0:
            hf_checkpoint = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            if self.steps_uri:  # before the report: a checkpoint Ray has recorded always has its step adapter
                publish_step_adapter(hf_checkpoint, metrics, self.steps_uri, state.global_step)
            with tempfile.TemporaryDirectory() as tmp:
                shutil.copytree(hf_checkpoint, os.path.join(tmp, HF_CHECKPOINT))
                ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))
        else:
            ray.train.report(metrics)


class StageProgress(TrainerCallback):
    """Rank 0's steps and latest loss on Ray's metrics endpoint (engines/metrics.py), tagged by run and stage; the
    loss and the step reached also by adapter (`loss:<adapter>`, `step:<adapter>`: the dashboard's training panels)."""

    def __init__(self, run_id: str, adapter: str) -> None:
        self.metrics = StageMetrics(run_id, "train")
        self.adapter = adapter

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if ray.train.get_context().get_world_rank() == 0:
            self.metrics.count("steps")
            self.metrics.set(f"step:{self.adapter}", state.global_step)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if ray.train.get_context().get_world_rank() == 0 and logs and "loss" in logs:
            self.metrics.set(f"loss:{self.adapter}", float(logs["loss"]))


def step_folder(steps_uri: str, step: int) -> str:
    return f"{steps_uri.rstrip('/')}/step-{step}"


def publish_step_adapter(hf_checkpoint: str, metrics: dict[str, Any], steps_uri: str, step: int) -> bool:
    """The adapter files of an HF checkpoint folder and `metrics` to `<steps_uri>/step-<step>/` (local or s3://).
    False, with a warning, when the checkpoint holds no PEFT adapter files (a sharded save)."""
    missing = [f for f in ADAPTER_FILES if not os.path.isfile(os.path.join(hf_checkpoint, f))]
    if missing:
        logger.warning("checkpoint %s has no %s: its step adapter is not published", hf_checkpoint, missing)
        return False
    fs, path = resolve(step_folder(steps_uri, step))
    fs.create_dir(path, recursive=True)
    local = pafs.LocalFileSystem()
    for file in ADAPTER_FILES:
        pafs.copy_files(os.path.join(hf_checkpoint, file), f"{path}/{file}", source_filesystem=local,
                        destination_filesystem=fs)
    with fs.open_output_stream(f"{path}/{STEP_METRICS}") as f:
        f.write(json.dumps(metrics, indent=2, sort_keys=True).encode())
    return True


def trainer_kwargs(t: TrainConfig, output_dir: str, dtype: torch.dtype) -> dict[str, Any]:
    """The train section as TRL config arguments (DPOConfig's, or SFTConfig's for method sft), for a base loaded in
    `dtype` (resolve_dtype): bfloat16 trains in bf16 mixed precision, float16 in fp16 on a GPU."""
    common: dict[str, Any] = dict(
        output_dir=output_dir, learning_rate=t.learning_rate, weight_decay=t.weight_decay,
        lr_scheduler_type=t.lr_scheduler_type, warmup_steps=t.warmup_steps,
        per_device_train_batch_size=t.per_device_batch_size, per_device_eval_batch_size=t.per_device_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps, num_train_epochs=t.num_epochs,
        max_steps=t.max_steps or -1, max_length=t.max_length, seed=t.seed,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16 and t.use_gpu, use_cpu=not t.use_gpu,
        gradient_checkpointing=t.gradient_checkpointing, logging_steps=t.logging_steps,
        eval_strategy="steps" if t.eval_steps else "no", eval_steps=t.eval_steps,
        save_strategy="steps", save_steps=t.save_steps, save_total_limit=1,  # Ray keeps keep_checkpoints
        # inside Ray Train's process group NCCL on GPUs (on CPU accelerate takes gloo by itself); outside one (plain
        # TRL, bench/train.py) naming a backend makes accelerate ask for a group that does not exist
        report_to=t.report_to or "none",
        ddp_backend="nccl" if t.use_gpu and torch.distributed.is_initialized() else None,
        ddp_find_unused_parameters=False, dataloader_num_workers=0,
    )
    if t.strategy == "fsdp":
        common.update(fsdp="full_shard auto_wrap", fsdp_config={"use_orig_params": True})
    elif t.strategy == "deepspeed_zero3":
        common["deepspeed"] = {"zero_optimization": {"stage": 3, "overlap_comm": True},
                               "bf16": {"enabled": "auto"}, "train_micro_batch_size_per_gpu": "auto",
                               "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    if t.method == "dpo":
        common.update(beta=t.beta, loss_type=t.loss_type, precompute_ref_log_probs=False)
    return common


def training_args(t: TrainConfig, output_dir: str, dtype: torch.dtype, liger: bool = False) -> Any:
    from trl import DPOConfig, SFTConfig

    kwargs = trainer_kwargs(t, output_dir, dtype)
    if liger:  # the layer kernels only: TRL's DPO computes its log-probabilities with its own chunked LM head
        kwargs.update(use_liger_kernel=True, liger_kernel_config={"fused_linear_cross_entropy": False})
    return (DPOConfig if t.method == "dpo" else SFTConfig)(**kwargs)


def gpu_kernels(t: TrainConfig) -> tuple[str, bool]:
    """(attention implementation, Liger's kernels on) for the train section, from its settings and what this worker
    has installed: auto picks flash_attention_2 and Liger on a GPU where their packages are, sdpa and no Liger
    elsewhere. Asking for either by name where its package is missing is an error that says what to install."""
    has = {name: importlib.util.find_spec(name) is not None for name in ("flash_attn", "liger_kernel")}
    if t.attn_implementation == "auto":
        attention = "flash_attention_2" if t.use_gpu and has["flash_attn"] else "sdpa"
    else:
        attention = t.attn_implementation
    if attention == "flash_attention_2" and not has["flash_attn"]:
        raise ValueError("train.attn_implementation: flash_attention_2 needs the flash-attn package on every "
                         "training worker (pip install flash-attn), or set it to sdpa or auto")
    liger = t.use_gpu and has["liger_kernel"] if t.liger_kernels == "auto" else bool(t.liger_kernels)
    if liger and not has["liger_kernel"]:
        raise ValueError("train.liger_kernels: true needs the liger-kernel package on every training worker "
                         "(pip install liger-kernel, or politune[gpu]), or set it to auto or false")
    return attention, liger


def lora_config(t: TrainConfig) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=t.lora.rank, lora_alpha=t.lora.alpha, lora_dropout=t.lora.dropout,
                      target_modules=list(t.lora.target_modules), task_type="CAUSAL_LM")


def build_trainer(cfg: RunConfig, side: str, output_dir: str, callbacks: list[Any],
                  model_path: str | None = None) -> tuple[Any, Any, dict[str, list]]:
    """(TRL trainer, tokenizer, held-out rows) for one side or mixture. The held-out rows are by the prefix their
    metrics take: "" for a side's eval split, "left/" and "right/" for a mixture's two."""
    from datasets import Dataset
    from trl import DPOTrainer, SFTTrainer

    t = cfg.train
    device = "cuda" if t.use_gpu else "cpu"  # the trainer moves the model there; loaded on CPU first
    dtype = resolve_dtype(cfg.dtype, device)
    attention, liger = gpu_kernels(t)
    model, tokenizer = load_causal_lm(model_path or resolve_model(t.base_model, cfg), dtype=dtype,
                                      attn_implementation=attention)
    mixture = t.mixture(side)
    if mixture is None:
        train_rows = read_split(cfg.run_uri, side, "train")
        held_out = {"": read_split(cfg.run_uri, side, "eval")}
    else:
        train_rows = mixture_rows(mixture, *(read_split(cfg.run_uri, s, "train") for s in ("left", "right")))
        held_out = {f"{s}/": read_split(cfg.run_uri, s, "eval") for s in ("left", "right")}
    eval_rows = [row for rows in held_out.values() for row in rows]
    if not train_rows:
        raise ValueError(f"{side}: the train split has no pairs")
    datasets = {split: Dataset.from_dict(as_messages(rows, t.method)) if rows else None
                for split, rows in (("train", train_rows), ("eval", eval_rows))}
    trainer_class = DPOTrainer if t.method == "dpo" else SFTTrainer
    trainer = trainer_class(model=model, args=training_args(t, output_dir, dtype, liger),
                            train_dataset=datasets["train"], eval_dataset=datasets["eval"] if t.eval_steps else None,
                            processing_class=tokenizer, peft_config=lora_config(t), callbacks=callbacks)
    return trainer, tokenizer, held_out


def train_loop(config: dict[str, Any]) -> None:
    """Ray Train's train_loop_per_worker: {cfg (RunConfig as JSON), side, adapter_uri, steps_uri (optional: where
    each checkpoint's adapter goes)}. A failure is raised as a WorkerFailure that says which rank on which node, since
    Ray Train hands the driver only the bare exception; the traceback stays in this worker's log."""
    rank = ray.train.get_context().get_world_rank()
    try:
        _train(config, rank)
    except Exception as err:
        raise WorkerFailure.from_here(err, f"Ray Train worker (rank {rank}, side {config['side']})") from err


def _train(config: dict[str, Any], rank: int) -> None:
    cfg, side, adapter_uri = RunConfig.model_validate(config["cfg"]), config["side"], config["adapter_uri"]
    t = cfg.train
    torch.set_num_threads(max(1, int(t.cpus_per_worker)))
    output_dir = tempfile.mkdtemp(prefix=f"politune-train-{side}-")
    callbacks = [ReportCheckpoints(config.get("steps_uri")), StageProgress(cfg.run_id, side)]
    trainer, tokenizer, held_out = build_trainer(cfg, side, output_dir, callbacks, config.get("model_path"))
    model = trainer.accelerator.unwrap_model(trainer.model).to(trainer.args.device)

    def measured(when: str, adapter: bool) -> dict[str, Any]:
        return {f"{when}/{prefix}{k}": v for prefix, rows in held_out.items()
                for k, v in preference_metrics(model, tokenizer, rows, t.beta, t.max_length, adapter=adapter).items()}

    before = measured("before", adapter=False) if rank == 0 else {}
    checkpoint = ray.train.get_checkpoint()
    resumed_from_step = 0
    if checkpoint:
        with checkpoint.as_directory() as folder:
            hf_checkpoint = os.path.join(folder, HF_CHECKPOINT)
            with open(os.path.join(hf_checkpoint, "trainer_state.json")) as f:
                resumed_from_step = json.load(f)["global_step"]
            output = trainer.train(resume_from_checkpoint=hf_checkpoint)
    else:
        output = trainer.train()
    metrics: dict[str, Any] = {"resumed_from_step": resumed_from_step, "global_step": trainer.state.global_step,
                               "train_runtime": output.metrics.get("train_runtime"), "worker_nodes": worker_nodes(),
                               "attn_implementation": model.config._attn_implementation,
                               "liger_kernels": trainer.args.use_liger_kernel}
    if rank == 0:
        model = trainer.accelerator.unwrap_model(trainer.model)
        metrics.update(before)
        metrics.update(measured("after", adapter=True))
        _write_adapter(model, trainer.state.log_history, metrics, adapter_uri, output_dir)
    ray.train.report(metrics)
    shutil.rmtree(output_dir, ignore_errors=True)


def worker_nodes() -> list[str]:
    """Every worker's Ray node id, in rank order."""
    node = ray.get_runtime_context().get_node_id()
    if not dist.is_initialized():
        return [node]
    nodes: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(nodes, node)
    return nodes


def _write_adapter(model: Any, log_history: list[dict[str, Any]], metrics: dict[str, Any], adapter_uri: str,
                   output_dir: str) -> None:
    """adapter_config.json + adapter_model.safetensors, the per-step log and the metrics, to the run directory."""
    local = os.path.join(output_dir, "final")
    model.save_pretrained(local)
    with open(os.path.join(local, "log_history.jsonl"), "w") as f:
        f.write("".join(json.dumps(entry) + "\n" for entry in log_history))
    with open(os.path.join(local, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=2, sort_keys=True)
    fs, path = resolve(adapter_uri)
    if fs.get_file_info(path).type == pafs.FileType.Directory:
        fs.delete_dir(path)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)

