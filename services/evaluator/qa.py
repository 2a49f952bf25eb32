"""PubMedQA-style scoring with a causal LM, batched: yes/no/maybe by answer likelihood, and macro-F1.

Scoring batches across items (the bench compares this with one item at a time: bench/evaluate.py).
Generation and the prompt format are the shared LM runtime's (shared/lm).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from shared.lm.generation import length_batches, model_device
from shared.lm.prompts import prompt_ids

DECISIONS = ("yes", "no", "maybe")
DECISION_CUE = "Answer:"  # the trainer's QA answers end "...\nAnswer: <decision>"


@torch.no_grad()
def decision_scores(net: Any, tokenizer: Any, items: Sequence[tuple[str, str | None]], *, batch_size: int = 8,
                    max_length: int = 512) -> list[list[float]]:
    """Log-likelihood of each of DECISIONS after question + context + DECISION_CUE, per item.

    When every option is one token (true for GPT-2 and Llama-style BPE vocabularies) one forward per
    item scores all three from the last position; otherwise each option is its own row.
    """
    options = [tokenizer(" " + d, add_special_tokens=False)["input_ids"] for d in DECISIONS]
    single = all(len(o) == 1 for o in options)
    cue = tokenizer(DECISION_CUE, add_special_tokens=False)["input_ids"]
    longest = max(len(o) for o in options)
    prompts = [prompt_ids(tokenizer, q, c, max_length - len(cue) - longest) + cue for q, c in items]
    rows = [(i, p, []) for i, p in enumerate(prompts)] if single else \
        [(i, p + o, o) for i, p in enumerate(prompts) for o in options]
    scores = [[0.0] * len(DECISIONS) for _ in items]
    pad, device = tokenizer.pad_token_id, model_device(net)
    was_training = net.training
    net.eval()
    for group in length_batches([len(r[1]) for r in rows], batch_size):
        width = max(len(rows[g][1]) for g in group)
        ids = torch.full((len(group), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, g in enumerate(group):
            seq = rows[g][1]
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        logits = net(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for row, g in enumerate(group):
            item, seq, opt = rows[g]
            # Normalise only at the positions that predict an option: a log-softmax over the whole
            # vocabulary at every prompt position would be most of the work, for nothing.
            if single:
                last = logits[row, len(seq) - 1].float().log_softmax(-1).cpu()
                scores[item] = [float(last[o[0]]) for o in options]
            else:
                start = len(seq) - len(opt)
                logp = logits[row, start - 1: len(seq) - 1].float().log_softmax(-1).cpu()
                value = sum(float(logp[k, t]) for k, t in enumerate(opt))
                scores[item][options.index(opt)] = value
    if was_training:
        net.train()
    return scores


def macro_f1(gold: Sequence[str], pred: Sequence[str]) -> float:
    """Mean F1 over the labels that occur in gold or predictions."""
    labels = sorted(set(gold) | set(pred))
    f1s = []
    for label in labels:
        tp = sum(g == p == label for g, p in zip(gold, pred, strict=True))
        fp = sum(p == label != g for g, p in zip(gold, pred, strict=True))
        fn = sum(g == label != p for g, p in zip(gold, pred, strict=True))
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(f1s) / len(f1s) if f1s else 0.0
