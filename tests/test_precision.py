"""Precision and the logits the hf engines read (issue 32), on the tiny model on CPU, no Ray.

Every hf engine and the trainer load the model in the config's `dtype`; annotate reads the last position's logits
only; Serve's logprobs and the held-out DPO metrics take log-probabilities by chunks of positions
(models/logprobs.py). Each is checked against the computation it replaced, over the whole batch's logits in float32,
to 1e-4."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from politune.config import TinyModelConfig, load_preset
from politune.models import logprobs as chunked
from politune.models.loading import load_causal_lm, resolve_dtype
from politune.models.logprobs import token_logprobs
from politune.models.random_adapters import register_random_adapters
from politune.world.tiny import build_tiny_model

TEXTS = ["taxes are too high and the state too big", "we need public healthcare for everyone, now",
         "borders", "a long post about the budget, the schools, the roads and the price of bread in town"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(TinyModelConfig(), tmp_path_factory.mktemp("precision") / "tiny")


def random_adapter(tiny: Path, run: Path, name: str, seed: int) -> Path:
    register_random_adapters(str(run), tiny, [name], seed=seed)
    return run / "adapters" / name


def full_logprobs(model, ids: torch.Tensor, mask: torch.Tensor, **kwargs) -> torch.Tensor:
    """What the engines computed before: the whole batch's logits, then log_softmax."""
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, **kwargs).logits[:, :-1].float()
    return torch.log_softmax(logits, dim=-1)


