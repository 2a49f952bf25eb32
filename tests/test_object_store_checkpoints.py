"""Checkpoints on object storage (moto's S3 server over HTTP, as MinIO): a run interrupted on one host
resumes on another, whose disk holds nothing of it, from the checkpoint it last published; a checkpoint
object that no longer matches its sha256 is refused and the run trains from step 0 instead."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
from s3kit import moto_server, s3_settings, s3fs_client
from sqlmodel import select
from typer.testing import CliRunner

import services.trainer.tasks as trainer_tasks
from services.cli import app
from services.devkit.synth import write_corpus
from services.ingest.tasks import ingest_path
from services.trainer.tasks import train_run
from services.trainer.trigger import maybe_queue_run
from shared.artifacts import cache_dir
from shared.db import session_scope
from shared.settings import get_settings
from shared.tables import ModelVersion, RunStatus, TrainingRun


class Killed(BaseException):
    """The worker's death at a step (BaseException: nothing on the way catches it, as with a SIGKILL)."""


def _interrupted_run(monkeypatch: pytest.MonkeyPatch, corpus, at_step: int) -> int:  # type: ignore[no-untyped-def]
    """Ingest `corpus`, queue a run and kill its training at `at_step`; returns the run id."""
    ingest_path(corpus)
    real = trainer_tasks._progress_writer

    def dies(run_id: int):  # type: ignore[no-untyped-def]
        write = real(run_id)

        def progress(step: int, total: int, loss: float, tps: float) -> None:
            if step == at_step:
                raise Killed
            write(step, total, loss, tps)
        return progress

    monkeypatch.setattr(trainer_tasks, "_progress_writer", dies)
    with pytest.raises(Killed):
        maybe_queue_run("default", force=True)  # eager: the run trains inline
    monkeypatch.setattr(trainer_tasks, "_progress_writer", real)
    with session_scope() as s:
        run = s.exec(select(TrainingRun).order_by(TrainingRun.id.desc())).first()  # type: ignore[union-attr]
        assert run is not None and run.status == RunStatus.running
        return run.id  # type: ignore[return-value]


def _another_host() -> None:
    """Nothing of the run on the local disk: no work folder, no fetched artifacts."""
    settings = get_settings()
    shutil.rmtree(settings.artifacts / "runs", ignore_errors=True)
    shutil.rmtree(cache_dir(settings), ignore_errors=True)


@pytest.mark.slow
def test_a_run_resumes_on_another_host_from_its_published_checkpoint(medqa_env, tmp_path, monkeypatch, caplog):
    with moto_server() as endpoint:
        s3 = s3fs_client(endpoint)
        s3.mkdir("medqa")
        medqa_env(**s3_settings(endpoint, "s3://medqa/artifacts"), train_max_steps="9", checkpoint_every="3",
                  trigger_min_new="100000")
        corpora = [write_corpus(tmp_path / f"c{n}", files=1, per_file=40, seed=n + 1,
                                start_pmid=70_000_000 + n * 1000)[0] for n in range(2)]

        caplog.set_level(logging.WARNING, logger="medqa")  # a failed publish says why, in the assertion below
        run_id = _interrupted_run(monkeypatch, corpora[0], at_step=7)
        with session_scope() as s:
            run = s.get(TrainingRun, run_id)
            assert run is not None
            assert (run.checkpoint_step, run.checkpoint_path) == (
                6, f"s3://medqa/artifacts/runs/{run_id}/checkpoint-0000006.pt"), caplog.text[-3000:]
        # The step-3 checkpoint was removed once the row named step 6's: one object per run.
        assert [p.rsplit("/", 1)[-1] for p in s3.find(f"medqa/artifacts/runs/{run_id}")] == ["checkpoint-0000006.pt"]
        listed = CliRunner().invoke(app, ["runs", "--json"])
        assert listed.exit_code == 0, listed.output
        row = next(r for r in json.loads(listed.stdout) if r["id"] == run_id)
        assert (row["status"], row["checkpoint_step"]) == ("running", 6)

        _another_host()
        version_id = train_run(run_id)
        with session_scope() as s:
            version = s.get(ModelVersion, version_id)
            assert version is not None and version.metrics["resumed_from_step"] == 6, caplog.text[-3000:]
            run = s.get(TrainingRun, run_id)
            assert run is not None and run.status == RunStatus.succeeded
            assert run.checkpoint_sha256 is None  # a finished run's checkpoint is pruned (keep 0) ...
        assert s3.find(f"medqa/artifacts/runs/{run_id}") == []  # ... from the bucket too

        # A checkpoint object changed after it was published: refused by sha256, the run trains from 0.
        run_id = _interrupted_run(monkeypatch, corpora[1], at_step=5)
        (key,) = s3.find(f"medqa/artifacts/runs/{run_id}")
        data = s3.cat_file(key)
        s3.pipe_file(key, data[:-8] + bytes(8))
        _another_host()
        version_id = train_run(run_id)
        with session_scope() as s:
            version = s.get(ModelVersion, version_id)
            assert version is not None and version.metrics["resumed_from_step"] == 0
        assert f"training run {run_id}: its checkpoint at step 3 cannot be used" in caplog.text
        assert "corrupted" in caplog.text and "resuming from step 0" in caplog.text
