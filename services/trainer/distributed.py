"""One increment trained by several processes: DDP over every GPU of the host (or gloo on CPU).

The train task (tasks.py) calls `train_lora_ddp` when MEDQA_TRAIN_PROCESSES > 1. It stays the one
process the broker knows: it keeps the task's lease and writes the run's heartbeat and progress,
which rank 0 sends it over a pipe. It starts the ranks as fresh interpreters
(`python -m services.trainer.distributed JOB`, torchrun's environment contract: RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), because a Celery pool process is a daemon and may not fork
multiprocessing children, and because CUDA does not survive a fork.

Each rank runs train.py's own loop (`train_lora` with a `Shard`): the same model, checkpoint and
step code as one process, its share of every global micro-batch (train.Shard), the LoRA gradients
all-reduced by DistributedDataParallel, and the same skip-or-fail decision on every rank. Rank 0
alone writes the checkpoints and the adapter; every rank resumes from the checkpoint. Data
parallelism (DDP), not sharded parameters (FSDP): LoRA on models of this size (135M to a few
billion parameters) fits one GPU with room to spare, and only the adapter's gradients (a few MB)
cross between GPUs.

GPUs: rank r sees only the r-th visible GPU (CUDA_VISIBLE_DEVICES), so "cuda" and QLoRA's device 0
are its own; NCCL among them. On CPU, gloo, the cores split among the ranks.
"""

from __future__ import annotations

import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from services.trainer.config import TrainConfig
from services.trainer.errors import TrainingFailed
from services.trainer.examples import ExampleSpec, lm

if TYPE_CHECKING:
    from services.trainer.train import OnCheckpoint, Progress, Shard, TrainResult

log = logging.getLogger("medqa.trainer")
ROOT = Path(__file__).resolve().parents[2]
STOP_GRACE_S = 10.0  # SIGTERM, then this long before SIGKILL


def train_lora_ddp(
    *, base_spec: str, models_dir: Path, examples: list[ExampleSpec] | list[str], cfg: TrainConfig, out_dir: Path,
    work_dir: Path, processes: int, parent_adapter: Path | None = None, progress: Progress | None = None,
    record_blocks: bool = False, on_checkpoint: OnCheckpoint | None = None,
) -> TrainResult:
    """`train_lora` by `processes` ranks: each trains cfg.batch_size blocks of every micro-batch, so
    a step takes batch_size x processes x grad_accum blocks. Raises TrainingFailed with the first
    rank's reason if any rank fails (the others are stopped), or if this host has fewer GPUs than
    processes."""
    from services.trainer.train import TrainResult

    if processes < 2:
        raise ValueError("train_lora_ddp needs 2 processes or more; train_lora trains alone")
    work_dir.mkdir(parents=True, exist_ok=True)
    gpus = _gpus(processes)
    job = work_dir / "ddp-job.json"
    job.write_text(json.dumps({
        "base_spec": base_spec, "models_dir": str(models_dir), "cfg": cfg.to_dict(), "out_dir": str(out_dir),
        "work_dir": str(work_dir), "parent_adapter": str(parent_adapter) if parent_adapter else None,
        "record_blocks": record_blocks,
        "examples": [asdict(lm(e) if isinstance(e, str) else e) for e in examples]}))
    for stale in work_dir.glob("blocks-rank*.json"):
        stale.unlink()
    read_fd, write_fd = os.pipe()
    procs: list[subprocess.Popen] = []
    try:
        port = _free_port()
        for rank in range(processes):
            procs.append(_start_rank(rank, processes, port, job, write_fd, gpus, work_dir))
        os.close(write_fd)
        write_fd = -1
        done = _watch(procs, read_fd, progress, work_dir, on_checkpoint)
    finally:
        _stop(procs)
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
    blocks = ({rank: json.loads((work_dir / f"blocks-rank{rank}.json").read_text()) for rank in range(processes)}
              if record_blocks else None)
    return TrainResult(adapter_dir=out_dir, sha256=done["sha256"], steps=done["steps"], tokens=done["tokens"],
                       seconds=done["seconds"], final_loss=done["final_loss"], resumed_from=done["resumed_from"],
                       skipped_steps=done["skipped_steps"], processes=processes, blocks_by_rank=blocks)


