"""LoRA adapters with random weights, for serving tests and benchmarks: real PEFT adapters of a base model,
saved and registered where the train stage puts trained ones, that differ from the base (PEFT's default
initialisation would make them equal to it) but were never trained."""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from politune.registry import AdapterEntry, register
from politune.storage import join, resolve

TARGETS = ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"]


def register_random_adapters(run_uri: str, base_dir: str | Path, names: list[str], rank: int = 8,
                             base_model: str = "tiny", seed: int = 100) -> None:
    """Save one random adapter a name into `<run_uri>/adapters/<name>` (local or s3://) and register it."""
    for i, name in enumerate(names):
        torch.manual_seed(seed + i)
        base = AutoModelForCausalLM.from_pretrained(base_dir)
        model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank, init_lora_weights=False,
                                                target_modules=TARGETS))
        uri = join(run_uri, "adapters", name)
        fs, path = resolve(uri)
        fs.create_dir(path, recursive=True)
        with tempfile.TemporaryDirectory() as local:
            model.save_pretrained(local)
            for file in Path(local).iterdir():
                with fs.open_output_stream(f"{path}/{file.name}") as out:
                    out.write(file.read_bytes())
        register(run_uri, AdapterEntry(name=name, side=name.split("-")[0], method="dpo", base_model=base_model,
                                       path=uri, config_hash="random", metrics={"random_init": True}))
