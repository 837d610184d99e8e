"""Log-probabilities of the tokens of a batch of sequences, without a batch x length x vocabulary tensor.

The model runs once and keeps only its last position's logits (`logits_to_keep=1`); its final hidden states
(`hidden_states[-1]`, after the last norm in transformers' language models) go through the output head a chunk of
positions at a time, and each chunk is reduced to what is asked (the next token's log-probability, the top
alternatives) before the next is computed. With a 128k vocabulary, a batch of 8 x 1,024 positions would be 4 GiB of
float32 logits held at once; a chunk is at most CHUNK_ELEMENTS (256 MiB).

Used by the Serve hf engine (logprobs and echo) and the held-out DPO metrics.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

CHUNK_ELEMENTS = 1 << 26  # float32 logits computed at once: 256 MiB


@dataclass
class TokenLogprobs:
    picked: torch.Tensor  # [batch, length - 1]: log p(token t+1 | tokens up to t), float32
    top_values: torch.Tensor | None  # [batch, length - 1, top]: the `top` most likely next tokens' log-probabilities
    top_ids: torch.Tensor | None  # [batch, length - 1, top]: and their ids


def _scales_logits_after_the_head(model: Any) -> bool:
    """Models whose logits are more than the head's output (Gemma's soft-capping, Cohere's logit scale): for them the
    logits are computed by the model itself."""
    config = model.config
    return bool(getattr(config, "final_logit_softcapping", None) or getattr(config, "logit_scale", None))


@torch.no_grad()
def token_logprobs(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, top: int = 0,
                   **forward_kwargs: Any) -> TokenLogprobs:
    """Each position's log-probability of the next token of `input_ids` (and, with `top`, the `top` most likely next
    tokens'), in float32, by chunks of positions. `forward_kwargs` go to the model (e.g. PEFT's adapter_names)."""
    targets = input_ids[:, 1:]
    if _scales_logits_after_the_head(model):
        logits = model(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs).logits[:, :-1]
        chunks = [(0, logits)]
    else:
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, logits_to_keep=1,
                    **forward_kwargs)
        hidden = out.hidden_states[-1][:, :-1]  # position t predicts token t + 1
        head = model.get_output_embeddings()
        batch, width = targets.shape
        step = max(1, CHUNK_ELEMENTS // max(1, batch * head.weight.shape[0]))
        chunks = ((s, head(hidden[:, s:s + step])) for s in range(0, width, step))
    picked = torch.empty(targets.shape, dtype=torch.float32, device=input_ids.device)
    top_values = top_ids = None
    if top:
        top_values = torch.empty((*targets.shape, top), dtype=torch.float32, device=input_ids.device)
        top_ids = torch.empty((*targets.shape, top), dtype=torch.long, device=input_ids.device)
    for start, logits in chunks:
        logits = logits.float()
        end = start + logits.shape[1]
        norms = torch.logsumexp(logits, dim=-1)
        picked[:, start:end] = logits.gather(-1, targets[:, start:end, None]).squeeze(-1) - norms
        if top:
            values, ids = logits.topk(top, dim=-1)
            top_values[:, start:end], top_ids[:, start:end] = values - norms[..., None], ids
    return TokenLogprobs(picked, top_values, top_ids)
