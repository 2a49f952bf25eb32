"""One LoRA increment: warm-start from the parent adapter (or the bare base), pack, train, checkpoint.

A plain PyTorch loop rather than HF Trainer: it is short enough to read top to bottom, and it makes
resuming exact (the batch at step k is a pure function of the seed and k), which a redelivered
Celery task relies on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

from services.trainer.config import TrainConfig
from services.trainer.errors import TrainingFailed
from services.trainer.examples import IGNORE, ExampleSpec, Packed, lm, pack
from shared.checksums import sha256_folder
from shared.lm.base_model import load_base_model
from shared.lm.generation import body_and_head, use_bf16

log = logging.getLogger("medqa.trainer")

Progress = Callable[[int, int, float, float], None]  # step, total, loss, tokens/s
OnCheckpoint = Callable[[Path, int], None]  # checkpoint file, the step it resumes at


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
    processes: int = 1  # training processes (DDP ranks) that ran it
    # With record_blocks: the blocks each micro-batch trained on, [step, micro, [block indices]];
    # a multi-process run has them per rank (services/trainer/distributed.py).
    blocks: list | None = None
    blocks_by_rank: dict[int, list] | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


def batch_indices(n_blocks: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Blocks for `step`: epochs are seeded permutations laid end to end, so step k never depends
    on what ran before it (resume = jump to k)."""
    return block_order(n_blocks, seed, step * batch_size, batch_size)


def block_order(n_blocks: int, seed: int, start: int, count: int) -> list[int]:
    """Positions start..start+count of the run's block sequence (seeded permutations end to end)."""
    out = []
    for pos in range(start, start + count):
        epoch, offset = divmod(pos, n_blocks)
        perm = list(range(n_blocks))
        random.Random(seed * 100_003 + epoch).shuffle(perm)
        out.append(perm[offset])
    return out


@dataclass(frozen=True)
class Shard:
    """This process's share of the work: rank `rank` of `world` training processes. Each global
    micro-batch is batch_size x world consecutive positions of the block sequence, and rank r trains
    its r-th batch_size of them, so the ranks together see exactly the blocks that one process with
    batch_size x world would (DistributedSampler's contract, without a sampler). One process (the
    default) is the whole of it."""

    rank: int = 0
    world: int = 1
    ddp: Any = None  # DistributedDataParallel around the trained module, world > 1 (distributed.py)
    body: Any = None  # the module the sliced loss runs when `ddp` wraps the body only

    def micro_batch(self, n_blocks: int, batch_size: int, position: int, seed: int) -> list[int]:
        """This rank's blocks of the global micro-batch that starts at `position`."""
        return block_order(n_blocks, seed, position + self.rank * batch_size, batch_size)


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


