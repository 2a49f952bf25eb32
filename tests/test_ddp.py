"""Multi-process (DDP) increments on CPU (gloo), on the dev kit's tiny GPT-2: each rank trains its
share of every global micro-batch, together the blocks one process trains at the same effective
batch, with the same losses; a checkpoint is resumed by every rank; the train task with
MEDQA_TRAIN_PROCESSES=2 makes one version. The rank processes start in about 5 to 10 s each (torch,
transformers and peft imports), so these tests run three such launches and no more."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY_GPT2
from safetensors.torch import load_file

from services.trainer.config import TrainConfig
from services.trainer.errors import TrainingFailed
from services.trainer.examples import lm, qa
from services.trainer.train import Shard, batch_indices, train_lora

# LM examples (a loss on every token) and QA examples (on the answer only): the two ranks of a
# micro-batch then hold different numbers of target tokens, which a per-rank mean would weigh wrong.
EXAMPLES = [lm(f"Patient cohort {i} received treatment {i % 7} and showed outcome {i % 5} after follow-up. " * 2)
            for i in range(40)] + [
    qa(f"Did treatment {i % 7} help cohort {i}?", f"It changed outcome {i % 5}.\nAnswer: yes",
       f"Cohort {i} notes: follow-up of {i} months.") for i in range(30)]
# Six steps of 2 micro-batches; each process trains 2 blocks a micro-batch, the single process 4.
COMMON = dict(max_steps=6, grad_accum=2, max_length=64, learning_rate=5e-3, checkpoint_every=3,
              precision="fp32", lora_dropout=0.0)


@pytest.fixture(scope="module")
def tiny_no_dropout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The tiny GPT-2 with its dropout off (0.1 in its config): runs compare float for float."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-gpt2-no-dropout"
    shutil.copytree(TINY_GPT2, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(attn_pdrop=0.0, embd_pdrop=0.0, resid_pdrop=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


@pytest.fixture(scope="module")
def one_process(tiny_no_dropout, model_cache, tmp_path_factory):
    """The reference: one process, 4 blocks per micro-batch; its losses per step, and its work folder
    (a checkpoint at step 3)."""
    root = tmp_path_factory.mktemp("one")
    losses: list[float] = []
    res = train_lora(base_spec=tiny_no_dropout, models_dir=model_cache, examples=EXAMPLES,
                     cfg=TrainConfig(batch_size=4, **COMMON), out_dir=root / "adapter", work_dir=root / "work",
                     record_blocks=True, progress=lambda step, total, loss, tps: losses.append(loss))
    return res, losses, root / "work"


def _ddp(base: str, models: Path, folder: Path, losses: list[float]):  # type: ignore[no-untyped-def]
    from services.trainer.distributed import train_lora_ddp

    return train_lora_ddp(base_spec=base, models_dir=models, examples=EXAMPLES, cfg=TrainConfig(batch_size=2, **COMMON),
                          out_dir=folder / "adapter", work_dir=folder / "work", processes=2, record_blocks=True,
                          progress=lambda step, total, loss, tps: losses.append(loss))


def _adapter(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


# Tolerances. Both runs do the same fp32 arithmetic except its order: each rank sums the token
# losses (and gradients) of its 2 blocks and the all-reduce adds the two halves, where one process
# sums 4 blocks at once. Measured on a 2-core x86 CPU: losses within 6.4e-8 relative (under one
# float32 ulp), adapter weights within 1.8e-6 absolute (largest weight 0.14). The bounds below leave
# 15x (weights) to 150x (losses) for other CPUs' summation blocking; a per-rank mean instead of the
# global one (the ranks hold unequal numbers of answer tokens) moved the first loss by 2e-4
# relative, and a missing all-reduce would leave each rank with its own weights.
LOSS_RTOL = 1e-5
WEIGHT_ATOL = 3e-5


@pytest.mark.slow
def test_two_processes_train_the_blocks_and_losses_of_one(one_process, tiny_no_dropout, model_cache, tmp_path):
    single, single_losses, _ = one_process
    losses: list[float] = []
    two = _ddp(tiny_no_dropout, model_cache, tmp_path, losses)
    ranks = two.blocks_by_rank
    assert sorted(ranks) == [0, 1] and len(ranks[0]) == len(ranks[1]) == len(single.blocks) == 6 * 2
    for (step, micro, rank0), (_, _, rank1), (s_step, s_micro, one) in zip(ranks[0], ranks[1], single.blocks,
                                                                           strict=True):
        assert (step, micro) == (s_step, s_micro)
        assert len(rank0) == len(rank1) == 2 and not set(rank0) & set(rank1)
        assert rank0 + rank1 == one  # rank 0 the first half of the global micro-batch, rank 1 the second
    assert two.tokens == single.tokens == 6 * 2 * 4 * 64 and two.processes == 2 and two.skipped_steps == 0
    assert len(losses) == 6 and losses == pytest.approx(single_losses, rel=LOSS_RTOL)
    a, b = _adapter(tmp_path / "adapter"), _adapter(single.adapter_dir)
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=0, atol=WEIGHT_ATOL) for k in a)
    assert any(b[k].abs().max() > 100 * WEIGHT_ATOL for k in b if "lora_B" in k)  # it did train
    # Rank 0 alone wrote the checkpoint: step 3 of 6, the global position it had reached, two ranks.
    state = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False)
    assert (state["step"], state["position"], state["world"]) == (3, 3 * 2 * 4, 2)


@pytest.mark.slow
def test_every_rank_resumes_from_the_checkpoint(one_process, tiny_no_dropout, model_cache, tmp_path):
    """A redelivered run: both ranks load the checkpoint (here the one-process run's at step 3, its
    blocks and weights the same as two processes' there) and end where the uninterrupted run ends."""
    single, single_losses, single_work = one_process
    (tmp_path / "work").mkdir()
    shutil.copy(single_work / "checkpoint.pt", tmp_path / "work" / "checkpoint.pt")
    losses: list[float] = []
    resumed = _ddp(tiny_no_dropout, model_cache, tmp_path, losses)
    assert resumed.resumed_from == 3 and resumed.steps == 3
    assert [b[:2] for b in resumed.blocks_by_rank[1]] == [[s, m] for s in (3, 4, 5) for m in (0, 1)]
    for (_, _, rank0), (_, _, rank1), (_, _, one) in zip(*resumed.blocks_by_rank.values(), single.blocks[6:],
                                                         strict=True):
        assert rank0 + rank1 == one
    assert losses == pytest.approx(single_losses[3:], rel=LOSS_RTOL)
    a, b = _adapter(tmp_path / "adapter"), _adapter(single.adapter_dir)
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=WEIGHT_ATOL) for k in a)


