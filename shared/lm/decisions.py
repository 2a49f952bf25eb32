"""Yes/no/maybe decisions by answer likelihood, batched, and their calibration: what the evaluator's
PubMedQA suite scores and the QA API's verdict reports, so both answer alike.

Scoring batches across items (the bench compares this with one item at a time: bench/evaluate.py).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from shared.lm.generation import body_and_head, length_batches, model_device
from shared.lm.prompts import prompt_ids

DECISIONS = ("yes", "no", "maybe")
DECISION_CUE = "Answer:"  # the trainer's QA answers end "...\nAnswer: <decision>"
# On CPU a forward over a prompt is compute-bound: 16 rows of 450 tokens took 8.9 s against 7.6 s one
# at a time (bf16, one thread), so batching only adds padding and cache misses there. CPU batches are
# capped at this many tokens; accelerators take the caller's batch size.
CPU_BATCH_TOKENS = 2048


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
    was_training = net.training
    net.eval()
    if model_device(net).type == "cpu":
        batch_size = max(1, min(batch_size, CPU_BATCH_TOKENS // max((len(r[1]) for r in rows), default=1)))
    for group in length_batches([len(r[1]) for r in rows], batch_size):
        batch = [rows[g] for g in group]
        # Only the positions that predict an option are projected onto the vocabulary and normalised:
        # the full logits of a batch (rows x tokens x vocabulary) would be most of the work and memory.
        wanted = [list(range(len(seq) - 1, len(seq))) if single else list(range(len(seq) - len(opt) - 1, len(seq) - 1))
                  for _, seq, opt in batch]
        logp = _log_probs_at(net, tokenizer, [seq for _, seq, _ in batch], wanted)
        for (item, _seq, opt), row in zip(batch, logp, strict=True):
            if single:
                scores[item] = [float(row[0, o[0]]) for o in options]
            else:
                scores[item][options.index(opt)] = sum(float(row[k, t]) for k, t in enumerate(opt))
    if was_training:
        net.train()
    return scores


def _log_probs_at(net: Any, tokenizer: Any, seqs: list[list[int]], positions: list[list[int]]) -> list[torch.Tensor]:
    """Per sequence, next-token log-probabilities (float32, on CPU) at its `positions`.

    Sequences are right-padded and no attention mask is passed: under causal attention a position
    never sees the padding to its right, so every wanted position (all inside its sequence) gets
    exactly its unpadded value, and scaled-dot-product attention keeps its causal fast path (a padding
    mask makes it materialise rows x heads x tokens^2 scores, slower than one item at a time on CPU)."""
    width = max(len(s) for s in seqs)
    device = model_device(net)
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, : len(seq)] = torch.tensor(seq)
    parts = body_and_head(net)
    if parts is None:  # a layout we do not know: full logits, then pick the positions
        logits = net(input_ids=ids.to(device)).logits
        return [logits[row, pos].float().log_softmax(-1).cpu() for row, pos in enumerate(positions)]
    body, head = parts
    hidden = body(input_ids=ids.to(device), use_cache=False)[0]
    return [head(hidden[row, pos]).float().log_softmax(-1).cpu() for row, pos in enumerate(positions)]


# -- calibration: so that a label's prior does not decide the answer --------------------------------

# Content-free inputs (Zhao et al. 2021, "Calibrate before use"): what the model answers with no question.
CONTENT_FREE = ("N/A", "", "[MASK]")
CALIBRATIONS = ("none", "contextual", "prior")


def softmax(row: Sequence[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def prior_offsets(scores: Sequence[Sequence[float]], prior: Sequence[float], *, iterations: int = 200) -> list[float]:
    """Log-offsets b with mean_i softmax(scores_i + b) = prior (iterative proportional fitting).

    The model's own answer bias (the base says "no" to 72% of PubMedQA items) is replaced by the label
    shares of the training data. It reads no gold label of the scored items, only the model's scores on
    them, so it may run on the evaluation items themselves."""
    offsets = [0.0] * len(prior)
    for _ in range(iterations):
        shifted = [softmax([v + b for v, b in zip(row, offsets, strict=True)]) for row in scores]
        mean = [sum(col) / len(shifted) for col in zip(*shifted, strict=True)]
        offsets = [b + math.log(max(p, 1e-12)) - math.log(max(m, 1e-12))
                   for b, p, m in zip(offsets, prior, mean, strict=True)]
    return offsets


def calibrate(scores: Sequence[Sequence[float]], method: str, *, prior: Sequence[float] | None = None,
              content_free: Sequence[Sequence[float]] | None = None) -> list[list[float]]:
    """Calibrated log-scores per item (argmax = the answer; softmax = its probabilities).

    none        the raw log-likelihoods
    contextual  divided by the label probabilities the model gives content-free inputs (`content_free`:
                their raw scores), Zhao et al. 2021
    prior       shifted so the predicted label shares over these items match `prior` (prior_offsets)
    """
    return with_offsets(scores, calibration_offsets(scores, method, prior=prior, content_free=content_free))


def with_offsets(scores: Sequence[Sequence[float]], offsets: Sequence[float]) -> list[list[float]]:
    """Each item's scores normalised, shifted by `offsets`, normalised again (log-probabilities)."""
    return [[math.log(p) for p in softmax([v + b for v, b in zip(row, offsets, strict=True)])]
            for row in normalised(scores)]


