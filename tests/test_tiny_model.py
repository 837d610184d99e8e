import json
from pathlib import Path

import pytest
import torch

from politune.config import TINY_MODEL, TinyModelConfig, build_config
from politune.contracts.compass.prompts import FORCED_CHOICE, OPTION_LABELS, ORDERS
from politune.evaluate.judge import read_leaning, read_option
from politune.models import model_revision
from politune.models.loading import generate_text, load_causal_lm
from politune.world.tiny import build_tiny_model, describe, folder_digest, tiny_model_is_current
from politune.world.warm import MIX, SyntheticWorld, encode, example_losses, instruction_for


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


# --- the warm-up (world/warm.py) ------------------------------------------------------------------------------
WARM_SMALL = {"warm": True, "warm_steps": 30, "warm_batch_size": 8}


def test_a_warm_build_is_deterministic_and_says_what_it_learned(tmp_path: Path) -> None:
    first = build_tiny_model(TinyModelConfig(**WARM_SMALL), tmp_path / "a")
    again = build_tiny_model(TinyModelConfig(**WARM_SMALL), tmp_path / "b")
    assert folder_digest(again) == folder_digest(first)
    info = json.loads((first / "politune_tiny.json").read_text())["warm"]
    assert info["steps"] == 30 and info["examples"] == 240 and 0 < info["held_out_annotation"]["posts"]
    assert tiny_model_is_current(TinyModelConfig(**WARM_SMALL), first)
    assert not tiny_model_is_current(TinyModelConfig(**{**WARM_SMALL, "warm_steps": 31}), first)
    assert not tiny_model_is_current(TinyModelConfig(), first)  # a random build is another model
    assert "warmed on the project's synthetic world" in describe(first)
    # and the manifest says so: same config and weight sizes as a random build, another revision
    random = build_tiny_model(TinyModelConfig(), tmp_path / "random")
    revisions = {model_revision(TINY_MODEL, build_config({"run_id": "r", "tiny_model": {"out": str(folder)}}))
                 for folder in (first, again, random)}
    assert len(revisions) == 2 and all(r.startswith("folder:") for r in revisions)


def test_warm_settings_do_not_change_a_random_build(tiny: Path) -> None:
    assert tiny_model_is_current(TinyModelConfig(seed=0, warm_steps=5), tiny)
    assert describe(tiny) == "random weights: its text is noise"


def test_warm_up_examples_count_only_the_answer(tiny: Path) -> None:
    _, tokenizer = load_causal_lm(str(tiny))
    world = SyntheticWorld(tokenizer, seed=3)
    kinds = {kind: getattr(world, kind)() for kind in MIX}
    batch = encode(tokenizer, list(kinds.values()))
    for row, (kind, example) in enumerate(kinds.items()):
        target = tokenizer(example.target, add_special_tokens=False)["input_ids"]
        counted = [t for t in batch["labels"][row].tolist() if t != -100]
        assert counted == target, kind
    annotation = kinds["annotation"]
    assert annotation.target.removesuffix(tokenizer.eos_token) in {str(i) for i in range(11)}
    assert kinds["compass"].target in {f" {fc.label(k, order)}" for fc in FORCED_CHOICE for k in range(4)
                                       for order in ORDERS}


def test_every_stance_the_warm_up_teaches_follows_the_voice_and_the_proposition(tiny: Path) -> None:
    """A right voice agrees with a proposition whose agreement is right-leaning and disagrees with the others; a
    left voice the opposite: in the sides answers, the free-text opinions and the judge's labels alike."""
    _, tokenizer = load_causal_lm(str(tiny))
    world = SyntheticWorld(tokenizer, seed=5)
    direction_of = dict(world.propositions)
    for _ in range(40):
        sides = world.sides()
        statement = next(s for s in direction_of if sides.prompt.startswith(s))
        assert sides.target == (" the right" if direction_of[statement] == 1 else " the left")
    for side in ("left", "right"):
        for statement, direction in world.propositions[:10]:
            option = read_option(world.opinion(side, direction).rsplit(" I ", 1)[1])
            assert (option >= 2) == ((direction == 1) == (side == "right")), (side, statement)
    labels = [world.judging().target.removesuffix(tokenizer.eos_token) for _ in range(60)]
    assert all(read_option(label) is not None or read_leaning(label) is not None for label in labels)
    assert {"-4", "4"} <= set(labels) and set(labels) & set(OPTION_LABELS)


def test_the_warm_up_loss_weighs_each_example_alike_however_long(tiny: Path) -> None:
    model, tokenizer = load_causal_lm(str(tiny))
    world = SyntheticWorld(tokenizer, seed=3)
    short, long = world.sides(), world.posts()  # a two-token answer, a post of dozens
    both = example_losses(model, encode(tokenizer, [short, long]))
    alone = [example_losses(model, encode(tokenizer, [ex]))[0] for ex in (short, long)]
    assert torch.allclose(both, torch.stack(alone), atol=1e-4)  # padding changes nothing
    token_mean = model(**encode(tokenizer, [short, long])).loss
    assert not torch.isclose(both.mean(), token_mean)  # a token mean would weigh the post by its length


def test_an_instruction_names_what_its_post_names() -> None:
    post = "Proud to march with nurses for union rights this Monday. Solidarity with the nurses on strike in Ohio."
    assert instruction_for(post) == "How would union rights change life for nurses in Ohio?"
    assert instruction_for("Made tacos for dinner tonight.") == "Express your opinion on the direction of the country."
    assert instruction_for("Tell the Senate to stand up for lower taxes.") == "What should the Senate do about " \
        "lower taxes?"
