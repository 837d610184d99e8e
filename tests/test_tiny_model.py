from pathlib import Path

import pytest
import torch

from politune.config import TinyModelConfig
from politune.models.loading import generate_text, load_causal_lm
from politune.models.tiny import build_tiny_model, folder_digest, tiny_model_is_current


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return build_tiny_model(TinyModelConfig(seed=0), tmp_path_factory.mktemp("tiny") / "model")


def test_build_is_deterministic_for_a_seed(tiny: Path, tmp_path: Path) -> None:
    again = build_tiny_model(TinyModelConfig(seed=0), tmp_path / "again")
    other = build_tiny_model(TinyModelConfig(seed=1), tmp_path / "other")
    assert folder_digest(again) == folder_digest(tiny)
    assert folder_digest(other) != folder_digest(tiny)


def test_saved_like_a_hub_model(tiny: Path) -> None:
    for name in ("config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (tiny / name).is_file(), name
    assert tiny_model_is_current(TinyModelConfig(seed=0), tiny)
    assert not tiny_model_is_current(TinyModelConfig(seed=3), tiny)


def test_round_trip_through_from_pretrained(tiny: Path) -> None:
    model, tokenizer = load_causal_lm(str(tiny))
    cfg = model.config
    assert cfg.model_type == "llama"
    assert cfg.head_dim == 32  # vLLM's CPU attention kernels accept 32, not 16
    params = sum(p.numel() for p in model.parameters())
    assert 100_000 < params < 5_000_000
    assert len(tokenizer) == 1025  # 1,024 learned + "10", so every answer on a 0..10 scale is one token
    assert all(len(tokenizer.encode(str(i), add_special_tokens=False)) == 1 for i in range(11))
    first = generate_text(model, tokenizer, "Secure the border", max_new_tokens=6)
    again = generate_text(model, tokenizer, "Secure the border", max_new_tokens=6)
    assert first == again and first.strip()


def test_chat_template_and_byte_level_round_trip(tiny: Path) -> None:
    _, tokenizer = load_causal_lm(str(tiny))
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered.startswith("<|begin_of_text|><|start_header_id|>user")
    assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    text = "Ünïcode, emoji 🗳 and <html> survive"
    assert tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"]) == text


def test_forward_pass_gives_finite_logits(tiny: Path) -> None:
    model, tokenizer = load_causal_lm(str(tiny))
    batch = tokenizer(["a post", "another longer post here"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and torch.isfinite(logits).all()