@pytest.mark.slow
def test_the_train_task_with_two_processes_makes_one_version(medqa_env, synth_dir):
    """The task keeps its part (claim, progress and heartbeat from rank 0, one version per run);
    ingest, the trigger and the version's evaluation run elsewhere, so their events are held."""
    from sqlmodel import select

    from services.ingest.tasks import ingest_path
    from services.trainer.tasks import train_run
    from services.trainer.trigger import maybe_queue_run
    from shared.checksums import sha256_file
    from shared.db import session_scope
    from shared.pipeline import Event, held_events
    from shared.settings import get_settings
    from shared.tables import ModelVersion, RunStatus, TrainingRun

    medqa_env(train_processes="2", keep_run_checkpoints="1")
    with held_events():
        ingest_path(synth_dir)
        run_id = maybe_queue_run("default", force=True)
    assert run_id is not None
    with held_events() as after:
        version_id = train_run(run_id)
        assert train_run(run_id) == version_id  # a duplicate message: the same version, nothing trained
    assert version_id is not None and (Event.VERSION_CREATED, (version_id,)) in after
    with session_scope() as s:
        run = s.get(TrainingRun, run_id)
        assert run.status == RunStatus.succeeded and run.step == run.total_steps == 6 and run.loss == run.loss
        assert run.heartbeat_at is not None and run.tokens_per_s > 0
        version = s.exec(select(ModelVersion)).one()
        assert version.id == version_id and version.metrics["train_processes"] == 2
        assert version.metrics["tokens"] == 6 * 2 * 2 * 64  # batch 2 x 2 processes x 64 tokens, 6 steps
        assert Path(version.adapter_path, "adapter_model.safetensors").exists()
    work = get_settings().artifacts / "runs" / str(run_id)
    assert torch.load(work / "checkpoint.pt", weights_only=False)["world"] == 2
    # Rank 0's checkpoint reached the task, which published it (on a local store: hashed in place).
    assert (run.checkpoint_step, run.checkpoint_path) == (3, str(work / "checkpoint.pt"))
    assert run.checkpoint_sha256 == sha256_file(work / "checkpoint.pt")
    assert {p.name for p in work.glob("rank*.log")} == {"rank0.log", "rank1.log"}


