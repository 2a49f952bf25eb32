"""The one prompt format: what the trainer teaches, the evaluator scores and the API serves."""

from __future__ import annotations

from typing import Any, cast


def chat_prompt(tokenizer: Any, question: str, context: str | None = None) -> str:
    """The generation prompt for one question, in the model's own chat format when it has one."""
    user = f"Question: {question.strip()}"
    if context:
        user += f"\nContext: {context.strip()}"
    if getattr(tokenizer, "chat_template", None):
        prompt = tokenizer.apply_chat_template(
            [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True
        )
        return cast(str, prompt)  # tokenize=False always yields text
    return f"{user}\nAnswer:"


def qa_answer(long_answer: str, decision: str) -> str:
    """A QA item's answer as the trainer teaches it: PubMedQA's long answer, then its decision line,
    which the evaluator's likelihood scorer reads after the same "Answer:" cue."""
    return f"{long_answer}\nAnswer: {decision}"


def prompt_ids(tokenizer: Any, question: str, context: str | None, max_prompt: int) -> list[int]:
    """Prompt token ids within `max_prompt`: an over-long context loses its tail, never the question."""
    ids: list[int] = tokenizer(chat_prompt(tokenizer, question, context), add_special_tokens=False)["input_ids"]
    if len(ids) > max_prompt and context:
        over = len(ids) - max_prompt
        ctx_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        context = tokenizer.decode(ctx_ids[: max(0, len(ctx_ids) - over - 8)])
        ids = tokenizer(chat_prompt(tokenizer, question, context), add_special_tokens=False)["input_ids"]
    return ids[-max_prompt:]
