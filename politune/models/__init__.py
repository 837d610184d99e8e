"""Loading models: the embedded tiny model and Llama3-8B go through the same from_pretrained code."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from politune.config import TINY_MODEL, RunConfig


def resolve_model(ref: str, cfg: RunConfig) -> str:
    """A config's model reference as from_pretrained takes it: `tiny` is the built tiny model's
    folder; anything else (a hub id or a folder) is passed through."""
    return str(Path(cfg.tiny_model.out).absolute()) if ref == TINY_MODEL else ref


def ensure_model_files(cfg: RunConfig, field: str, ref: str) -> str:
    """The folder or hub id a config field's model reference loads from, checked before any Ray work: `tiny` is
    built when missing or stale; a local folder must hold a model config."""
    if ref == TINY_MODEL:
        from politune.models.tiny import build_tiny_model, tiny_model_is_current

        if not tiny_model_is_current(cfg.tiny_model):
            build_tiny_model(cfg.tiny_model)
        return resolve_model(ref, cfg)
    folder = Path(ref).expanduser()
    if ref.startswith((".", "/", "~")) or folder.exists():
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"{field}: {ref} is not a model folder (no config.json in it)")
        return str(folder.absolute())
    return ref  # a hub id


def load_causal_lm(
    name_or_path: str, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # Llama3 ships without one
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype).to(device)
    model.eval()
    return model, tokenizer


def generate_text(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str,
                  max_new_tokens: int = 16) -> str:
    """Greedy reply to one user message, rendered through the model's chat template."""
    ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids.to(model.device), max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
