"""One LoRA increment: warm-start from the parent adapter (or the bare base), pack, train, checkpoint.

A plain PyTorch loop rather than HF Trainer: it is short enough to read top to bottom, and it makes
resuming exact (the batch at step k is a pure function of the seed and k), which a redelivered
Celery task relies on.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from services.trainer.config import TrainConfig
from services.trainer.errors import TrainingFailed
from services.trainer.examples import ExampleSpec, Packed, lm, pack
from shared.checksums import sha256_folder
from shared.lm.base_model import load_base_model
from shared.lm.generation import body_and_head, use_bf16

log = logging.getLogger("medqa.trainer")

Progress = Callable[[int, int, float, float], None]  # step, total, loss, tokens/s


@dataclass
class TrainResult:
    adapter_dir: Path
    sha256: str
    steps: int
    tokens: int
    seconds: float
    final_loss: float
    resumed_from: int
    skipped_steps: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def batch_indices(n_blocks: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Blocks for `step`: epochs are seeded permutations laid end to end, so step k never depends
    on what ran before it (resume = jump to k)."""
    out = []
    for pos in range(step * batch_size, (step + 1) * batch_size):
        epoch, offset = divmod(pos, n_blocks)
        perm = list(range(n_blocks))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(perm[offset])
    return out


def _lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    warm = max(1, int(cfg.max_steps * cfg.warmup_ratio))

    def f(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return max(0.0, (cfg.max_steps - step) / max(1, cfg.max_steps - warm))

    return f


def build_model(base_spec: str, models_dir: Path, cfg: TrainConfig, parent_adapter: Path | None):  # type: ignore[no-untyped-def]
    model: Any
    if cfg.quantization != "none":
        model, tokenizer = load_base_model(base_spec, models_dir, quantization_config=_kbit_config(cfg))
        from peft import prepare_model_for_kbit_training

        # Casts norms to fp32 and enables input grads, so LoRA trains stably over frozen k-bit weights.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    else:
        model, tokenizer = load_base_model(base_spec, models_dir, torch_dtype=_base_dtype(cfg))
        if cfg.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()  # frozen embeddings would otherwise cut the graph
    if parent_adapter is not None:
        # Warm start: the champion's adapter continues training, it is not re-initialised.
        model = PeftModel.from_pretrained(model, str(parent_adapter), is_trainable=True)
    else:
        torch.manual_seed(cfg.seed)
        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                          target_modules=cfg.targets_for(model.config.model_type), task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    for p in model.parameters():
        if p.requires_grad and p.dtype != torch.float32:
            p.data = p.data.float()  # AdamW state on bf16 LoRA weights underflows; train them in fp32
    return model, tokenizer


def _base_dtype(cfg: TrainConfig) -> torch.dtype:
    """Frozen base weights: bf16 wherever the loop autocasts to bf16 anyway (half the memory, and on
    CPU no per-step fp32->bf16 weight casts: bench/train.py), else fp32. Explicit, because
    transformers 5 otherwise keeps whatever dtype the checkpoint was saved in."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.bfloat16 if use_bf16(cfg.precision, device) else torch.float32


def _kbit_config(cfg: TrainConfig):  # type: ignore[no-untyped-def]
    if not torch.cuda.is_available():
        raise TrainingFailed(f"quantization={cfg.quantization} (QLoRA) needs CUDA; use quantization=none on CPU")
    from transformers import BitsAndBytesConfig

    if cfg.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16)


def _save_checkpoint(model, opt, sched, step: int, path: Path, cfg: TrainConfig) -> None:  # type: ignore[no-untyped-def]
    tmp = path.with_suffix(".tmp")
    try:
        torch.save({
            "step": step, "config": cfg.to_dict(), "adapter": get_peft_model_state_dict(model),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        }, tmp)
    except (OSError, RuntimeError) as exc:
        tmp.unlink(missing_ok=True)
        raise TrainingFailed(write_failure("the checkpoint", tmp, exc)) from None
    os.replace(tmp, path)  # atomic: a kill mid-write leaves the previous checkpoint intact


def write_failure(what: str, path: Path, exc: BaseException) -> str:
    """The reason a write failed, naming a full disk when it is one: torch's own message for it reads
    "[enforce fail at inline_container.cc] unexpected pos ..." and says nothing of the disk."""
    try:
        free = shutil.disk_usage(path.parent if path.parent.exists() else path.anchor).free
    except OSError:
        free = -1
    full = getattr(exc, "errno", None) == errno.ENOSPC or 0 <= free < DISK_FULL_BYTES
    reason = (f"no space left on device ({free // 2**20} MiB free on {path.parent})" if full
              else f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    return f"could not write {what} to {path}: {reason}"


DISK_FULL_BYTES = 64 * 2**20  # less free than this after a failed write: the disk is (all but) full


def train_lora(
    *, base_spec: str, models_dir: Path, examples: list[ExampleSpec] | list[str], cfg: TrainConfig, out_dir: Path,
    work_dir: Path,
    parent_adapter: Path | None = None, progress: Progress | None = None,
) -> TrainResult:
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / "checkpoint.pt"
    loop, blocks = _setup(base_spec, models_dir, examples, cfg, parent_adapter)
    start = _resume(loop, ckpt_path)
    loop.model.train()
    t0 = time.perf_counter()
    try:
        tokens, loss_value, skipped = _run_steps(loop, blocks, start, ckpt_path, progress, t0)
    except torch.cuda.OutOfMemoryError as exc:
        # Fail this run (not the worker): free what the failed step held so the next task starts clean.
        loop.model.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise TrainingFailed(f"GPU out of memory at batch {cfg.batch_size}x{cfg.max_length}: {exc}") from None
    seconds = time.perf_counter() - t0
    _save_adapter(loop.model, out_dir)
    return TrainResult(adapter_dir=out_dir, sha256=sha256_folder(out_dir), steps=cfg.max_steps - start,
                       tokens=tokens, seconds=seconds, final_loss=loss_value, resumed_from=start,
                       skipped_steps=skipped)


@dataclass
class _Loop:
    """What the training steps update: the PEFT model, its trainable parameters and their optimizer."""

    model: Any
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    cfg: TrainConfig
    device: torch.device


def _setup(base_spec: str, models_dir: Path, examples: list[ExampleSpec] | list[str], cfg: TrainConfig,
           parent_adapter: Path | None) -> tuple[_Loop, Packed]:
    model, tokenizer = build_model(base_spec, models_dir, cfg, parent_adapter)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.quantization == "none":  # k-bit models were placed on the GPU as they loaded
        model.to(device)
    specs = [lm(e) if isinstance(e, str) else e for e in examples]
    blocks = pack(tokenizer, specs, cfg.max_length)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg))
    return _Loop(model, params, opt, sched, cfg, device), blocks


def _resume(loop: _Loop, ckpt_path: Path) -> int:
    """The step to start from: the checkpoint's, with adapter, optimizer, scheduler and RNG states
    restored from it, else 0 with the torch RNG seeded."""
    if not ckpt_path.exists():
        torch.manual_seed(loop.cfg.seed)
        return 0
    state = torch.load(ckpt_path, map_location=loop.device, weights_only=False)
    set_peft_model_state_dict(loop.model, state["adapter"])
    loop.opt.load_state_dict(state["optimizer"])
    loop.sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"]["torch"])
    random.setstate(state["rng"]["python"])
    log.info("resuming from checkpoint at step %d", state["step"])
    return state["step"]


def _run_steps(loop: _Loop, blocks: Packed, start: int, ckpt_path: Path, progress: Progress | None,
               t0: float) -> tuple[int, float, int]:
    """Steps `start`..max_steps, checkpointing as configured; returns (tokens, last loss, skipped steps)."""
    cfg = loop.cfg
    tokens, loss_value, skipped = 0, float("nan"), 0
    autocast = torch.autocast(loop.device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.precision, loop.device))
    for step in range(start, cfg.max_steps):
        loss, step_tokens = _accumulate(loop, blocks, step, autocast)
        tokens += step_tokens
        norm = torch.nn.utils.clip_grad_norm_(loop.params, 1.0)
        if torch.isfinite(norm):
            loop.opt.step()
        else:
            # Clipping an inf gradient multiplies it by 0 (= NaN) and would poison every weight:
            # skip the step, as AMP's grad scaler does, and fail the run if it keeps happening.
            skipped += 1
            if skipped > max(2, cfg.max_steps // 10):
                raise TrainingFailed(f"non-finite gradients in {skipped} steps (last at step {step + 1})")
        loop.sched.step()
        loop.opt.zero_grad(set_to_none=True)
        loss_value = float(loss)
        if not torch.isfinite(loss):
            raise TrainingFailed(f"loss became {loss_value} at step {step + 1}")
        done = step + 1
        if done % cfg.checkpoint_every == 0 and done < cfg.max_steps:
            _save_checkpoint(loop.model, loop.opt, loop.sched, done, ckpt_path, cfg)
        if progress is not None:
            progress(done, cfg.max_steps, loss_value, tokens / (time.perf_counter() - t0))
    return tokens, loss_value, skipped


def _accumulate(loop: _Loop, blocks: Packed, step: int, autocast: Any) -> tuple[torch.Tensor, int]:
    """Backpropagate the step's micro-batches; returns the last one's loss and the tokens seen."""
    cfg = loop.cfg
    tokens = 0
    for micro in range(cfg.grad_accum):
        # Micro-batch k of step s is global micro-step s*accum+k: a pure function of the
        # seed, so resume stays exact with accumulation too.
        index = batch_indices(len(blocks), cfg.batch_size, step * cfg.grad_accum + micro, cfg.seed)
        batch = blocks.batch(index, loop.device)
        loss = lm_loss_backward(loop.model, batch, 1.0 / cfg.grad_accum, autocast)
        tokens += batch["input_ids"].numel()
    return loss, tokens


def _save_adapter(model: Any, out_dir: Path) -> None:
    """Save through a sibling temporary folder, so `out_dir` never holds a half-written adapter."""
    tmp_out = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp_out, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp_out))
    except (OSError, RuntimeError) as exc:
        shutil.rmtree(tmp_out, ignore_errors=True)
        raise TrainingFailed(write_failure("the adapter", tmp_out, exc)) from None
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp_out, out_dir)


LOSS_CHUNK = 256  # tokens per slice of the LM head: full logits for 8x512 tokens x 49k vocab are 0.8 GB


def _body_and_frozen_head(model: Any) -> tuple[Any, Any] | None:
    """(body, LM head) when the head is frozen (the sliced loss below never trains it), else None."""
    parts = body_and_head(model)
    if parts is None or any(p.requires_grad for p in parts[1].parameters()):
        return None
    return parts


def lm_loss_backward(model: Any, batch: dict[str, torch.Tensor], scale: float, autocast: Any) -> torch.Tensor:
    """Backpropagate `scale` x the mean next-token loss of `batch`; return the (detached) loss.

    The vocabulary projection is the largest activation in a small LM. Run the body once, then the
    frozen head and cross-entropy slice by slice, each slice backpropagated into the hidden states at
    once, and finally the body from the accumulated hidden-state gradient: the full logits never
    exist, and the numbers equal model(**batch).loss. Layouts we do not know take that plain path.
    Forwards run under `autocast`, backwards outside it (as torch.autocast asks).
    """
    parts = _body_and_frozen_head(model)
    if parts is None:
        with autocast:
            loss = model(**batch, use_cache=False).loss
        (loss * scale).backward()
        return loss.detach()
    body, head = parts
    targets = batch["labels"][:, 1:].reshape(-1)
    n_valid = int((targets != -100).sum())
    if n_valid == 0:  # nothing to learn from (a block of prompt tokens only): contributes no gradient
        return torch.zeros(())
    with autocast:
        hidden = body(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)[0]
    hidden_in = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    leaf = hidden_in.detach().requires_grad_(True)
    total = torch.zeros((), device=hidden.device)
    for i in range(0, leaf.shape[0], LOSS_CHUNK):
        with autocast:
            logits = head(leaf[i:i + LOSS_CHUNK])
        part = torch.nn.functional.cross_entropy(logits.float(), targets[i:i + LOSS_CHUNK], ignore_index=-100,
                                                 reduction="sum")
        (part * (scale / n_valid)).backward()
        total += part.detach()
    hidden_in.backward(leaf.grad)
    return total / n_valid
