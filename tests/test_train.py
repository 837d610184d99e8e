"""LoRA-DPO and SFT under Ray Train on a real local Ray with the tiny model.

The pairs here carry a signal a tiny model can learn: for the left adapter, chosen is a left-leaning
post of the sample corpus and rejected a right-leaning one (mirrored for the right), each answering a
question about politics. So held-out preference accuracy can rise, and does. (The pairs the main
command writes with the tiny model are noise; see docs/embedded-default.md.)"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from politune.config import ConfigError, build_config, load_preset
from politune.corpus.generate import labelled_pairs
from politune.registry import (
    AdapterEntry,
    checkpoint_name,
    checkpoints_of,
    final_adapters,
    get_adapter,
    load_registry,
    register,
    register_checkpoints,
)
from politune.serve.guard import ADAPTER_NAME, ModelCatalog
from politune.synthesize import synthesize_preferences
from politune.synthesize.formats import write_pairs
from politune.train import train_adapter, train_adapters
from politune.train.data import read_split
from politune.train.worker import trainer_kwargs

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]
TRAIN = {"lora": {"rank": 8, "alpha": 16}, "learning_rate": 0.005, "warmup_steps": 0, "per_device_batch_size": 8,
         "gradient_accumulation_steps": 1, "max_length": 96, "num_epochs": 2, "logging_steps": 2, "save_steps": 4}


def write_labelled_pairs(folder: Path, n: int = 120, seed: int = 5) -> dict[str, list[str]]:
    """Released-shape pair files from the sample corpus's templates: on-side post chosen, opposite post rejected."""
    files = {}
    for side, rows in labelled_pairs(n, seed).items():
        files[side] = [str(folder / f"{side}.jsonl")]
        write_pairs(rows, files[side][0])
    return files


def with_train(raw: dict, **train) -> dict:
    return {**raw, "train": {**raw["train"], **train}}


def saved_steps(global_step: int, save_steps: int) -> list[int]:
    """The steps the HF trainer saves at: every save_steps, and at the end of training."""
    return sorted({*range(save_steps, global_step + 1, save_steps), global_step})


def assert_checkpoints_registered(run_uri: str, name: str, save_steps: int) -> list[AdapterEntry]:
    """One registry entry per checkpoint the trainer saved, `<name>.step-<N>`, shaped like the final adapter's;
    nothing else claims to be a checkpoint of it."""
    registry = load_registry(run_uri)
    final = registry[name]
    assert (final.checkpoint_of, final.step) == (None, None)
    checkpoints = checkpoints_of(registry, name)
    assert [c.step for c in checkpoints] == saved_steps(final.metrics["global_step"], save_steps)
    claiming = {n for n, e in registry.items() if n.startswith(f"{name}.step-") or e.checkpoint_of == name}
    assert claiming == {c.name for c in checkpoints}
    for c in checkpoints:
        assert c.name == f"{name}.step-{c.step}" == checkpoint_name(name, c.step) and ADAPTER_NAME.match(c.name)
        assert c.checkpoint_of == name and c.path == f"{run_uri}/adapters/{c.name}"
        assert (c.side, c.method, c.base_model, c.config_hash) == (
            final.side, final.method, final.base_model, final.config_hash)
        assert c.metrics["step"] == c.step
    return checkpoints


