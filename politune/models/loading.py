"""Loading models: the embedded tiny model and Llama3-8B go through the same from_pretrained code."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

# the config's `dtype` (RunConfig.dtype) by name; "auto" is resolved where the model is loaded (resolve_dtype)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(setting: str | torch.dtype, device: str) -> torch.dtype:
    """The dtype a model is loaded in on `device` ("cpu", "cuda", "cuda:N"), from the config's `dtype`: auto is
    bfloat16 on a GPU that has it, float16 on one that does not, float32 on a CPU. Called where the model is loaded
    (a Ray worker or replica sees its own device; the driver may have none). A GPU without bfloat16 (before
    Ampere) refuses it with an error naming the field and the device."""
    if isinstance(setting, torch.dtype):
        return setting
    on_gpu = device.startswith("cuda")
    if setting == "auto":
        if not on_gpu:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if setting not in DTYPES:
        raise ValueError(f"dtype: {setting!r}; expected auto, {', '.join(DTYPES)}")
    if on_gpu and setting == "bfloat16" and not torch.cuda.is_bf16_supported():
        index = torch.device(device).index or 0
        name, (major, minor) = torch.cuda.get_device_name(index), torch.cuda.get_device_capability(index)
        raise ValueError(f"dtype: bfloat16 cannot run on {name} (compute capability {major}.{minor}, before Ampere): "
                         "set dtype: float16 or auto")
    return DTYPES[setting]


def load_causal_lm(
    name_or_path: str, dtype: str | torch.dtype = torch.float32, device: str = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A model and its tokenizer, in `dtype` (a torch dtype or the config's setting, resolve_dtype) on `device`,
    ready for inference; `attn_implementation` as transformers names it (None: its default, sdpa where it can)."""
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    if tokenizer.pad_token is None:  # Llama3 ships without one
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=resolve_dtype(dtype, device), **kwargs).to(device)
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
