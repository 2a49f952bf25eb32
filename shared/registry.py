"""The model registry: versions, the champion alias, promote and rollback, the audit trail.

Keyword-only functions that take a session, shared by the evaluator, the CLI and the API. Every
alias change is one alias-row upsert plus one audit row, in the caller's single transaction, and
emits champion.moved once that transaction commits. The alias row is read `FOR UPDATE` first
(PostgreSQL), so a promote and a rollback racing each other serialise instead of both reading the
same "from" version.
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from shared.db import write_lock
from shared.pipeline import Event, emit
from shared.tables import Alias, AuditEvent, Evaluation, ModelVersion, TrainingRun, VersionStatus, utcnow

CHAMPION = "champion"


MAX_ID = 2**31 - 1


class RegistryError(ValueError):
    """An operator asked for something the registry cannot do; the message says why."""


class UnknownVersion(RegistryError):
    """No such version (the API's 404)."""


def parse_version_id(text: str | int) -> int:
    raw = str(text).strip().lower().removeprefix("v")
    if not (raw.isascii() and raw.isdigit()):  # "²".isdigit() is true, but int() refuses it
        raise RegistryError(f"not a version id: {text!r} (expected a number such as 3 or v3)")
    if int(raw) > MAX_ID:  # the store's ids are 32-bit: a larger one can only be unknown
        raise UnknownVersion(f"unknown version v{raw}")
    return int(raw)


def get_version(session: Session, *, version_id: int) -> ModelVersion:
    version = session.get(ModelVersion, version_id)
    if version is None:
        raise UnknownVersion(f"unknown version v{version_id}")
    return version


def champion(session: Session, *, model_line: str, for_update: bool = False) -> ModelVersion | None:
    alias = _alias(session, model_line=model_line, for_update=for_update)
    return session.get(ModelVersion, alias.version_id) if alias else None


def _alias(session: Session, *, model_line: str, for_update: bool = False) -> Alias | None:
    stmt = select(Alias).where(Alias.model_line == model_line, Alias.name == CHAMPION)
    if for_update:
        stmt = stmt.with_for_update()
    return session.exec(stmt).first()


def set_champion(
    session: Session, *, model_line: str, version: ModelVersion, actor: str, action: str, reason: str,
) -> AuditEvent:
    """Point the champion alias at `version` and write the audit row, in the caller's transaction,
    which must hold the write lock from its start (shared.db.write_lock)."""
    if not reason.strip():
        raise RegistryError("a reason is required")
    write_lock(session)
    alias = _alias(session, model_line=model_line, for_update=True)
    previous = alias.version_id if alias else None
    if alias is None:
        alias = Alias(model_line=model_line, name=CHAMPION, version_id=version.id)  # type: ignore[arg-type]
    alias.version_id = version.id  # type: ignore[assignment]
    alias.updated_at = utcnow()
    session.add(alias)
    event = AuditEvent(
        actor=actor, action=action, subject=f"{model_line}/{CHAMPION}", from_version_id=previous,
        to_version_id=version.id, reason=reason, metrics=dict(version.metrics),
    )
    session.add(event)
    session.flush()
    emit(session, Event.CHAMPION_MOVED, version.id)
    return event


def promote(session: Session, *, version_id: int, actor: str, reason: str, force: bool = False) -> AuditEvent:
    write_lock(session)  # before the first read: the champion read below stays current until commit
    version = get_version(session, version_id=version_id)
    if version.status != VersionStatus.blessed and not force:
        raise RegistryError(
            f"v{version_id} is {version.status.value}, not blessed; promote it only with --force and a reason")
    current = champion(session, model_line=version.model_line, for_update=True)
    if current is not None and current.id == version.id:
        raise RegistryError(f"v{version_id} is already the champion")
    action = "promote" if version.status == VersionStatus.blessed else "force-promote"
    return set_champion(session, model_line=version.model_line, version=version, actor=actor,
                        action=action, reason=reason)


def rollback(session: Session, *, model_line: str, actor: str, reason: str, to: int | None = None) -> AuditEvent:
    write_lock(session)
    current = champion(session, model_line=model_line, for_update=True)
    if current is None:
        raise RegistryError(f"model line {model_line!r} has no champion to roll back")
    target: ModelVersion | None
    if to is not None:
        target = get_version(session, version_id=to)
        if target.model_line != model_line:
            raise RegistryError(f"v{to} belongs to model line {target.model_line!r}")
        if target.id == current.id:
            raise RegistryError(f"v{to} is already the champion")
        if target.status != VersionStatus.blessed:
            raise RegistryError(f"v{to} is {target.status.value}; rollback goes only to a blessed version")
    else:
        target = session.exec(
            select(ModelVersion).where(
                ModelVersion.model_line == model_line, ModelVersion.status == VersionStatus.blessed,
                col(ModelVersion.id) < current.id,
            ).order_by(col(ModelVersion.id).desc())
        ).first()
        if target is None:
            raise RegistryError(f"no blessed version older than the champion v{current.id} to roll back to")
    assert target is not None
    return set_champion(session, model_line=model_line, version=target, actor=actor, action="rollback",
                        reason=reason)


def list_versions(session: Session, *, model_line: str | None = None) -> list[ModelVersion]:
    stmt = select(ModelVersion).order_by(col(ModelVersion.id))
    if model_line:
        stmt = stmt.where(ModelVersion.model_line == model_line)
    return list(session.exec(stmt))


def latest_evaluation(session: Session, *, version_id: int) -> Evaluation | None:
    return session.exec(
        select(Evaluation).where(Evaluation.version_id == version_id).order_by(col(Evaluation.id).desc())
    ).first()


def run_for_version(session: Session, *, version: ModelVersion) -> TrainingRun:
    run = session.get(TrainingRun, version.run_id)
    assert run is not None, f"version v{version.id} without its run"
    return run
