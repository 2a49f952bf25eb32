"""Eight operators at once, as eight `medqa promote` / `medqa rollback` processes, on SQLite and on
PostgreSQL, while a long file import writes to the same store. Before the write lock, SQLite gave
audit rows that did not start where the previous one ended, and eight "champion v3 -> X" lines.

Each process either changes the champion or is refused in one line; the audit rows form one chain and
the alias is where the chain ends."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from conftest import stored_versions
from procs import MEDQA
from sqlmodel import col, select

from services.devkit.synth import write_corpus
from shared import registry
from shared.db import session_scope
from shared.tables import Alias, AuditEvent, IngestCursor, VersionStatus

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_eight_operator_processes_during_an_import_leave_one_audit_chain(store_env, tmp_path, fault_record):
    ids = stored_versions([VersionStatus.blessed] * 4)
    with session_scope() as s:
        registry.promote(s, version_id=ids[-1], actor="setup", reason="start")
    folder = tmp_path / "baseline"
    write_corpus(folder, files=1, per_file=20_000, seed=29)
    env = os.environ | {"MEDQA_TRIGGER_MIN_NEW": "10000000", "MEDQA_EAGER": "0",
                        "MEDQA_BROKER_URL": "redis://127.0.0.1:1/0"}  # the import signals nobody
    importer = subprocess.Popen([MEDQA, "ingest", "files", str(folder), "--json"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, env=env)
    time.sleep(1.5)  # the importer is past its imports and writing
    t0 = time.monotonic()
    operators = [subprocess.Popen([MEDQA, *(["rollback"] if n % 2 else ["promote", f"v{ids[n % 4]}"]),
                                   "--reason", f"parallel {n}", "--actor", f"op{n}"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for n in range(8)]
    results = [(p.wait(timeout=180), p.stdout.read(), p.stderr.read()) for p in operators]  # type: ignore[union-attr]
    elapsed = time.monotonic() - t0
    importer.wait(timeout=300)
    assert importer.returncode == 0, importer.stderr.read()[-2000:]  # type: ignore[union-attr]

    for code, out, err in results:
        assert "Traceback" not in err, err[-2000:]
        assert code == 0 or (code == 1 and err.strip().startswith("error:")), (code, out, err)
    changed = sum(code == 0 for code, _, _ in results)
    assert changed >= 1
    with session_scope() as s:
        events = s.exec(select(AuditEvent).order_by(col(AuditEvent.id))).all()
        assert len(events) == 1 + changed
        for before, after in zip(events, events[1:], strict=False):
            assert after.from_version_id == before.to_version_id, "an audit row does not start where the last ended"
        assert s.exec(select(Alias)).one().version_id == events[-1].to_version_id
        assert s.exec(select(IngestCursor)).one().watermark  # and the import that held the lock landed whole
    fault_record("8 concurrent operator processes during an import", recovery_s=None, changed=changed,
                 refused=8 - changed, all_done_s=round(elapsed, 1))