# ---------------------------------------------------------------------------- without rank processes


def test_ranks_split_each_global_micro_batch_as_one_process_takes_it():
    for world in (2, 3):
        for micro_step in range(7):  # crosses epochs of the 10 blocks
            shards = [Shard(rank=r, world=world).micro_batch(10, 2, micro_step * 2 * world, seed=5)
                      for r in range(world)]
            assert sum(shards, []) == batch_indices(10, 2 * world, micro_step, seed=5)
    assert Shard().micro_batch(10, 4, 3 * 4, seed=5) == batch_indices(10, 4, 3, seed=5)  # one process: unchanged


def test_more_processes_than_gpus_is_a_clear_failure(monkeypatch):
    from services.trainer import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    with pytest.raises(TrainingFailed, match="MEDQA_TRAIN_PROCESSES=2 but this host has 1 GPU"):
        distributed._gpus(2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert distributed._gpus(2) == ["3", "5"]  # rank r gets the r-th visible GPU


def _fake_ranks(tmp_path: Path, scripts: list[str]):  # type: ignore[no-untyped-def]
    """Processes standing in for ranks: each runs `script` with `fd`, the pipe to the parent."""
    read_fd, write_fd = os.pipe()
    procs = []
    for rank, script in enumerate(scripts):
        with open(tmp_path / f"rank{rank}.log", "wb") as out:
            code = f"import json, os, sys, time; fd = {write_fd}\n{script}"
            procs.append(subprocess.Popen([sys.executable, "-c", code], pass_fds=(write_fd,), stdout=out,
                                          stderr=subprocess.STDOUT))
    os.close(write_fd)
    return procs, read_fd


def test_a_failing_rank_fails_the_run_with_its_reason_and_stops_the_others(tmp_path):
    from services.trainer.distributed import _stop, _watch

    send = "os.write(fd, (json.dumps({msg}) + '\\n').encode())"
    oom = "{'error': 'GPU out of memory at batch 2x64', 'kind': 'training', 'rank': 1}"
    procs, read_fd = _fake_ranks(tmp_path, [
        send.format(msg="{'progress': [1, 6, 7.5, 100.0]}") + "\ntime.sleep(600)",  # rank 0: waits in a collective
        send.format(msg=oom) + "\nsys.exit(1)",
    ])
    seen = []
    try:
        with pytest.raises(TrainingFailed, match="GPU out of memory at batch 2x64"):
            _watch(procs, read_fd, lambda *a: seen.append(a), tmp_path)
    finally:
        _stop(procs)
        os.close(read_fd)
    assert seen == [(1, 6, 7.5, 100.0)] and all(p.returncode is not None for p in procs)
    procs, read_fd = _fake_ranks(tmp_path, ["time.sleep(600)", "print('Segmentation fault'); sys.exit(139)"])
    try:
        with pytest.raises(TrainingFailed, match="training process 1 of 2 exited with status 139: Segmentation fault"):
            _watch(procs, read_fd, None, tmp_path)
    finally:
        _stop(procs)
        os.close(read_fd)