def _gpus(processes: int) -> list[str] | None:
    """The GPU each rank gets (a CUDA_VISIBLE_DEVICES entry), or None on a host without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [d.strip() for d in visible.split(",") if d.strip()] if visible else [
        str(i) for i in range(torch.cuda.device_count())]
    if processes > len(ids):
        raise TrainingFailed(f"MEDQA_TRAIN_PROCESSES={processes} but this host has {len(ids)} GPU(s) visible; "
                             "NCCL takes one process per GPU: set it to the GPU count")
    return ids[:processes]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_rank(rank: int, world: int, port: int, job: Path, write_fd: int, gpus: list[str] | None,
                work_dir: Path) -> subprocess.Popen:
    env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
           "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
           "MEDQA_DDP_FD": str(write_fd), "MEDQA_DDP_PARENT": str(os.getpid()),
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    if gpus is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpus[rank]
    elif "OMP_NUM_THREADS" not in os.environ:  # CPU ranks share the cores instead of each taking all
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world))
    with open(work_dir / f"rank{rank}.log", "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "services.trainer.distributed", str(job)], env=env,
                                pass_fds=(write_fd,), stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)


def _watch(procs: list[subprocess.Popen], read_fd: int, progress: Progress | None, work_dir: Path,
           on_checkpoint: OnCheckpoint | None = None) -> dict:
    """Relay rank 0's progress and checkpoints until every rank has exited; returns rank 0's result or raises
    TrainingFailed with the reason a rank gave (a training failure rather than the broken
    connections it then causes in the other ranks), else the exit status and log tail of the first
    rank to die."""
    buf, done, errors, eof = b"", None, [], False
    deadline = None  # once something failed: how long the other ranks' last words are awaited
    while True:
        if select.select([read_fd], [], [], 0.5)[0]:
            chunk = os.read(read_fd, 65536)
            eof = not chunk
            *lines, buf = (buf + chunk).split(b"\n")
            for line in lines:
                msg = json.loads(line)
                if "progress" in msg and progress is not None:
                    progress(*msg["progress"])
                elif "checkpoint" in msg and on_checkpoint is not None:
                    # Rank 0 trains on meanwhile; a checkpoint it replaces while this one is being
                    # published fails the publisher's sha256 check and waits for the next.
                    on_checkpoint(Path(msg["checkpoint"][0]), msg["checkpoint"][1])
                elif "done" in msg:
                    done = msg["done"]
                elif "error" in msg:
                    errors.append(msg)
        if eof:  # every rank has closed the pipe
            for p in procs:
                p.wait()
            if done is not None:
                return done
            raise TrainingFailed(_reason(errors, procs, work_dir))
        if done is None and (errors or any(p.poll() not in (None, 0) for p in procs)):
            deadline = deadline or time.monotonic() + 1.0
            if time.monotonic() >= deadline:
                raise TrainingFailed(_reason(errors, procs, work_dir))


def _reason(errors: list[dict], procs: list[subprocess.Popen], work_dir: Path) -> str:
    if errors:
        return str(next((e for e in errors if e.get("kind") == "training"), errors[0])["error"])
    rank, code = next(((r, p.poll()) for r, p in enumerate(procs) if p.poll() not in (None, 0)), (0, None))
    log_file = work_dir / f"rank{rank}.log"
    tail = " | ".join(log_file.read_text(errors="replace").strip().splitlines()[-3:]) if log_file.exists() else ""
    return f"training process {rank} of {len(procs)} exited with status {code}: {tail}"


def _stop(procs: list[subprocess.Popen]) -> None:
    """Stop the ranks still running (a failed peer, an interrupted or failed parent)."""
    alive = [p for p in procs if p.poll() is None]
    for p in alive:
        p.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for p in alive:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


# ------------------------------------------------------------------------------------------- a rank


def _die_with_parent() -> None:
    """A rank outlives no parent: a killed worker's run is redelivered and resumed from the
    checkpoint, which an orphaned rank 0 would still be writing."""
    parent = int(os.environ.get("MEDQA_DDP_PARENT", "0"))
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass
    if parent and os.getppid() != parent:  # the parent died before that took effect
        os._exit(1)


def shard_for(rank: int, world: int) -> Any:
    """Wraps the loaded model for DDP: returns train.Shard's factory for `train_lora`."""

    def wrap(model: Any) -> Shard:
        import torch
        from torch.nn.parallel import DistributedDataParallel

        from services.trainer.train import Shard, _body_and_frozen_head

        parts = _body_and_frozen_head(model)
        module = parts[0] if parts is not None else model  # the body holds every trained weight
        # Frozen weights and buffers come from the same files on every rank: neither broadcast at
        # the start nor checked, only the trained ones are.
        frozen = [n for n, p in module.named_parameters() if not p.requires_grad] + [
            n for n, _ in module.named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, frozen)
        ddp = DistributedDataParallel(module, device_ids=[0] if torch.cuda.is_available() else None,
                                      broadcast_buffers=False)
        return Shard(rank=rank, world=world, ddp=ddp, body=ddp if parts is not None else None)

    return wrap