def normalised(scores: Sequence[Sequence[float]]) -> list[list[float]]:
    return [[math.log(p) for p in softmax(row)] for row in scores]


def calibration_offsets(scores: Sequence[Sequence[float]], method: str, *, prior: Sequence[float] | None = None,
                        content_free: Sequence[Sequence[float]] | None = None) -> list[float]:
    """The log-offsets `calibrate` adds to each item's normalised scores (zeros for "none"). The gate
    stores them with a version's PubMedQA scores, so the QA API's verdicts are calibrated the same way."""
    if method not in CALIBRATIONS:
        raise ValueError(f"unknown calibration {method!r}; expected one of {', '.join(CALIBRATIONS)}")
    if method == "none":
        return [0.0] * len(DECISIONS)
    if method == "contextual":
        if not content_free:
            raise ValueError("contextual calibration needs the content-free inputs' scores")
        probs = [softmax(row) for row in content_free]
        mean = [sum(col) / len(probs) for col in zip(*probs, strict=True)]
        return [-math.log(max(m, 1e-12)) for m in mean]
    if not prior or (scores and len(prior) != len(scores[0])):
        raise ValueError("prior calibration needs one prior share per label")
    return prior_offsets(normalised(scores), prior)


def verdict(net: Any, tokenizer: Any, question: str, context: str | None, *, offsets: Sequence[float] | None = None,
            max_length: int = 512) -> tuple[str, list[float]]:
    """The decision (one of DECISIONS) and its probabilities for one question + context (verdicts)."""
    return verdicts(net, tokenizer, [(question, context)], offsets=offsets, max_length=max_length)[0]


def verdicts(net: Any, tokenizer: Any, items: Sequence[tuple[str, str | None]], *,
             offsets: Sequence[float] | None = None, max_length: int = 512) -> list[tuple[str, list[float]]]:
    """Per (question, context): the decision and its probabilities: raw log-likelihoods (decision_scores, one
    batch), normalised, shifted by `offsets` (calibration_offsets, as the gate fitted them for the version;
    None = uncalibrated), softmaxed."""
    if offsets is not None and len(offsets) != len(DECISIONS):
        raise ValueError(f"offsets needs one log-offset per decision ({len(DECISIONS)}), got {len(offsets)}")
    if not items:
        return []
    raw = decision_scores(net, tokenizer, items, batch_size=len(items), max_length=max_length)
    # The offsets were fitted on normalised rows (calibration_offsets), so they shift normalised ones here.
    out = []
    for row in with_offsets(raw, offsets if offsets is not None else [0.0] * len(DECISIONS)):
        probs = [math.exp(v) for v in row]
        out.append((DECISIONS[max(range(len(probs)), key=probs.__getitem__)], probs))
    return out
