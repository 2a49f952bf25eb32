"""A full artifact disk: a small tmpfs as MEDQA_ARTIFACT_DIR, filled to the last byte. The run fails
with a reason that names the disk, leaves no temporary files, releases its abstracts; once space is
freed, `medqa runs retry` trains them. (Mounting needs root, as CI runs; elsewhere the test skips.)"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from procs import MEDQA
from sqlmodel import col, func, select

from services.ingest.tasks import ingest_path
from shared.db import session_scope
from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun

pytestmark = [pytest.mark.faults, pytest.mark.slow]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "artifacts"
    mount.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                         text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (CI runs as root): {res.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path) -> Path:
    """Write a filler file until the disk refuses another byte."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 16, 1):  # big blocks, then the last bytes one at a time
            while True:
                try:
                    os.write(fd, b"\0" * size)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def _medqa(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MEDQA, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def test_a_full_artifact_disk_fails_the_run_cleanly_and_retry_trains_after_space_is_freed(
        medqa_env, small_disk, synth_dir, fault_record):
    medqa_env(artifact_dir=str(small_disk), trigger_min_new="1000")
    ingest_path(synth_dir)
    filler = _fill(small_disk)

    res = _medqa("train", "--force")
    assert res.returncode == 1, res.stdout + res.stderr  # eager train reports the failure (it said "queued")
    assert "no space left on device" in (res.stdout + res.stderr).lower()
    with session_scope() as s:
        run = s.exec(select(TrainingRun)).one()
        assert run.status == RunStatus.failed and "no space left on device" in (run.error or "")
        assert s.exec(select(func.count()).select_from(Abstract).where(
            col(Abstract.train_run_id).is_(None))).one() == 50  # released, not stranded
    leftovers = [p.name for p in small_disk.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []

    filler.unlink()  # the operator frees space
    freed = time.monotonic()
    res = _medqa("runs", "retry", str(run.id), "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    retried = json.loads(res.stdout)
    recovery = time.monotonic() - freed
    with session_scope() as s:
        new = s.get(TrainingRun, retried["run_id"])
        assert new is not None and new.status == RunStatus.succeeded
        assert s.exec(select(func.count()).select_from(ModelVersion)).one() == 1
        assert s.exec(select(func.count()).select_from(Abstract).where(
            col(Abstract.train_run_id) == new.id)).one() == 50
    fault_record("artifact disk full during training", recovery_s=recovery)