def _rank_main(job_path: Path) -> int:
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    _die_with_parent()
    channel = os.fdopen(int(os.environ["MEDQA_DDP_FD"]), "w", buffering=1)

    def send(msg: dict) -> None:  # one line each, under PIPE_BUF: ranks' lines never interleave
        channel.write(json.dumps(msg) + "\n")
        channel.flush()

    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s rank {rank} %(name)s %(levelname)s %(message)s")
    import torch
    import torch.distributed as dist

    from services.trainer.train import train_lora

    job = json.loads(job_path.read_text())
    if torch.cuda.is_available():
        torch.cuda.set_device(0)  # the one GPU this rank sees
    else:
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend, rank=rank, world_size=world)
    log.info("rank %d of %d up (%s%s)", rank, world, backend,
             f", GPU {os.environ.get('CUDA_VISIBLE_DEVICES')}" if backend == "nccl" else "")
    try:
        res = train_lora(
            base_spec=job["base_spec"], models_dir=Path(job["models_dir"]), cfg=TrainConfig.from_dict(job["cfg"]),
            examples=[ExampleSpec(**e) for e in job["examples"]], out_dir=Path(job["out_dir"]),
            work_dir=Path(job["work_dir"]),
            parent_adapter=Path(job["parent_adapter"]) if job["parent_adapter"] else None,
            progress=(lambda *a: send({"progress": list(a)})) if rank == 0 else None,
            on_checkpoint=(lambda path, step: send({"checkpoint": [str(path), step]})) if rank == 0 else None,
            record_blocks=job["record_blocks"], shard_for=shard_for(rank, world))
        if res.blocks is not None:
            (Path(job["work_dir"]) / f"blocks-rank{rank}.json").write_text(json.dumps(res.blocks))
        log.info("rank %d done: %d steps, final loss %.4f", rank, res.steps, res.final_loss)
        if rank == 0:
            send({"done": {"sha256": res.sha256, "steps": res.steps, "tokens": res.tokens, "seconds": res.seconds,
                           "final_loss": res.final_loss, "resumed_from": res.resumed_from,
                           "skipped_steps": res.skipped_steps}})
        return 0
    except TrainingFailed as exc:
        send({"error": str(exc), "kind": "training", "rank": rank})
    except BaseException as exc:  # noqa: BLE001 - the parent records it whole; this process ends here
        log.error("rank %d failed: %s", rank, traceback.format_exc())
        send({"error": f"training process {rank}: {type(exc).__name__}: {str(exc)[:500]}", "kind": "crash",
              "rank": rank})
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 1


if __name__ == "__main__":
    code = _rank_main(Path(sys.argv[1]))
    logging.shutdown()
    os._exit(code)  # every file is written and closed: skip the interpreter's seconds-long teardown
