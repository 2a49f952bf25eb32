"""Small helpers for the benches and tests that run the system on this machine: a free local port,
and a version registered (and promoted) from an adapter folder as a trained one would be."""

from __future__ import annotations

import socket
from pathlib import Path

from shared import registry
from shared.checksums import sha256_folder
from shared.db import session_scope
from shared.tables import ModelVersion, RunStatus, TrainingRun, VersionStatus


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def register_version(adapter: Path, base_model: str, *, status: VersionStatus = VersionStatus.blessed,
                     champion: bool = False, actor: str = "devkit") -> int:
    """A succeeded run and its version for `adapter` (its sha256 computed), promoted if `champion`."""
    with session_scope() as s:
        run = TrainingRun(model_line="default", status=RunStatus.succeeded, base_model=base_model)
        s.add(run)
        s.flush()
        assert run.id is not None
        v = ModelVersion(model_line="default", run_id=run.id, base_model=base_model, adapter_path=str(adapter),
                         sha256=sha256_folder(adapter), status=status)
        s.add(v)
        s.flush()
        assert v.id is not None
        if champion:
            registry.set_champion(s, model_line="default", version=v, actor=actor, action="promote", reason=actor)
        return v.id
