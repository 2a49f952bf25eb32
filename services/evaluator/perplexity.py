"""Perplexity = exp(mean token loss), computed by the project (the hub's metric script is unreachable).

`text_nll` gives each text's summed NLL and scored-token count, in the order given: the gate stores
them per item, so two models can be compared on the same texts with a paired test."""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def text_nll(model, tokenizer, texts: list[str], *, max_length: int,  # type: ignore[no-untyped-def]
             batch_size: int = 8) -> list[tuple[float, int]]:
    """(summed NLL, scored tokens) per text; a text of one token or less scores (0.0, 0). Texts are
    batched in length order, which keeps padding (wasted compute) small."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    encoded = [ids[:max_length] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    order = sorted((i for i, ids in enumerate(encoded) if len(ids) > 1), key=lambda i: len(encoded[i]))
    out = [(0.0, 0)] * len(texts)
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start: start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target, keep = ids[:, 1:], mask[:, 1:].bool()
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target, reduction="none")
        for row, i in enumerate(chunk):
            out[i] = (float(nll[row][keep[row]].sum()), int(keep[row].sum()))
    if was_training:
        model.train()
    return out


def perplexity(model, tokenizer, texts: list[str], *, max_length: int, batch_size: int = 8) -> float:  # type: ignore[no-untyped-def]
    """Token-weighted over the whole slice, so long texts count for what they hold."""
    if not texts:
        raise ValueError("perplexity of an empty slice is undefined")
    return perplexity_of(text_nll(model, tokenizer, texts, max_length=max_length, batch_size=batch_size))


def perplexity_of(per_text: list[tuple[float, int]]) -> float:
    total_nll = sum(n for n, _ in per_text)
    total_tokens = sum(t for _, t in per_text)
    if not total_tokens:
        raise ValueError("perplexity of a slice with no scored tokens is undefined")
    return math.exp(total_nll / total_tokens)
