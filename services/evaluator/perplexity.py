"""Perplexity = exp(mean token loss), computed by the project (the hub's metric script is unreachable)."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def perplexity(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int = 8) -> float:  # type: ignore[no-untyped-def]
    """Token-weighted over the whole slice, so long texts count for what they hold. Texts are sorted
    by length before batching, which keeps padding (wasted compute) small."""
    if not texts:
        raise ValueError("perplexity of an empty slice is undefined")
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [ids[:max_length] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"] if len(ids) > 1]
    encoded.sort(key=len)
    was_training = model.training
    model.eval()
    total_nll, total_tokens = 0.0, 0
    for i in range(0, len(encoded), batch_size):
        chunk = encoded[i: i + batch_size]
        width = max(len(x) for x in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, x in enumerate(chunk):
            ids[row, : len(x)] = torch.tensor(x)
            mask[row, : len(x)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target, keep = ids[:, 1:], mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        total_nll += float(nll[keep].sum())
        total_tokens += int(keep.sum())
    if was_training:
        model.train()
    return math.exp(total_nll / total_tokens)