def _save_checkpoint(model, opt, sched, step: int, path: Path, cfg: TrainConfig,  # type: ignore[no-untyped-def]
                     extra: dict | None = None) -> None:
    tmp = path.with_suffix(".tmp")
    try:
        torch.save({
            "step": step, "config": cfg.to_dict(), "adapter": get_peft_model_state_dict(model),
            "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "python": random.getstate()}, **(extra or {}),
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
    parent_adapter: Path | None = None, progress: Progress | None = None, record_blocks: bool = False,
    shard_for: Callable[[Any], Shard] | None = None, on_checkpoint: OnCheckpoint | None = None,
) -> TrainResult:
    """Train one increment. `shard_for` (services/trainer/distributed.py) makes this process one rank
    of several: it wraps the model for DDP once the checkpoint is loaded; rank 0 alone writes the
    checkpoints and the adapter. Without it, one process trains alone. `on_checkpoint(path, step)` runs
    after each checkpoint is written (the train task publishes it to the artifact store)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = work_dir / "checkpoint.pt"
    loop, blocks = _setup(base_spec, models_dir, examples, cfg, parent_adapter)
    start = _resume(loop, ckpt_path)
    if shard_for is not None:
        loop.shard = shard_for(loop.model)
    if start and loop.checkpoint_world != loop.shard.world:
        log.warning("checkpoint written by %d training processes, resumed by %d: the remaining steps take "
                    "%d blocks each", loop.checkpoint_world, loop.shard.world,
                    cfg.batch_size * cfg.grad_accum * loop.shard.world)
    if record_blocks:
        loop.seen = []
    loop.on_checkpoint = on_checkpoint
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
    if loop.shard.rank == 0:  # the other ranks hold the same weights: DDP keeps them equal
        _save_adapter(loop.model, out_dir)
    return TrainResult(adapter_dir=out_dir, sha256=sha256_folder(out_dir) if loop.shard.rank == 0 else "",
                       steps=cfg.max_steps - start, tokens=tokens, seconds=seconds, final_loss=loss_value,
                       resumed_from=start, skipped_steps=skipped, processes=loop.shard.world, blocks=loop.seen)


@dataclass
class _Loop:
    """What the training steps update: the PEFT model, its trainable parameters and their optimizer."""

    model: Any
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LambdaLR
    cfg: TrainConfig
    device: torch.device
    shard: Shard = field(default_factory=Shard)
    # Global block position where step `base_step` starts (a checkpoint's, else 0), and the blocks
    # trained, per micro-batch, when they are recorded.
    base_position: int = 0
    base_step: int = 0
    checkpoint_world: int = 1
    seen: list | None = None
    on_checkpoint: OnCheckpoint | None = None

    def position(self, step: int, micro: int) -> int:
        """Where micro-batch `micro` of `step` starts in the block sequence: micro-step s*accum+k of
        batch_size x world blocks, counted from the checkpoint's position (equal to that formula
        unless the checkpoint was written by a different number of processes)."""
        per_micro = self.cfg.batch_size * self.shard.world
        return self.base_position + ((step - self.base_step) * self.cfg.grad_accum + micro) * per_micro


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
    # Where the next block comes from. Checkpoints before multi-process training were one process's.
    loop.base_step = state["step"]
    loop.base_position = state.get("position", state["step"] * loop.cfg.grad_accum * loop.cfg.batch_size)
    loop.checkpoint_world = state.get("world", 1)
    log.info("resuming from checkpoint at step %d", state["step"])
    return state["step"]


def _run_steps(loop: _Loop, blocks: Packed, start: int, ckpt_path: Path, progress: Progress | None,
               t0: float) -> tuple[int, float, int]:
    """Steps `start`..max_steps, checkpointing as configured; returns (tokens, last loss, skipped steps)."""
    cfg, shard = loop.cfg, loop.shard
    tokens, loss_value, skipped = 0, float("nan"), 0
    autocast = torch.autocast(loop.device.type, dtype=torch.bfloat16, enabled=use_bf16(cfg.precision, loop.device))
    for step in range(start, cfg.max_steps):
        if shard.world > 1:  # dropout: a stream per rank and step, so a resume replays it
            torch.manual_seed((cfg.seed * 1_000_003 + step) * 1009 + shard.rank)
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
        if done % cfg.checkpoint_every == 0 and done < cfg.max_steps and shard.rank == 0:
            _save_checkpoint(loop.model, loop.opt, loop.sched, done, ckpt_path, cfg,
                             {"position": loop.position(done, 0), "world": shard.world})
            if loop.on_checkpoint is not None:
                loop.on_checkpoint(ckpt_path, done)
        if progress is not None:
            progress(done, cfg.max_steps, loss_value, tokens / (time.perf_counter() - t0))
    return tokens, loss_value, skipped


def _accumulate(loop: _Loop, blocks: Packed, step: int, autocast: Any) -> tuple[torch.Tensor, int]:
    """Backpropagate the step's micro-batches; returns the last one's loss and the tokens seen (by
    every rank together)."""
    cfg, shard = loop.cfg, loop.shard
    tokens = 0
    for micro in range(cfg.grad_accum):
        # Micro-batch k of step s is global micro-step s*accum+k: a pure function of the
        # seed, so resume stays exact with accumulation too.
        position = loop.position(step, micro)
        index = shard.micro_batch(len(blocks), cfg.batch_size, position, cfg.seed)
        if loop.seen is not None:
            loop.seen.append([step, micro, index])
        batch = blocks.batch(index, loop.device)
        if shard.world == 1:
            loss = lm_loss_backward(loop.model, batch, 1.0 / cfg.grad_accum, autocast)
        else:
            loss = _ddp_loss_backward(loop, blocks, batch, position, micro == cfg.grad_accum - 1, autocast)
        tokens += batch["input_ids"].numel() * shard.world
    return loss, tokens


def _ddp_loss_backward(loop: _Loop, blocks: Packed, batch: dict[str, torch.Tensor], position: int, last: bool,
                       autocast: Any) -> torch.Tensor:
    """One rank's share of a global micro-batch. The loss is normalised by the target tokens of the
    whole global micro-batch (every rank holds every block, so each counts them alike, without a
    collective) and scaled by the world size, which DDP's gradient average divides out again: the
    summed gradient is the one a single process gets from the whole global micro-batch. Gradients
    are all-reduced in the last micro-batch's backward only (no_sync before). Returns the global
    micro-batch's mean loss, the same on every rank (one scalar all-reduce), so every rank takes
    the same skip-or-fail decision."""
    cfg, shard = loop.cfg, loop.shard
    everyone = block_order(len(blocks), cfg.seed, position, cfg.batch_size * shard.world)
    n_total = int((blocks.labels[everyone][:, 1:] != IGNORE).sum())
    with contextlib.nullcontext() if last else shard.ddp.no_sync():
        loss = lm_loss_backward(shard.ddp if shard.body is None else loop.model, batch,
                                shard.world / cfg.grad_accum, autocast, body=shard.body, denominator=n_total)
    if last:
        torch.distributed.all_reduce(loss)
    return loss


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


def lm_loss_backward(model: Any, batch: dict[str, torch.Tensor], scale: float, autocast: Any, *,
                     body: Any = None, denominator: int | None = None) -> torch.Tensor:
    """Backpropagate `scale` x the mean next-token loss of `batch`; return the (detached) loss.

    One rank of several (distributed.py) passes `denominator`, the target tokens of the whole global
    micro-batch, to divide the summed loss by instead of this batch's own count, and `body`, the
    DDP-wrapped body to run; it always runs forward and backward, even without a target token of
    its own, since DDP's gradient all-reduce needs every rank in it.

    The vocabulary projection is the largest activation in a small LM. Run the body once, then the
    frozen head and cross-entropy slice by slice, each slice backpropagated into the hidden states at
    once, and finally the body from the accumulated hidden-state gradient: the full logits never
    exist, and the numbers equal model(**batch).loss. Layouts we do not know take that plain path.
    Forwards run under `autocast`, backwards outside it (as torch.autocast asks).
    """
    distributed = denominator is not None
    n_global = max(1, denominator or 0)
    parts = None if distributed and body is None else _body_and_frozen_head(model)
    if parts is None:
        with autocast:
            out = model(**batch, use_cache=False)
        if not distributed:
            loss = out.loss
            (loss * scale).backward()
            return loss.detach()
        n_local = int((batch["labels"][:, 1:] != -100).sum())
        # transformers' mean over no target token is 0/0: this rank then contributes zeros.
        loss = out.loss * (n_local / n_global) if n_local else out.logits.sum() * 0.0
        (loss * scale).backward()
        return loss.detach()
    body = body if body is not None else parts[0]
    head = parts[1]
    targets = batch["labels"][:, 1:].reshape(-1)
    n_valid = int((targets != -100).sum())
    if n_valid == 0 and not distributed:  # nothing to learn from (a block of prompt tokens only): no gradient
        return torch.zeros(())
    n_valid = n_global if distributed else n_valid
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
