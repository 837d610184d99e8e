"""An adapter at partial strength, without retraining (evaluate.adapter_scales).

A LoRA layer adds B·A·(alpha/r) to its base weight, so a copy whose B matrices are multiplied by s adds exactly
s times the adapter's update: the adapter at strength s (0: the base itself; 1: the adapter). The copy is a plain
PEFT adapter in the run's `adapters/<adapter>-x<s>/`, registered under that name with `scale_of` and `scale` set,
so both Serve back ends (transformers + PEFT, vLLM's LoRA) serve it like any other adapter.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow.fs as pafs
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from politune.registry import AdapterEntry, load_registry, register_scaled, scaled_name
from politune.storage import join, resolve

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"
B_MATRICES = ("lora_B", "lora_embedding_B")  # PEFT's names for the matrices a LoRA update ends with


def scale_lora_weights(tensors: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """The adapter's tensors with every B matrix times `scale`; ValueError when there is none (not a LoRA)."""
    scaled = {key: t * scale if any(f".{b}." in key or key.endswith(f".{b}") for b in B_MATRICES) else t
              for key, t in tensors.items()}
    if all(scaled[key] is tensors[key] for key in tensors):
        raise ValueError("no LoRA B matrices (lora_B) among the adapter's tensors")
    return scaled


def check_scalable(config: dict, where: str) -> None:
    """Refuse what B times s would not scale exactly: another PEFT method, DoRA (its magnitude vector renormalises
    the update), modules saved whole beside the LoRA."""
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: a {config['peft_type']} adapter; only LoRA adapters can be scaled")
    if config.get("use_dora"):
        raise ValueError(f"{where}: a DoRA adapter; its update is not linear in B, so it cannot be scaled by B")
    if config.get("modules_to_save"):
        raise ValueError(f"{where}: saves modules whole ({config['modules_to_save']}); they cannot be scaled")


def write_scaled_adapter(source_uri: str, target_uri: str, scale: float) -> None:
    """The adapter at `source_uri` (local or s3://) at strength `scale`, written to `target_uri`."""
    source_fs, source_path = resolve(source_uri)
    target_fs, target_path = resolve(target_uri)
    with source_fs.open_input_stream(f"{source_path}/{CONFIG_FILE}") as f:
        config_bytes = f.read()
    check_scalable(json.loads(config_bytes), f"{source_uri}/{CONFIG_FILE}")
    with tempfile.TemporaryDirectory() as local:
        weights = Path(local) / WEIGHTS_FILE
        pafs.copy_files(f"{source_path}/{WEIGHTS_FILE}", str(weights), source_filesystem=source_fs,
                        destination_filesystem=pafs.LocalFileSystem())
        with safe_open(str(weights), framework="pt") as f:
            metadata = f.metadata()
            tensors = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        out = Path(local) / "scaled.safetensors"
        save_file(scale_lora_weights(tensors, scale), str(out), metadata=metadata)
        target_fs.create_dir(target_path, recursive=True)
        pafs.copy_files(str(out), f"{target_path}/{WEIGHTS_FILE}", source_filesystem=pafs.LocalFileSystem(),
                        destination_filesystem=target_fs)
    with target_fs.open_output_stream(f"{target_path}/{CONFIG_FILE}") as f:
        f.write(config_bytes)


def scaled_copy(run_uri: str, source: AdapterEntry, scale: float) -> AdapterEntry:
    """Write `source` at strength `scale` to the run's `adapters/<source>-x<scale>/`; its entry, not registered."""
    name = scaled_name(source.name, scale)
    path = join(run_uri, "adapters", name)
    write_scaled_adapter(source.path, path, scale)
    return AdapterEntry(name=name, side=source.side, method=source.method, base_model=source.base_model, path=path,
                        config_hash=source.config_hash, metrics={"source_registered_at": source.registered_at},
                        scale_of=source.name, scale=scale, shares=source.shares)


def register_scaled_adapters(run_uri: str, scales: list[float], base_model: str) -> list[AdapterEntry]:
    """A copy of every trained adapter of `base_model` in the run's registry (not its checkpoints, not other
    copies) at each scale but 1 (that is the adapter itself), written and registered; returns the entries.
    Written afresh each time, so a retrained adapter's copies are its own; copies of scales no longer asked go."""
    sources = [e for e in load_registry(run_uri).values()
               if e.checkpoint_of is None and e.scale_of is None and e.base_model == base_model]
    entries = [scaled_copy(run_uri, source, scale) for source in sorted(sources, key=lambda e: e.name)
               for scale in scales if scale != 1]
    return register_scaled(run_uri, entries)
