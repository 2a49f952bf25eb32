"""Batched greedy generation and the bf16 choice, shared by the evaluator's suites and the QA API.

Items are sorted by length before batching, so a batch pads little.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from shared.lm.prompts import prompt_ids


def use_bf16(precision: str, device: torch.device) -> bool:
    """auto: bf16 on CUDA where supported and on CPUs with native bf16, else fp32."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Native bf16 (AVX512-BF16 / AMX) makes autocast faster than fp32 on CPU; emulated, much slower.
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Item indices in batches of similar length."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def model_device(net: Any) -> torch.device:
    return next(net.parameters()).device


def body_and_head(model: Any) -> tuple[Any, Any] | None:
    """(transformer body, LM head) of a causal LM, under PEFT or not; None for a layout we do not know.

    The vocabulary projection is the largest activation of a small LM (8 x 512 tokens x 49k vocab is
    0.8 GB in fp32): callers that need logits at a few positions run the body and project only those.
    LoRA layers live inside the body's modules, so the body computes the adapted model."""
    causal_lm = model.get_base_model() if hasattr(model, "get_base_model") else model
    body = getattr(causal_lm, getattr(causal_lm, "base_model_prefix", ""), None)
    head = causal_lm.get_output_embeddings() if hasattr(causal_lm, "get_output_embeddings") else None
    if body is None or head is None:
        return None
    return body, head


@torch.no_grad()
def generate(net: Any, tokenizer: Any, items: Sequence[tuple[str, str | None]], *, max_new_tokens: int = 48,
             batch_size: int = 8, max_length: int = 512) -> list[str]:
    """Greedy answers to (question, context) items, left-padded batches (a decoder continues from the
    right edge)."""
    prompts = [prompt_ids(tokenizer, q, c, max_length - max_new_tokens) for q, c in items]
    out = [""] * len(items)
    pad, device = tokenizer.pad_token_id, model_device(net)
    was_training = net.training
    net.eval()
    for group in length_batches([len(p) for p in prompts], batch_size):
        width = max(len(prompts[g]) for g in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, g in enumerate(group):
            ids[row, width - len(prompts[g]):] = torch.tensor(prompts[g])
            mask[row, width - len(prompts[g]):] = 1
        gen = net.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                           do_sample=False, pad_token_id=pad, eos_token_id=tokenizer.eos_token_id)
        for row, g in enumerate(group):
            out[g] = tokenizer.decode(gen[row, width:], skip_special_tokens=True).strip()
    if was_training:
        net.train()
    return out
