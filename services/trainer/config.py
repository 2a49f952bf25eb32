"""TrainConfig: every hyper-parameter of one LoRA increment, with help text and validation.

It is stored whole in the run row and in every checkpoint, so a resumed run uses exactly the
configuration it started with, even if the operator changed settings in between.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from shared.settings import Settings

# LoRA targets by architecture: the attention projections each family names differently.
LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "mistral": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
}


def _f(default, help: str):  # type: ignore[no-untyped-def]
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    max_steps: int = _f(60, "Optimizer steps in this increment.")
    batch_size: int = _f(8, "Packed sequences per forward pass (micro-batch).")
    grad_accum: int = _f(4, "Micro-batches per optimizer step: effective batch = batch_size * grad_accum.")
    max_length: int = _f(512, "Tokens per packed sequence.")
    learning_rate: float = _f(2e-4, "Peak AdamW learning rate.")
    weight_decay: float = _f(0.01, "AdamW weight decay.")
    warmup_ratio: float = _f(0.1, "Share of steps spent warming the learning rate up; it then decays linearly.")
    lora_r: int = _f(8, "LoRA rank.")
    lora_alpha: int = _f(16, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA path.")
    target_modules: list[str] | None = _f(None, "Modules to adapt; None picks by architecture (LORA_TARGETS).")
    precision: str = _f("auto", "fp32, bf16 (autocast), or auto: bf16 where the device runs it natively.")
    quantization: str = _f("none", "none, 4bit (QLoRA, NF4) or 8bit base weights through bitsandbytes; CUDA only.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward: less memory, ~30% more compute.")
    checkpoint_every: int = _f(10, "Steps between resumable checkpoints.")
    seed: int = _f(0, "Seeds data order, LoRA init and dropout.")

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum", "lora_r", "lora_alpha", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        if not 16 <= self.max_length <= 8192:
            raise ValueError(f"TrainConfig.max_length must be in [16, 8192], got {self.max_length}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"TrainConfig.learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.precision not in ("auto", "fp32", "bf16"):
            raise ValueError(f"TrainConfig.precision must be auto, fp32 or bf16, got {self.precision!r}")
        if self.quantization not in ("none", "4bit", "8bit"):
            raise ValueError(f"TrainConfig.quantization must be none, 4bit or 8bit, got {self.quantization!r}")
        if not 0 <= self.lora_dropout < 1 or not 0 <= self.warmup_ratio < 1:
            raise ValueError("TrainConfig.lora_dropout and warmup_ratio must be in [0, 1)")

    @classmethod
    def from_settings(cls, settings: Settings) -> TrainConfig:
        given: dict[str, Any] = {
            "max_steps": settings.train_max_steps, "batch_size": settings.train_batch_size,
            "grad_accum": settings.train_grad_accum, "max_length": settings.train_max_length,
            "learning_rate": settings.train_lr, "precision": settings.train_precision,
            "quantization": settings.train_quantization,
            "gradient_checkpointing": settings.train_gradient_checkpointing,
            "checkpoint_every": settings.checkpoint_every, "seed": settings.seed}
        # Settings left unset keep the documented defaults above.
        return cls(**{k: v for k, v in given.items() if v is not None})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_dict(self) -> dict:
        return asdict(self)

    def targets_for(self, model_type: str) -> list[str]:
        if self.target_modules:
            return list(self.target_modules)
        if model_type not in LORA_TARGETS:
            raise ValueError(f"no default LoRA targets for model type {model_type!r}; set target_modules")
        return LORA_TARGETS[model_type]