def assert_checkpoint_folders(run_uri: str, checkpoints: list[AdapterEntry]) -> None:
    """Each checkpoint's folder holds its adapter and nothing else; no other step folder of that adapter."""
    adapters = Path(run_uri) / "adapters"
    for c in checkpoints:
        assert {p.name for p in Path(c.path).iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
        assert json.loads((Path(c.path) / "adapter_config.json").read_text())["r"] == 8
    name = checkpoints[0].checkpoint_of
    assert {p.name for p in adapters.glob(f"{name}.step-*")} == {c.name for c in checkpoints}


def test_dpo_raises_heldout_preference_accuracy_on_both_sides(pairs_run: dict) -> None:
    cfg = build_config(pairs_run)
    results = train_adapters(cfg)
    registry = load_registry(cfg.run_uri)
    assert sorted(final_adapters(registry)) == ["left", "right"]
    for side, result in results.items():
        m = result.adapter.metrics
        # before training the adapter is the reference: no pair has gained, accuracy 0; after: most have
        assert m["before/preference_accuracy"] == 0 == m["before/reward_margin"]
        assert m["after/preference_accuracy"] > 0.5 and m["after/reward_margin"] > 0, m
        entry = get_adapter(cfg.run_uri, side)
        assert (entry.side, entry.method, entry.base_model) == (side, "dpo", "tiny")
        assert entry.config_hash == cfg.section_hash("train", "dtype")  # the trainer's precision is part of it
        files = {p.name for p in Path(entry.path).iterdir()}
        assert {"adapter_config.json", "adapter_model.safetensors", "log_history.jsonl", "metrics.json"} <= files
        adapter_config = json.loads((Path(entry.path) / "adapter_config.json").read_text())
        assert adapter_config["r"] == 8 and set(adapter_config["target_modules"]) == {
            "q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"}
        steps = [json.loads(line) for line in (Path(entry.path) / "log_history.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps if "loss" in s] == list(range(2, m["global_step"] + 1, 2))  # every 2 steps
        train_pairs = len(read_split(cfg.run_uri, side, "train"))
        assert m["global_step"] == 2 * math.ceil(train_pairs / 8)  # 2 epochs of batch 8 on one worker

        # every checkpoint is a registered adapter, its metrics those logged up to its step
        checkpoints = assert_checkpoints_registered(cfg.run_uri, side, save_steps=4)
        assert result.checkpoints == [c.name for c in checkpoints] and len(checkpoints) >= 5
        assert_checkpoint_folders(cfg.run_uri, checkpoints)
        for c in checkpoints:
            logged = [s for s in steps if "loss" in s and s["step"] <= c.step]
            assert c.metrics["loss"] == logged[-1]["loss"] and c.metrics["epoch"] == logged[-1]["epoch"]
        assert_last_checkpoint_is_the_adapter(checkpoints, entry, pairs_run["tiny_model"]["out"])

    # served as any adapter: the catalog of the tiny base lists and resolves them
    catalog = ModelCatalog(cfg.run_uri, "tiny", "tiny")
    assert "tiny:left.step-4" in catalog.model_ids()
    assert catalog.resolve("tiny:right.step-8").adapter == registry["right.step-8"]


def assert_last_checkpoint_is_the_adapter(checkpoints: list[AdapterEntry], final: AdapterEntry, base: str) -> None:
    """PEFT loads a checkpoint onto the tiny base; the last one (the end of training) has the final weights, and
    the first differs from them."""
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    def weights(path: str) -> dict:
        return load_file(str(Path(path) / "adapter_model.safetensors"))

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), checkpoints[0].path)
    assert any("lora_A" in n for n, _ in model.named_parameters())
    last, first, end = weights(checkpoints[-1].path), weights(checkpoints[0].path), weights(final.path)
    assert last.keys() == end.keys() and all((last[k] == end[k]).all() for k in end)
    assert any(not (first[k] == end[k]).all() for k in end)


def test_two_workers_shard_the_data_once_and_learn_the_same(pairs_run: dict) -> None:
    cfg = build_config(with_train(pairs_run, num_workers=2))
    result = train_adapter(cfg, "left")
    m = result.adapter.metrics
    train_pairs = len(read_split(cfg.run_uri, "left", "train"))
    # each worker sees half the batches: twice sharded would halve the steps again
    assert m["global_step"] == 2 * math.ceil(train_pairs / (8 * 2))
    assert len(m["worker_nodes"]) == 2
    assert m["after/preference_accuracy"] > 0.5 and m["after/reward_margin"] > 0, m
    # a retraining replaces the earlier training's checkpoints of `left` (those past its last step too): only this
    # run's steps are registered and on disk
    checkpoints = assert_checkpoints_registered(cfg.run_uri, "left", save_steps=4)
    assert [c.step for c in checkpoints] == saved_steps(m["global_step"], 4)
    assert_checkpoint_folders(cfg.run_uri, checkpoints)


def test_sft_on_the_chosen_answers_registers_its_own_adapter(pairs_run: dict) -> None:
    cfg = build_config(with_train(pairs_run, method="sft", max_steps=6))
    result = train_adapter(cfg, "left")
    assert result.adapter.name == "left-sft" and result.adapter.method == "sft"
    m = result.adapter.metrics
    assert m["global_step"] == 6
    # SFT raises the chosen answers' likelihood more than the rejected ones'
    assert m["after/reward_margin"] > 0, m
    assert "left-sft" in load_registry(cfg.run_uri)
    checkpoints = assert_checkpoints_registered(cfg.run_uri, "left-sft", save_steps=4)
    assert result.checkpoints == ["left-sft.step-4", "left-sft.step-6"]  # and at the end, off the 4-step beat
    assert_checkpoint_folders(cfg.run_uri, checkpoints)


def test_training_on_s3_storage_checkpoints_and_registers_there(pairs_run: dict, s3_bucket: str) -> None:
    """The run directory on S3 (a moto server on 127.0.0.1): pairs read, checkpoints, adapter and registry
    written through it."""
    import boto3

    raw = {**with_train(pairs_run, max_steps=4, save_steps=2), "storage_root": f"s3://{s3_bucket}/runs"}
    synthesize_preferences(build_config(raw))
    result = train_adapter(build_config(raw), "left")
    assert result.adapter.path == f"s3://{s3_bucket}/runs/train/adapters/left"
    assert get_adapter(f"s3://{s3_bucket}/runs/train", "left").metrics["global_step"] == 4
    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket=s3_bucket, Prefix="runs/train/adapters/")[
        "Contents"]]
    assert "runs/train/adapters/left/adapter_model.safetensors" in keys
    assert any(k.startswith("runs/train/adapters/_train/left-") and k.endswith("/checkpoint/trainer_state.json")
               for k in keys)
    # its checkpoints too: published from the run's adapter_steps/, registered with their s3:// folders
    checkpoints = assert_checkpoints_registered(f"s3://{s3_bucket}/runs/train", "left", save_steps=2)
    assert result.checkpoints == ["left.step-2", "left.step-4"]
    assert sorted(k.removeprefix("runs/train/adapters/") for k in keys if k.startswith(
        "runs/train/adapters/left.step-") and not k.endswith("/")) == [  # "…/": pyarrow's folder markers
        f"{c.name}/{f}" for c in checkpoints for f in ("adapter_config.json", "adapter_model.safetensors")]
    assert any(k.startswith("runs/train/adapters/_train/left-") and k.endswith("/adapter_steps/step-2/"
                                                                               "adapter_model.safetensors")
               for k in keys)


