"""The train stage: one LoRA adapter a side (and one a train.mixtures entry), trained by Ray Train workers
(worker.py), then registered.

`preferences/<side>/{train,eval}.parquet` in; `adapters/<name>/` (adapter_config.json,
adapter_model.safetensors, log_history.jsonl, metrics.json) and its entry in `adapters/registry.json` out.

Checkpoints go to `adapters/_train/<name>-<identity>/` (local or s3://), the Ray Train run of that
adapter. The identity is a hash of the train section and of the pairs' synthesis, so starting the
same training again (after a kill, say) finds the run's checkpoints and resumes from the last one,
while a changed config or new pairs start a new run.

Every checkpoint is an adapter too: at each save rank 0 puts the checkpoint's adapter files in the run's
`adapter_steps/step-<N>/` (kept whatever keep_checkpoints says, so a resumed run has the steps saved before
the kill as well), and after training the stage publishes each to `adapters/<name>.step-<N>/` and registers it
as `<name>.step-<N>` (checkpoint_of=<name>, step=N). Step folders and entries of `<name>` that are not steps of
this run (an earlier training's) are removed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from politune.config import RunConfig
from politune.models import resolve_model
from politune.prepare import prepares
from politune.ray_runtime import init_ray
from politune.registry import (
    AdapterEntry,
    adapter_name,
    checkpoint_name,
    checkpoint_step,
    register,
    register_checkpoints,
)
from politune.storage import Manifest, delete_dir, exists, join, outages_named, read_json, resolve
from politune.train.data import mixture_rows, read_split
from politune.train.worker import ADAPTER_FILES, STEP_METRICS, step_folder, train_loop

MIXTURE = "mixture"  # the registry's side of a mixture's adapter (its shares say of what)


@dataclass
class TrainResult:
    adapter: AdapterEntry
    run_name: str
    metrics: dict[str, Any]
    checkpoints: list[str] = field(default_factory=list)  # registry names of its checkpoints, by step


def train_identity(cfg: RunConfig, manifest: Manifest) -> dict[str, tuple[str, dict[str, str]]]:
    """What each side's adapter (train.sides) and each mixture's is made of: (config hash, inputs)."""
    return {f"adapter:{adapter_name(name, cfg.train.method)}": _made_of(cfg, manifest) for name in trained(cfg)}


def trained(cfg: RunConfig) -> list[str]:
    """What `politune train` trains: the sides, then the mixtures, by name."""
    return [*cfg.train.sides, *(m.name for m in cfg.train.mixtures)]


def _made_of(cfg: RunConfig, manifest: Manifest) -> tuple[str, dict[str, str]]:
    return cfg.section_hash("train", "dtype"), {"preferences": manifest.fingerprint("preferences")}


def train_models(cfg: RunConfig) -> list[tuple[str, str]]:
    """The model train loads: (config field, reference)."""
    return [("train.base_model", cfg.train.base_model)]


@prepares(train_models)
def train_adapter(cfg: RunConfig, side: str) -> TrainResult:
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = cfg.with_absolute_paths()  # Ray Train workers run in a folder of their own
    t = cfg.train
    name = adapter_name(side, t.method)
    adapter_uri = join(cfg.run_uri, "adapters", name)
    with outages_named("train", f"adapter {name}", adapter_uri, "resumes from the last checkpoint saved"):
        # read here too so that missing pairs (or too few for a mixture) fail before Ray starts, naming the file
        mixture = t.mixture(side)
        if mixture is None:
            pairs = {split: len(read_split(cfg.run_uri, side, split)) for split in ("train", "eval")}
        else:
            splits = {(s, split): read_split(cfg.run_uri, s, split) for s in ("left", "right")
                      for split in ("train", "eval")}
            pairs = {"train": len(mixture_rows(mixture, splits[("left", "train")], splits[("right", "train")])),
                     "eval": len(splits[("left", "eval")]) + len(splits[("right", "eval")])}
        manifest = Manifest(cfg.run_uri)
        manifest.forget(f"adapter:{name}")  # recorded again once this training has finished
        run_name = train_run_name(cfg, side)
        steps_uri = train_steps_uri(cfg, run_name)
        storage_fs, storage_path = resolve(join(cfg.run_uri, "adapters", "_train"))
        storage_fs.create_dir(storage_path, recursive=True)

        init_ray(cfg)
        resources = {"CPU": t.cpus_per_worker, **({"GPU": t.gpus_per_worker} if t.use_gpu else {})}
        trainer = TorchTrainer(
            train_loop,
            train_loop_config={"cfg": cfg.model_dump(mode="json"), "side": side, "adapter_uri": adapter_uri,
                               "steps_uri": steps_uri, "model_path": resolve_model(t.base_model, cfg)},
            scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                                         placement_strategy=t.placement_strategy),
            torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
            run_config=RayRunConfig(name=run_name, storage_path=storage_path, storage_filesystem=storage_fs,
                                    checkpoint_config=CheckpointConfig(num_to_keep=t.keep_checkpoints),
                                    failure_config=FailureConfig(max_failures=t.max_failures)),
        )
        trainer.fit()
        metrics = read_json(join(adapter_uri, "metrics.json"))  # written by rank 0 beside the adapter
        entry = AdapterEntry(name=name, side=MIXTURE if mixture else side, method=t.method, base_model=t.base_model,
                             path=adapter_uri, config_hash=cfg.section_hash("train", "dtype"), metrics=metrics,
                             shares={"left": mixture.left, "right": mixture.right} if mixture else None)
        checkpoints = publish_checkpoints(cfg.run_uri, entry, steps_uri, metrics.get("global_step"))
        register_checkpoints(cfg.run_uri, name, checkpoints)  # and drops an earlier training's
        entry = register(cfg.run_uri, entry)
        remove_stale_checkpoints(cfg.run_uri, name, [c.step for c in checkpoints])  # once no entry points there
        config_hash, inputs = _made_of(cfg, manifest)
        manifest.record(f"adapter:{name}", path=adapter_uri, config_hash=config_hash, inputs=inputs,
                        models=[t.base_model],
                        counts={"train_pairs": pairs["train"], "eval_pairs": pairs["eval"],
                                "steps": metrics.get("global_step"), "checkpoints": len(checkpoints)})
        return TrainResult(entry, run_name, metrics, [c.name for c in checkpoints])


def train_steps_uri(cfg: RunConfig, run_name: str) -> str:
    """Where the workers put each checkpoint's adapter: a folder of the Ray Train run, so that a run with another
    identity never mixes in these steps, and a resumed one finds those saved before it was stopped."""
    return join(cfg.run_uri, "adapters", "_train", run_name, "adapter_steps")


def saved_steps(steps_uri: str) -> list[int]:
    """The steps whose adapter the workers published under `steps_uri` (both files there), in order."""
    fs, path = resolve(steps_uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return []
    steps = []
    for info in fs.get_file_info(pafs.FileSelector(path)):
        rest = info.base_name.removeprefix("step-")
        if info.type == pafs.FileType.Directory and info.base_name.startswith("step-") and rest.isdigit():
            files = [info.path + "/" + f for f in ADAPTER_FILES]
            if all(fi.type == pafs.FileType.File for fi in fs.get_file_info(files)):
                steps.append(int(rest))
    return sorted(steps)


def publish_checkpoints(run_uri: str, final: AdapterEntry, steps_uri: str,
                        global_step: int | None) -> list[AdapterEntry]:
    """Each step adapter of this training run to `adapters/<name>.step-<N>/` (adapter_config.json and
    adapter_model.safetensors only) and its entry, by step, for `register_checkpoints`. Steps past `global_step`
    (none, unless the folder was tampered with) are left out."""
    source_fs, source_path = resolve(steps_uri)
    entries = []
    for step in saved_steps(steps_uri):
        if global_step is not None and step > global_step:
            continue
        name = checkpoint_name(final.name, step)
        target = join(run_uri, "adapters", name)
        target_fs, target_path = resolve(target)
        target_fs.create_dir(target_path, recursive=True)
        for file in ADAPTER_FILES:
            pafs.copy_files(f"{step_folder(source_path, step)}/{file}", f"{target_path}/{file}",
                            source_filesystem=source_fs, destination_filesystem=target_fs)
        metrics_uri = join(step_folder(steps_uri, step), STEP_METRICS)
        entries.append(AdapterEntry(
            name=name, side=final.side, method=final.method, base_model=final.base_model, path=target,
            config_hash=final.config_hash, metrics=read_json(metrics_uri) if exists(metrics_uri) else {},
            checkpoint_of=final.name, step=step))
    return entries


def remove_stale_checkpoints(run_uri: str, adapter: str, steps: list[int]) -> list[str]:
    """Remove the `adapters/<adapter>.step-<N>/` folders whose N is not in `steps` (an earlier training's);
    their names."""
    adapters_uri = join(run_uri, "adapters")
    fs, path = resolve(adapters_uri)
    removed = []
    for info in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)):
        step = checkpoint_step(adapter, info.base_name)
        if info.type == pafs.FileType.Directory and step is not None and step not in steps:
            delete_dir(join(adapters_uri, info.base_name))
            removed.append(info.base_name)
    return sorted(removed)


def train_run_name(cfg: RunConfig, side: str) -> str:
    """The Ray Train run of this side's adapter: the same config and pairs give the same name, so a
    restarted training finds its checkpoints."""
    preferences = Manifest(cfg.run_uri).fingerprint("preferences")
    identity = hashlib.sha256(f"{cfg.section_hash('train', 'dtype')}:{preferences}:{side}".encode()).hexdigest()
    return f"{adapter_name(side, cfg.train.method)}-{identity[:12]}"


def train_adapters(cfg: RunConfig, sides: list[str] | None = None) -> dict[str, TrainResult]:
    """Every side or mixture in `sides` (default: train.sides, then train.mixtures), one after the other."""
    known = ["left", "right", *(m.name for m in cfg.train.mixtures)]
    unknown = [s for s in sides or [] if s not in known]
    if unknown:
        raise ValueError(f"unknown side(s) {unknown}: expected one of {', '.join(known)}")
    return {side: train_adapter(cfg, side) for side in sides or trained(cfg)}