def left_padded(tokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer.padding_side = "left"
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    return batch["input_ids"], batch["attention_mask"]


def test_auto_is_float32_on_cpu_and_a_named_dtype_is_loaded_as_named(tiny: Path) -> None:
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16 and resolve_dtype(torch.float16, "cpu") == torch.float16
    with pytest.raises(ValueError, match="dtype: 'fp8'; expected auto, float32, bfloat16, float16"):
        resolve_dtype("fp8", "cpu")
    model, _ = load_causal_lm(str(tiny), "bfloat16")
    assert model.dtype == torch.bfloat16
    assert load_preset("local").dtype == "auto"  # every preset leaves it to the device


@pytest.mark.parametrize("chunk_elements", [chunked.CHUNK_ELEMENTS, 3000])  # one chunk; several of a few positions
def test_chunked_logprobs_match_the_whole_batchs_logits(tiny: Path, chunk_elements: int,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked, "CHUNK_ELEMENTS", chunk_elements)
    model, tokenizer = load_causal_lm(str(tiny))
    ids, mask = left_padded(tokenizer, TEXTS)
    expected = full_logprobs(model, ids, mask)
    got = token_logprobs(model, ids, mask, top=5)
    np.testing.assert_allclose(got.picked, expected.gather(-1, ids[:, 1:, None]).squeeze(-1), atol=1e-4)
    values, index = expected.topk(5, dim=-1)
    np.testing.assert_allclose(got.top_values, values, atol=1e-4)
    assert torch.equal(got.top_ids, index)


def test_annotate_reads_the_last_position_as_the_whole_logits_did(tiny: Path) -> None:
    from politune.contracts.annotator.hf_engine import HFAnnotator
    from politune.contracts.annotator.parse import expected_and_argmax
    from politune.contracts.annotator.prompts import SCALES, scale_messages

    annotator = HFAnnotator(str(tiny), "tiny", "logprob", "precision")
    rows = annotator({"doc_id": np.array([f"d{i}" for i in range(len(TEXTS))]), "text": np.array(TEXTS)})
    for scale in SCALES:
        inputs = annotator._encode([scale_messages(t, scale) for t in TEXTS])
        with torch.no_grad():
            last = annotator.model(**inputs).logits[:, -1, :]  # every position's logits, then the last
        expected, argmax = expected_and_argmax(last[:, annotator.answer_ids].double().numpy())
        np.testing.assert_allclose(rows[scale], expected, atol=1e-4)
        assert rows[f"{scale}_argmax"] == list(argmax)


def test_serves_logprobs_match_the_whole_batchs_logits_with_adapters_mixed(tiny: Path, tmp_path: Path) -> None:
    from politune.serve.hf_engine import AdapterModel, Row

    adapter = random_adapter(tiny, tmp_path, "left", seed=3)
    engine = AdapterModel(str(tiny))
    engine.add_adapter("left", adapter)
    rows = [Row(request_id=f"r{i}", adapter="left" if i % 2 else None, prompt_ids=engine.prompt_ids(text),
                prompt_text=text, max_tokens=0, echo=True, logprobs=3) for i, text in enumerate(TEXTS)]
    choices = engine.generate(rows)
    sequences = [r.prompt_ids for r in rows]
    ids, mask = engine._padded(sequences)
    expected = full_logprobs(engine.model, ids, mask, **engine._adapter_kwargs(rows))
    for b, (row, choice) in enumerate(zip(rows, choices, strict=True)):
        start = ids.shape[1] - len(row.prompt_ids)
        assert choice.token_logprobs[0] is None and len(choice.token_logprobs) == len(row.prompt_ids)
        for t in range(1, len(row.prompt_ids)):
            lp = expected[b, start + t - 1]
            assert choice.token_logprobs[t] == pytest.approx(float(lp[row.prompt_ids[t]]), abs=1e-4)
            values, index = lp.topk(3)  # keyed by text, as the API's top_logprobs are
            expected_top = {engine.token_text(int(i)): float(v) for v, i in zip(values, index, strict=True)}
            assert choice.top_logprobs[t] == pytest.approx(expected_top, abs=1e-4)


def test_held_out_logprobs_match_the_whole_batchs_logits(tiny: Path, tmp_path: Path) -> None:
    from peft import PeftModel

    from politune.train.heldout import _answer_logps, _prompt_and_answer_ids

    model, tokenizer = load_causal_lm(str(tiny))
    model = PeftModel.from_pretrained(model, str(random_adapter(tiny, tmp_path, "a", seed=4)))
    rows = [{"prompt": t, "chosen": f"yes: {t}", "rejected": "no."} for t in TEXTS]
    for adapter in (True, False):
        got, counts = _answer_logps(model, tokenizer, rows, "chosen", 64, 3, adapter)
        for i, row in enumerate(rows):
            prompt, answer = _prompt_and_answer_ids(tokenizer, row["prompt"], row["chosen"], 64)
            ids = torch.tensor([prompt + answer])
            context = model.disable_adapter() if not adapter else torch.no_grad()
            with context:
                lps = full_logprobs(model, ids, torch.ones_like(ids))[0]
            expected = sum(float(lps[k - 1, ids[0, k]]) for k in range(len(prompt), ids.shape[1]))
            assert got[i] == pytest.approx(expected, abs=1e-4) and counts[i] == len(answer)


def test_the_trainer_names_nccl_inside_a_process_group_only() -> None:
    """Plain TRL (bench/train.py) on a GPU has no process group: naming a backend there failed at once."""
    import torch.distributed as dist

    from politune.train.worker import trainer_kwargs

    t = load_preset("llama3-8b").train
    args = trainer_kwargs(t, "/tmp/out", torch.bfloat16)
    assert args["ddp_backend"] is None and args["bf16"] and not args["fp16"]
    assert trainer_kwargs(t, "/tmp/out", torch.float16)["fp16"]
    assert not trainer_kwargs(load_preset("local").train, "/tmp/out", torch.float16)["fp16"]  # no fp16 AMP on CPU
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        assert trainer_kwargs(t, "/tmp/out", torch.bfloat16)["ddp_backend"] == "nccl"
    finally:
        dist.destroy_process_group()


def test_gpu_kernels_are_chosen_by_what_is_installed_and_refused_where_they_cannot_run(monkeypatch) -> None:
    """auto: flash-attention and Liger on a GPU where their packages are, sdpa and no Liger on CPU; by name on CPU a
    config error; by name where the package is missing an error saying what to install."""
    import importlib.util

    from politune.config import ConfigError
    from politune.train import worker
    from politune.train.worker import gpu_kernels, training_args

    gpu, cpu = load_preset("llama3-8b").train, load_preset("local").train
    assert gpu_kernels(cpu) == ("sdpa", False)
    installed = {"flash_attn": False, "liger_kernel": False}
    real = importlib.util.find_spec
    monkeypatch.setattr(worker.importlib.util, "find_spec", lambda name, *a: (
        (object() if installed[name] else None) if name in installed else real(name, *a)))
    assert gpu_kernels(gpu) == ("sdpa", False)
    installed.update(flash_attn=True, liger_kernel=True)
    assert gpu_kernels(gpu) == ("flash_attention_2", True) and gpu_kernels(cpu) == ("sdpa", False)
    installed.update(flash_attn=False, liger_kernel=False)
    with pytest.raises(ValueError, match="pip install liger-kernel"):
        gpu_kernels(gpu.model_copy(update={"liger_kernels": True}))
    with pytest.raises(ValueError, match="pip install flash-attn"):
        gpu_kernels(gpu.model_copy(update={"attn_implementation": "flash_attention_2"}))
    for field, value in (("liger_kernels", True), ("attn_implementation", "flash_attention_2")):
        with pytest.raises(ConfigError, match=f"{field}: .* runs GPU kernels: set use_gpu: true"):
            load_preset("local", overrides=[f"train.{field}={value if value is not True else 'true'}"])
    args = training_args(cpu, "/tmp/out", torch.float32, liger=True)
    assert args.use_liger_kernel and args.liger_kernel_config == {"fused_linear_cross_entropy": False}