def test_the_registry_tells_adapters_from_their_checkpoints(tmp_path: Path) -> None:
    """A registry.json written before checkpoints were registered still loads; checkpoints sort by step, not by
    name; registering an adapter's checkpoints replaces the earlier ones, and only those."""
    run = str(tmp_path / "run")
    (tmp_path / "run" / "adapters").mkdir(parents=True)
    (tmp_path / "run" / "adapters" / "registry.json").write_text(json.dumps({"adapters": {"left": {
        "name": "left", "side": "left", "method": "dpo", "base_model": "tiny", "path": f"{run}/adapters/left",
        "config_hash": "abc", "metrics": {}, "registered_at": "2025-01-01T00:00:00+00:00"}}}))
    assert get_adapter(run, "left").checkpoint_of is None and get_adapter(run, "left").step is None

    def step(adapter: str, n: int) -> AdapterEntry:
        return AdapterEntry(name=checkpoint_name(adapter, n), side="left", method="dpo", base_model="tiny",
                            path=f"{run}/adapters/{checkpoint_name(adapter, n)}", config_hash="abc",
                            checkpoint_of=adapter, step=n)

    register_checkpoints(run, "left", [step("left", n) for n in (4, 8, 12)])
    register_checkpoints(run, "left-sft", [step("left-sft", 2)])
    register_checkpoints(run, "left", [step("left", n) for n in (10, 5)])  # a retraining
    register(run, AdapterEntry(name="right", side="right", method="dpo", base_model="tiny", path="x",
                               config_hash="abc"))
    registry = load_registry(run)
    assert sorted(final_adapters(registry)) == ["left", "right"]
    assert [c.name for c in checkpoints_of(registry, "left")] == ["left.step-5", "left.step-10"]
    assert [c.step for c in checkpoints_of(registry, "left-sft")] == [2] and not checkpoints_of(registry, "right")
    with pytest.raises(ValueError, match="left.step-3"):
        register_checkpoints(run, "right", [step("left", 3)])


