"""Held-out preference metrics of a policy on the eval split, before and after training.

With log pi the policy's and log ref the base model's (adapter disabled) log-probability of an answer
given its prompt, summed over the answer's tokens:
- preference_accuracy: share of pairs whose chosen answer gained more log-probability over the
  reference than the rejected one, (log pi_c - log ref_c) > (log pi_r - log ref_r): DPO's reward
  accuracy. Before training the policy is the reference, every margin is 0 and the accuracy is 0;
- reward_margin: DPO's implicit reward margin, beta * mean of those differences (0 before training);
- likelihood_accuracy: share of pairs where the policy gives the chosen answer a higher log-probability
  a token than the rejected one: where the model stands, not how far it moved (meaningful before too);
- logp_margin: mean log pi_c - log pi_r.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np
import torch

from politune.models.logprobs import token_logprobs


def preference_metrics(model: Any, tokenizer: Any, rows: list[dict[str, str]], beta: float, max_length: int,
                       adapter: bool = True, batch_size: int = 8) -> dict[str, float]:
    """Metrics of `model` (a PeftModel) on rows {prompt, chosen, rejected}; adapter=False scores the base."""
    if not rows:
        return {"pairs": 0}
    policy, tokens = {}, {}
    for role in ("chosen", "rejected"):
        policy[role], tokens[role] = _answer_logps(model, tokenizer, rows, role, max_length, batch_size, adapter)
    ref = {role: _answer_logps(model, tokenizer, rows, role, max_length, batch_size, False)[0]
           for role in ("chosen", "rejected")} if adapter else policy
    gains = (policy["chosen"] - ref["chosen"]) - (policy["rejected"] - ref["rejected"])
    per_token = {role: policy[role] / np.maximum(tokens[role], 1) for role in policy}
    return {"pairs": len(rows), "preference_accuracy": float(np.mean(gains > 0)),
            "reward_margin": float(beta * gains.mean()),
            "likelihood_accuracy": float(np.mean(per_token["chosen"] > per_token["rejected"])),
            "logp_margin": float(np.mean(policy["chosen"] - policy["rejected"]))}


def _answer_logps(model: Any, tokenizer: Any, rows: list[dict[str, str]], role: str, max_length: int,
                  batch_size: int, adapter: bool) -> tuple[np.ndarray, np.ndarray]:
    """Summed log-probabilities of each row's `role` answer, and its token counts."""
    sequences = [_prompt_and_answer_ids(tokenizer, r["prompt"], r[role], max_length) for r in rows]
    out = []
    device = next(model.parameters()).device
    switch = contextlib.nullcontext() if adapter else model.disable_adapter()
    was_training = model.training
    model.eval()
    with switch, torch.no_grad():
        for start in range(0, len(sequences), batch_size):
            batch = sequences[start:start + batch_size]
            width = max(len(p) + len(a) for p, a in batch)
            ids = torch.full((len(batch), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            answer = torch.zeros_like(ids, dtype=torch.bool)
            for i, (p, a) in enumerate(batch):
                ids[i, :len(p) + len(a)] = torch.tensor(p + a)
                mask[i, :len(p) + len(a)] = 1
                answer[i, len(p):len(p) + len(a)] = True
            logps = token_logprobs(model, ids.to(device), mask.to(device)).picked  # by chunks of positions
            out.append((logps * answer[:, 1:].to(device)).sum(dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out), np.array([len(a) for _, a in sequences])


def _prompt_and_answer_ids(tokenizer: Any, prompt: str, answer: str, max_length: int) -> tuple[list[int], list[int]]:
    """Token ids of the chat-framed prompt and of the answer that follows it, cut to max_length from the
    end of the answer (as the trainers keep the start)."""
    user = [{"role": "user", "content": prompt}]
    prompt_text = tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full_text = tokenizer.apply_chat_template(user + [{"role": "assistant", "content": answer}], tokenize=False)
    if not full_text.startswith(prompt_text):
        raise ValueError("the base model's chat template does not extend the prompt with the answer; the held-out "
                         "metrics cannot find the answer's tokens")
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(full_text[len(prompt_text):], add_special_tokens=False)["input_ids"]
    prompt_ids = prompt_ids[:max_length - 1]
    return prompt_ids, answer_ids[:max_length - len(prompt_ids)]
