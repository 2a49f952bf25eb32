"""The language-model runtime the trainer, the evaluator and the QA API share: base-model resolution
and loading (base_model), the prompt format (prompts), generation and precision (generation)."""
