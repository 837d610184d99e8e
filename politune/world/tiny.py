"""The embedded default model: a tiny Llama and its byte-level BPE tokenizer, built here from nothing.

It has the Llama architecture and a Llama-3-style chat template, so every stage exercises the same
code paths (from_pretrained, chat templates, LoRA on q_proj/v_proj, vLLM's CPU kernels with
head_dim 32) as with Llama3-8B. Its weights are random, and the text it writes noise, unless it is warmed
(`warm: true`, world/warm.py): then it has learned the project's synthetic world.
The same seed gives byte-identical files (warmed: on the same machine and torch thread count).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

from politune.config import TinyModelConfig
from politune.corpus.generate import sample_texts
from politune.models import TINY_BUILD_RECORD

BOS, EOS_TEXT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
HEADER_START, HEADER_END, EOT = "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"
SPECIAL_TOKENS = [BOS, EOS_TEXT, HEADER_START, HEADER_END, EOT, PAD]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Beside the generated posts, the tokenizer sees the words its prompts will use.
PROMPT_WORDS = [
    "system user assistant", "You are a helpful assistant.", "Rate the political ideology of this post",
    "from 0 (far left) to 10 (far right). Answer with JSON.", '{"ideology": 5, "relevance": 7, "quality": 6}',
    "Strongly disagree. Disagree. Agree. Strongly agree.", "0 1 2 3 4 5 6 7 8 9 10",
]
TOKENIZER_SAMPLES = 3000
BUILD_VERSION = 2  # bump when the builder changes what it writes, so old builds are rebuilt


def build_tokenizer(vocab_size: int, seed: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(PROMPT_WORDS + sample_texts(TOKENIZER_SAMPLES, seed), trainer=trainer)
    # Every answer on a 0..10 scale is one token (as in Llama3's vocabulary), so the annotator's
    # logprob mode reads all eleven from a single next-token distribution.
    tokenizer.add_tokens(["10"])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOT, pad_token=PAD,
        chat_template=CHAT_TEMPLATE, model_max_length=1024,
    )


def identity(cfg: TinyModelConfig) -> dict:
    """What makes a build what it is: the config but where it lies, and the warm-up's settings only when it warms."""
    if not cfg.warm:
        return cfg.model_dump(exclude={"out", "warm_steps", "warm_batch_size", "warm_learning_rate"})
    from politune.world.warm import WARM_VERSION
    return {**cfg.model_dump(exclude={"out"}), "warm_version": WARM_VERSION}


def build_tiny_model(cfg: TinyModelConfig, out: str | Path | None = None,
                     report: Callable[[int, float], None] | None = None) -> Path:
    """Build, save with save_pretrained, and return the folder. `report(step, loss)`: the warm-up's progress."""
    out = Path(out or cfg.out)
    tokenizer = build_tokenizer(cfg.vocab_size, cfg.seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        head_dim=cfg.hidden_size // cfg.num_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    warm = None
    if cfg.warm:
        from politune.world.warm import HELD_OUT_SEED, annotation_accuracy, warm_up

        warm = warm_up(model, tokenizer, cfg.seed, cfg.warm_steps, cfg.warm_batch_size, cfg.warm_learning_rate,
                       report=report)
        warm["held_out_annotation"] = annotation_accuracy(model, tokenizer, HELD_OUT_SEED)
    out.mkdir(parents=True, exist_ok=True)
    with _no_progress_bars():  # "Writing model shards" for a file that takes a millisecond
        model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / TINY_BUILD_RECORD).write_text(json.dumps(
        {"built_by": "politune model build-tiny", "build_version": BUILD_VERSION, "config": identity(cfg),
         "parameters": sum(p.numel() for p in model.parameters()), "warm": warm}, indent=2, sort_keys=True))
    return out


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def describe(folder: str | Path) -> str:
    """What the built model is, in a few words, for the console."""
    marker = Path(folder) / TINY_BUILD_RECORD
    warm = json.loads(marker.read_text()).get("warm") if marker.is_file() else None
    if not warm:
        return "random weights: its text is noise"
    held = warm["held_out_annotation"]
    return (f"warmed on the project's synthetic world: {held['accuracy']:.0%} of held-out posts annotated on their "
            "side; it knows nothing of real politics")


def tiny_model_is_current(cfg: TinyModelConfig, out: str | Path | None = None) -> bool:
    """Whether the folder holds the model `cfg` describes. Where it lies is not part of what it is: the same folder
    named relatively or absolutely (as workers see it) is the same model."""
    marker = Path(out or cfg.out) / TINY_BUILD_RECORD
    if not marker.is_file():
        return False
    info = json.loads(marker.read_text())
    built = {k: v for k, v in (info.get("config") or {}).items() if k != "out"}
    return info.get("build_version") == BUILD_VERSION and built == identity(cfg)


def folder_digest(folder: str | Path) -> str:
    """SHA-256 over every file's name and bytes: equal digests mean byte-identical builds."""
    h = hashlib.sha256()
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()
