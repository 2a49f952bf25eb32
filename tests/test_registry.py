"""Registry rules on SQLite and PostgreSQL: promote, rollback, audit, and refusals that change nothing."""

import pytest
from conftest import stored_versions
from sqlmodel import func, select

from shared import registry
from shared.db import session_scope
from shared.tables import Alias, AuditEvent, RunStatus, TrainingRun, VersionStatus

_versions = stored_versions


def _snapshot():
    with session_scope() as s:
        alias = s.exec(select(Alias)).all()
        return ([(a.name, a.version_id) for a in alias], s.exec(select(func.count()).select_from(AuditEvent)).one())


def test_promote_and_rollback_write_alias_and_audit(store_env):
    v1, v2 = _versions([VersionStatus.blessed, VersionStatus.blessed])
    with session_scope() as s:
        registry.promote(s, version_id=v1, actor="alice", reason="first")
    with session_scope() as s:
        registry.promote(s, version_id=v2, actor="bob", reason="better")
    with session_scope() as s:
        ev = registry.rollback(s, model_line="default", actor="carol", reason="regression seen")
        assert (ev.from_version_id, ev.to_version_id, ev.action) == (v2, v1, "rollback")
    with session_scope() as s:
        assert registry.champion(s, model_line="default").id == v1
        events = s.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert [(e.actor, e.from_version_id, e.to_version_id) for e in events] == [
            ("alice", None, v1), ("bob", v1, v2), ("carol", v2, v1)]
        assert events[0].metrics == {"ppl_new": 10.0}


@pytest.mark.parametrize("case", ["unknown", "rejected", "no-earlier", "rollback-unknown", "empty-reason"])
def test_refusals_change_nothing(store_env, case):
    (good, bad) = _versions([VersionStatus.blessed, VersionStatus.rejected])
    with session_scope() as s:
        registry.promote(s, version_id=good, actor="a", reason="r")
    before = _snapshot()
    with pytest.raises(registry.RegistryError) as err, session_scope() as s:
        if case == "unknown":
            registry.promote(s, version_id=999, actor="a", reason="r")
        elif case == "rejected":
            registry.promote(s, version_id=bad, actor="a", reason="r")
        elif case == "no-earlier":
            registry.rollback(s, model_line="default", actor="a", reason="r")
        elif case == "rollback-unknown":
            registry.rollback(s, model_line="default", actor="a", reason="r", to=12345)
        else:
            registry.promote(s, version_id=bad, actor="a", reason="  ", force=True)
    assert str(err.value)
    assert _snapshot() == before


def test_force_promote_is_recorded(store_env):
    (bad,) = _versions([VersionStatus.rejected])
    with session_scope() as s:
        ev = registry.promote(s, version_id=bad, actor="ops", reason="hotfix", force=True)
        assert ev.action == "force-promote"


def test_parse_version_id():
    assert registry.parse_version_id("v12") == 12 and registry.parse_version_id(3) == 3
    with pytest.raises(registry.RegistryError):
        registry.parse_version_id("latest")


def test_one_active_run_per_line_is_enforced_by_the_database(store_env):
    from sqlalchemy.exc import IntegrityError

    with session_scope() as s:
        s.add(TrainingRun(model_line="default", base_model="m", status=RunStatus.queued))
    with pytest.raises(IntegrityError), session_scope() as s:
        s.add(TrainingRun(model_line="default", base_model="m", status=RunStatus.running))
    with session_scope() as s:  # a finished run does not count, nor another line
        s.add(TrainingRun(model_line="default", base_model="m", status=RunStatus.failed))
        s.add(TrainingRun(model_line="other", base_model="m", status=RunStatus.queued))


@pytest.mark.parametrize("held_lock", [False, True], ids=["free", "writer-holding-the-lock"])
def test_parallel_promote_and_rollback_leave_one_consistent_alias(store_env, held_lock):
    """Eight operators at once, on SQLite and PostgreSQL, optionally while another writer holds the
    store's write lock (a long import): the changes serialise, so the audit rows form one chain (each
    change starts where the previous one ended) and the alias is where the chain ends."""
    import threading
    import time

    ids = _versions([VersionStatus.blessed] * 4)
    with session_scope() as s:
        registry.promote(s, version_id=ids[-1], actor="setup", reason="start")
    barrier = threading.Barrier(9)
    outcomes: list[str] = []

    def operator(n: int) -> None:
        barrier.wait()
        try:
            with session_scope() as s:
                if n % 2:
                    registry.rollback(s, model_line="default", actor=f"op{n}", reason="parallel rollback")
                else:
                    registry.promote(s, version_id=ids[n % 4], actor=f"op{n}", reason="parallel promote")
            outcomes.append("ok")
        except registry.RegistryError as exc:  # e.g. "already the champion": refused, changes nothing
            outcomes.append(f"refused: {exc}")

    def long_writer() -> None:
        with session_scope() as s:
            s.add(TrainingRun(model_line="other", base_model="m", status=RunStatus.queued))
            s.flush()  # the write lock is held from here to the commit
            barrier.wait()
            time.sleep(1.0)

    threads = [threading.Thread(target=operator, args=(n,)) for n in range(8)]
    if held_lock:
        threads.append(threading.Thread(target=long_writer))
    for t in threads:
        t.start()
    if not held_lock:
        barrier.wait()
    for t in threads:
        t.join(timeout=60)
    assert len(outcomes) == 8
    with session_scope() as s:
        events = s.exec(select(AuditEvent).order_by(AuditEvent.id)).all()
        assert len(events) == 1 + outcomes.count("ok")
        for before, after in zip(events, events[1:], strict=False):
            assert after.from_version_id == before.to_version_id, "an audit row does not start where the last ended"
        assert s.exec(select(Alias)).one().version_id == events[-1].to_version_id
