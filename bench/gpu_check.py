"""GPU check of the trainer's CUDA paths (run on a lent H100/H200; prints one JSON line last).

Runs our own `train_lora` on the SmolLM2-135M architecture in three modes: bf16 LoRA, bf16 LoRA
with gradient checkpointing, and 4-bit QLoRA (bitsandbytes NF4), then provokes an out-of-memory to
check it fails the run with a clear reason. Reports steady-state tokens/s, peak GPU memory and MFU.
On a host with several GPUs it also trains bf16 LoRA by one DDP rank per GPU (tokens/s of them all).

Weights: the device cannot take the 540 MB converted checkpoint (64 MiB transfer limit), so the
model is SmolLM2's own config and tokenizer with random weights. Throughput, memory and the code
paths do not depend on the weight values; learning quality is measured elsewhere (bench/continual).
Random init zeroes the embedding of the pad token, which is SmolLM2's EOS: no trained model has
such a row, and under the trainer of the 2026-11-26 run a block opening with EOS overflowed its
gradient (RMSNorm at an all-zero state: the 3 skipped steps of every mode; tests/test_trainer.py),
so that row is drawn like the others.

Usage: python bench/gpu_check.py --model-dir DIR [--steps 40] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.devkit.synth import generate_articles  # noqa: E402
from services.trainer.config import TrainConfig  # noqa: E402
from services.trainer.train import TrainingFailed, train_lora  # noqa: E402

PEAK_BF16_FLOPS = 989e12  # H100 / H200 SXM dense bf16


def random_weights(model_dir: Path, dest: Path) -> Path:
    """SmolLM2's architecture and tokenizer with freshly initialised weights, saved as a local model."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if (dest / "model.safetensors").exists():
        return dest
    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        zero = ~emb.any(dim=1)  # the padding_idx row
        emb[zero] = (torch.randn(int(zero.sum()), emb.shape[1]) * config.initializer_range).to(emb.dtype)
    assert emb.any(dim=1).all()
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(dest)
    return dest


def measure(name: str, base: Path, texts: list[str], cfg: TrainConfig, work: Path) -> dict:
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    marks: list[tuple[int, float]] = []
    losses: list[float] = []

    def progress(step: int, total: int, loss: float, tps: float) -> None:
        torch.cuda.synchronize()
        marks.append((step, time.perf_counter()))
        losses.append(round(loss, 3))

    try:
        res = train_lora(base_spec=str(base), models_dir=work / "models", examples=texts, cfg=cfg,
                         out_dir=work / f"{name}-adapter", work_dir=work / f"{name}-work", progress=progress)
    except TrainingFailed as exc:
        return {"mode": name, "failed": str(exc)[:300], "losses": losses,
                "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}
    warm = 5  # skip the first steps: kernel selection, allocator growth
    (s0, t0), (s1, t1) = marks[warm], marks[-1]
    tokens_per_s = (s1 - s0) * cfg.batch_size * cfg.max_length / (t1 - t0)
    from transformers import AutoConfig

    n_params = _param_count(AutoConfig.from_pretrained(base))
    return {
        "mode": name, "batch": f"{cfg.batch_size}x{cfg.max_length}", "steps": res.steps,
        "final_loss": round(res.final_loss, 3), "skipped_steps": res.skipped_steps, "losses": losses[::5],
        "tokens_per_s": round(tokens_per_s),
        "step_ms": round(1000 * (t1 - t0) / (s1 - s0), 1),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
        # 6N per token is the usual training count; LoRA skips frozen weight gradients (about 4N).
        "mfu_6n": round(6 * n_params * tokens_per_s / PEAK_BF16_FLOPS, 4),
        "mfu_4n": round(4 * n_params * tokens_per_s / PEAK_BF16_FLOPS, 4),
    }


def measure_ddp(name: str, base: Path, texts: list[str], cfg: TrainConfig, work: Path, processes: int) -> dict:
    """The same increment by `processes` DDP ranks, one per GPU (services/trainer/distributed.py):
    steady-state tokens/s of all of them, timed where rank 0's progress arrives."""
    from services.trainer.distributed import train_lora_ddp

    marks: list[tuple[int, float]] = []
    losses: list[float] = []

    def progress(step: int, total: int, loss: float, tps: float) -> None:
        marks.append((step, time.perf_counter()))
        losses.append(round(loss, 3))

    try:
        res = train_lora_ddp(base_spec=str(base), models_dir=work / "models", examples=texts, cfg=cfg,
                             out_dir=work / f"{name}-adapter", work_dir=work / f"{name}-work", processes=processes,
                             progress=progress)
    except TrainingFailed as exc:
        return {"mode": name, "failed": str(exc)[:300], "losses": losses}
    warm = 5
    (s0, t0), (s1, t1) = marks[warm], marks[-1]
    tokens_per_s = (s1 - s0) * cfg.batch_size * processes * cfg.max_length / (t1 - t0)
    return {"mode": name, "processes": processes, "batch": f"{processes}x{cfg.batch_size}x{cfg.max_length}",
            "steps": res.steps, "final_loss": round(res.final_loss, 3), "skipped_steps": res.skipped_steps,
            "losses": losses[::5], "tokens_per_s": round(tokens_per_s),
            "tokens_per_s_per_gpu": round(tokens_per_s / processes),
            "step_ms": round(1000 * (t1 - t0) / (s1 - s0), 1)}


def _param_count(config) -> int:  # type: ignore[no-untyped-def]
    h, i, n, v = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    kv = h * config.num_key_value_heads // config.num_attention_heads
    return n * (2 * h * h + 2 * h * kv + 3 * h * i) + v * h


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--work", type=Path, default=Path("/tmp/medqa-gpu"))
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    assert torch.cuda.is_available(), "this check needs CUDA"
    base = random_weights(args.model_dir, args.work / "smol-random-no-zero-row")
    texts = [f"{a['title']}\n{a['abstract']}" for a in generate_articles(3000, seed=1)]
    common = dict(max_steps=args.steps, max_length=512, checkpoint_every=10_000, precision="bf16",
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    results = [
        measure("bf16-lora", base, texts, TrainConfig(batch_size=32, **common), args.work),
        measure("bf16-lora-gradckpt", base, texts,
                TrainConfig(batch_size=32, gradient_checkpointing=True, **common), args.work),
        measure("qlora-4bit", base, texts, TrainConfig(batch_size=32, quantization="4bit", **common), args.work),
        measure("fp32-lora", base, texts, TrainConfig(batch_size=32, **{**common, "precision": "fp32"}), args.work),
        *([measure_ddp("bf16-lora-ddp", base, texts, TrainConfig(batch_size=32, **common), args.work,
                       torch.cuda.device_count())] if torch.cuda.device_count() > 1 else []),
        measure("oom-probe", base, texts, TrainConfig(batch_size=8192, **{**common, "max_steps": 2}), args.work),
    ]
    doc = {"bench": "gpu_check", "device": torch.cuda.get_device_name(0), "torch": torch.__version__,
           "weights": "SmolLM2-135M architecture, random init, no all-zero embedding row", "results": results}
    if args.out:
        args.out.write_text(json.dumps(doc, indent=2))
    print(json.dumps(doc))


if __name__ == "__main__":
    main()
