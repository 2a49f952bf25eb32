"""Training examples and their packing into fixed-length blocks.

Two kinds: an abstract is a causal-LM example (loss on every token); a question is a QA example in
the model's chat template, with the loss on the answer tokens only, so the model learns to answer
rather than to parrot questions. Packing concatenates examples into full blocks (no padding at all)
and restarts position ids at each example: transformers reads those resets as packed sequences and
keeps attention within an example.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from services.trainer.errors import TrainingFailed
from shared.lm.prompts import prompt_ids

if TYPE_CHECKING:  # torch loads where packing runs, not where a run's examples are listed (the trigger)
    import torch

IGNORE = -100  # cross-entropy's ignore_index


@dataclass(frozen=True, slots=True)
class ExampleSpec:
    """What to train on, before tokenization (so a run's data is tokenizer-independent)."""

    kind: str  # "lm" or "qa"
    text: str = ""
    question: str = ""
    context: str | None = None
    answer: str = ""


def lm(text: str) -> ExampleSpec:
    return ExampleSpec(kind="lm", text=text)


def qa(question: str, answer: str, context: str | None = None) -> ExampleSpec:
    return ExampleSpec(kind="qa", question=question, context=context, answer=answer)


@dataclass
class Packed:
    input_ids: torch.Tensor  # [blocks, length]
    labels: torch.Tensor  # IGNORE where no loss is taken
    position_ids: torch.Tensor  # restart at 0 at each example

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def batch(self, index: list[int], device: torch.device) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index].to(device), "labels": self.labels[index].to(device),
                "position_ids": self.position_ids[index].to(device)}


def tokenize(tokenizer: Any, spec: ExampleSpec, max_length: int) -> tuple[list[int], list[int]]:
    """(input ids, labels) for one example, closed by EOS; an over-long QA prompt loses its context
    tail first, so the answer (what the loss is on) survives."""
    eos = tokenizer.eos_token_id
    if spec.kind == "lm":
        ids = tokenizer(spec.text, add_special_tokens=False)["input_ids"][: max_length - 1] + [eos]
        return ids, list(ids)
    answer = _answer_ids(tokenizer, spec.answer, max_length // 2 - 1) + [eos]
    # The evaluator's and the API's own prompt builder: an over-long context loses its tail and the
    # chat template's assistant header survives, so the answer is trained where it is asked for.
    prompt = prompt_ids(tokenizer, spec.question, spec.context, max_length - len(answer))
    return prompt + answer, [IGNORE] * len(prompt) + answer


def _answer_ids(tokenizer: Any, answer: str, limit: int) -> list[int]:
    """The answer's ids, at most `limit`. An over-long answer loses the end of its body, never its
    last line: PubMedQA answers end "\nAnswer: <decision>", and a cut there would train the long
    answer but not the decision."""
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    if len(ids) <= limit:
        return ids
    body, newline, last = answer.rpartition("\n")
    tail = tokenizer(newline + last, add_special_tokens=False)["input_ids"] if body else []
    if not tail or len(tail) >= limit // 2:
        return ids[:limit]
    head = tokenizer(body, add_special_tokens=False)["input_ids"][: limit - len(tail)]
    return head + tail


def pack(tokenizer: Any, specs: list[ExampleSpec], max_length: int) -> Packed:
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for spec in specs:
        x, y = tokenize(tokenizer, spec, max_length)
        ids += x
        # The first token of an example would be "predicted" from the previous example: no loss there.
        labels += [IGNORE] + y[1:]
        positions += range(len(x))
    n_blocks = len(ids) // max_length
    if n_blocks == 0:
        raise TrainingFailed(f"not enough text to fill one {max_length}-token block ({len(ids)} tokens)")
    cut = n_blocks * max_length

    import torch

    def blocks(seq: list[int]) -> torch.Tensor:
        return torch.tensor(seq[:cut], dtype=torch.long).view(n_blocks, max_length)

    return Packed(blocks(ids), blocks(labels), blocks(positions))