def recorded_checkpoints(run_folder: Path) -> list:
    """Checkpoints Ray Train has recorded for the run (its controller's snapshot, written after each one)."""
    snapshot = run_folder / "checkpoint_manager_snapshot.json"
    try:
        return json.loads(snapshot.read_text())["checkpoint_results"] if snapshot.exists() else []
    except (json.JSONDecodeError, KeyError):  # caught mid-write
        return []


def test_the_paper_recipe_is_the_gpu_presets_default() -> None:
    for preset in ("llama3-8b", "mistral-7b"):
        t = load_preset(preset).train
        args = trainer_kwargs(t, "/tmp/out", torch.bfloat16)  # what dtype auto gives on an H100
        assert (t.lora.rank, t.lora.alpha, t.beta, t.loss_type) == (16, 32, 0.1, "sigmoid")
        assert {k: args[k] for k in ("learning_rate", "weight_decay", "lr_scheduler_type", "warmup_steps",
                                     "per_device_train_batch_size", "gradient_accumulation_steps", "max_length",
                                     "bf16", "use_cpu", "ddp_backend")} == {
            "learning_rate": 5e-4, "weight_decay": 0.05, "lr_scheduler_type": "cosine", "warmup_steps": 100,
            "per_device_train_batch_size": 4, "gradient_accumulation_steps": 16, "max_length": 1024,
            "bf16": True, "use_cpu": False, "ddp_backend": None}  # no process group here: see below


def test_sharded_strategies_build_their_trainer_settings() -> None:
    fsdp = trainer_kwargs(load_preset("llama3-8b", ["train.strategy=fsdp"]).train, "/tmp/out", torch.bfloat16)
    assert fsdp["fsdp"] == "full_shard auto_wrap"
    zero3 = trainer_kwargs(load_preset("llama3-8b", ["train.strategy=deepspeed_zero3"]).train, "/tmp/out",
                           torch.bfloat16)
    assert zero3["deepspeed"]["zero_optimization"]["stage"] == 3


def test_config_errors_name_what_to_change() -> None:
    with pytest.raises(ConfigError, match="train.lora.target_modules: .*lm_head"):
        load_preset("local", ["train.lora.target_modules=[q_proj, lm_head]"])
    with pytest.raises(ConfigError, match="train.strategy: .*GPU"):
        load_preset("local", ["train.strategy=fsdp"])


def test_the_readmes_8b_training_config_builds(tmp_path: Path) -> None:
    import re

    from politune.config import load_config

    readme = (REPO / "docs" / "cluster.md").read_text()
    example = re.search(r"```yaml\n(# train-8b\.yaml.*?)```", readme, re.S).group(1)
    (tmp_path / "train-8b.yaml").write_text(example)
    t = load_config(tmp_path / "train-8b.yaml").train
    args = trainer_kwargs(t, "/tmp/out", torch.bfloat16)
    assert t.num_workers == 4 and t.use_gpu and args["report_to"] == ["tensorboard"] and args["bf16"]
