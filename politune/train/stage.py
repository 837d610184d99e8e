"""The train stage: one LoRA adapter a side, trained by Ray Train workers (worker.py), then registered.

`preferences/<side>/{train,eval}.parquet` in; `adapters/<name>/` (adapter_config.json,
adapter_model.safetensors, log_history.jsonl, metrics.json) and its entry in `adapters/registry.json` out.

Checkpoints go to `adapters/_train/<name>-<identity>/` (local or s3://), the Ray Train run of that
adapter. The identity is a hash of the train section and of the pairs' synthesis, so starting the
same training again (after a kill, say) finds the run's checkpoints and resumes from the last one,
while a changed config or new pairs start a new run.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from politune.config import RunConfig
from politune.ray_runtime import init_ray
from politune.registry import AdapterEntry, adapter_name, register
from politune.storage import Manifest, join, read_json, resolve
from politune.train.data import read_split
from politune.train.worker import train_loop


@dataclass
class TrainResult:
    adapter: AdapterEntry
    run_name: str
    metrics: dict[str, Any]


def train_adapter(cfg: RunConfig, side: str) -> TrainResult:
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = cfg.with_absolute_paths()  # Ray Train workers run in a folder of their own
    t = cfg.train
    name = adapter_name(side, t.method)
    # read here too so that missing pairs fail before Ray starts, naming the file
    pairs = {split: len(read_split(cfg.run_uri, side, split)) for split in ("train", "eval")}
    manifest = Manifest(cfg.run_uri)
    run_name = train_run_name(cfg, side)
    adapter_uri = join(cfg.run_uri, "adapters", name)
    storage_fs, storage_path = resolve(join(cfg.run_uri, "adapters", "_train"))
    storage_fs.create_dir(storage_path, recursive=True)

    init_ray(cfg)
    resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"cfg": cfg.model_dump(mode="json"), "side": side, "adapter_uri": adapter_uri},
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                                     placement_strategy=t.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        run_config=RayRunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                                checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                                failure_config=FailureConfig(max_failures=t.max_failures)),
    )
    trainer.fit()
    metrics = read_json(join(adapter_uri, "metrics.json"))  # written by rank 0 beside the adapter
    entry = register(cfg.run_uri, AdapterEntry(
        name=name, side=side, method=t.method, base_model=t.base_model, path=adapter_uri,
        config_hash=cfg.section_hash("train"), metrics=metrics))
    manifest.record(f"adapter:{name}", path=adapter_uri, config_hash=cfg.section_hash("train"),
                    inputs={"preferences": manifest.config_hash("preferences")}, models=[t.base_model],
                    counts={"train_pairs": pairs["train"], "eval_pairs": pairs["eval"],
                            "steps": metrics.get("global_step")})
    return TrainResult(entry, run_name, metrics)


def train_run_name(cfg: RunConfig, side: str) -> str:
    """The Ray Train run of this side's adapter: the same config and pairs give the same name, so a
    restarted training finds its checkpoints."""
    preferences = Manifest(cfg.run_uri).config_hash("preferences")
    identity = hashlib.sha256(f"{cfg.section_hash('train')}:{preferences}:{side}".encode()).hexdigest()
    return f"{adapter_name(side, cfg.train.method)}-{identity[:12]}"


def train_adapters(cfg: RunConfig, sides: list[str] | None = None) -> dict[str, TrainResult]:
    """Every side in `sides` (default: train.sides), one after the other."""
    unknown = [s for s in sides or [] if s not in ("left", "right")]
    if unknown:
        raise ValueError(f"unknown side(s) {unknown}: expected left or right")
    return {side: train_adapter(cfg, side) for side in sides or cfg.train.sides}
