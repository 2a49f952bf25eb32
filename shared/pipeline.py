"""The pipeline's events: each one's producer, the tasks that consume it and their queues, in one table.

Work passes between services only as these events. A producer calls `emit(session, EVENT, *args)`
inside its transaction; the event is sent once that transaction commits (and dropped if it rolls
back), by task *name*, so a producer never imports its consumer. Under MEDQA_EAGER the consumer runs
in the calling process instead, which must have loaded the consumer's task module (the CLI does).

The store stays the truth. If a message is lost (a dead broker, a killed worker), `sweep` re-derives
the pending events from the rows and sends them again; every consumer guards on row status, so a
duplicate is harmless.

    event              producer             consumer task            queue
    abstracts.stored   ingest               train.trigger            train
                                            monitor.after_ingest     monitor
    run.queued         trainer (trigger)    train.run                train
    version.created    trainer              evaluate.version         evaluate
                                            train.rebuild_next       train
    version.decided    evaluator            monitor.version_decided  monitor
    champion.moved     registry             monitor.health           monitor
    alert.raised       monitor              monitor.deliver_alerts   monitor
    scores.wanted      monitor (health)     evaluate.earlier_champions  evaluate
    scores.stored      evaluator            monitor.health           monitor
    papers.retracted   ingest               monitor.retractions      monitor

(`EVENTS` below is the source; a test checks this docstring, the README and the registered tasks
against it.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

import redis
from kombu.exceptions import OperationalError
from sqlalchemy import String, cast, exists, literal
from sqlalchemy import event as sa_event
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.orm import aliased
from sqlmodel import Session, and_, col, or_, select

from shared.celery_app import app, medqa_task
from shared.db import session_scope
from shared.lineage import RETRACTION_ALERT, TRAINED
from shared.queries import unclaimed_pmids
from shared.settings import get_settings
from shared.tables import (
    Abstract,
    Alert,
    AlertDelivery,
    DeliveryStatus,
    LineageItem,
    ModelVersion,
    RunStatus,
    TrainingRun,
    VersionStatus,
    utcnow,
)

log = logging.getLogger("medqa.pipeline")


class Event(StrEnum):
    ABSTRACTS_STORED = "abstracts.stored"  # no args: new or revised abstracts are committed
    RUN_QUEUED = "run.queued"  # run id: a training run row with its manifest
    VERSION_CREATED = "version.created"  # version id: a candidate adapter is registered
    VERSION_DECIDED = "version.decided"  # version id: the gate blessed or rejected it
    CHAMPION_MOVED = "champion.moved"  # version id: the champion alias points at it now
    ALERT_RAISED = "alert.raised"  # alert id: an alert and its deliveries are stored
    SCORES_WANTED = "scores.wanted"  # champion id, version ids: earlier champions lack its fixed suites
    SCORES_STORED = "scores.stored"  # champion id: those earlier champions are scored now
    PAPERS_RETRACTED = "papers.retracted"  # PMIDs: stored abstracts newly marked retracted


@dataclass(frozen=True)
class Consumer:
    task: str  # the Celery task name
    queue: str


@dataclass(frozen=True)
class Route:
    producer: str  # the package that emits the event
    consumers: tuple[Consumer, ...]


EVENTS: dict[Event, Route] = {
    Event.ABSTRACTS_STORED: Route("ingest", (Consumer("train.trigger", "train"),
                                             Consumer("monitor.after_ingest", "monitor"))),
    Event.RUN_QUEUED: Route("trainer", (Consumer("train.run", "train"),)),
    Event.VERSION_CREATED: Route("trainer", (Consumer("evaluate.version", "evaluate"),
                                             Consumer("train.rebuild_next", "train"))),
    Event.VERSION_DECIDED: Route("evaluator", (Consumer("monitor.version_decided", "monitor"),)),
    Event.CHAMPION_MOVED: Route("registry", (Consumer("monitor.health", "monitor"),)),
    Event.ALERT_RAISED: Route("monitor", (Consumer("monitor.deliver_alerts", "monitor"),)),
    Event.SCORES_WANTED: Route("monitor", (Consumer("evaluate.earlier_champions", "evaluate"),)),
    Event.SCORES_STORED: Route("evaluator", (Consumer("monitor.health", "monitor"),)),
    Event.PAPERS_RETRACTED: Route("ingest", (Consumer("monitor.retractions", "monitor"),)),
}



def event_table() -> str:
    """The README's event table (a test keeps the README equal to it)."""
    rows = ["| event | producer | consumer task | queue |", "|---|---|---|---|"]
    for event, route in EVENTS.items():
        for n, consumer in enumerate(route.consumers):
            first = n == 0
            rows.append(f"| {'`' + event.value + '`' if first else ''} | {route.producer if first else ''} "
                        f"| `{consumer.task}` | {consumer.queue} |")
    return "\n".join(rows)


_OUTBOX = "medqa_outbox"  # session.info key: events waiting for their transaction to commit


def emit(session: Session, event: Event, *args: Any) -> None:
    """Send `event` to its consumers once `session`'s transaction commits; never if it rolls back."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}; events are {', '.join(EVENTS)}")
    session.info.setdefault(_OUTBOX, []).append((event, args))


@sa_event.listens_for(OrmSession, "after_commit")
def _send_outbox(session: OrmSession) -> None:
    for event, args in session.info.pop(_OUTBOX, []):
        publish(event, *args)


@sa_event.listens_for(OrmSession, "after_rollback")
def _drop_outbox(session: OrmSession) -> None:
    session.info.pop(_OUTBOX, None)


# Events published while a caller holds them (`held_events`): kept, in order and without repeats,
# for the caller to send when it is ready.
_HELD: ContextVar[list[tuple[Event, tuple]] | None] = ContextVar("medqa_held_events", default=None)


@contextmanager
def held_events() -> Iterator[list[tuple[Event, tuple]]]:
    """Keep the events published inside instead of sending them; the caller sends them later with
    `publish_held`. Under MEDQA_EAGER, `medqa ingest files` imports every file first, prints its
    summary, and only then runs the training those files started (it used to train after the first
    file, with no word of the import)."""
    held: list[tuple[Event, tuple]] = []
    token = _HELD.set(held)
    try:
        yield held
    finally:
        _HELD.reset(token)


def publish_held(held: list[tuple[Event, tuple]]) -> list[str]:
    return [task for event, args in held for task in publish(event, *args)]


def publish(event: Event, *args: Any) -> list[str]:
    """Send `event` now (the caller has committed what it names); returns the consumer tasks reached."""
    held = _HELD.get()
    if held is not None:
        if (event, args) not in held:
            held.append((event, args))
        return []
    return [c.task for c in EVENTS[event].consumers if send(c, *args)]


# Under MEDQA_EAGER a consumer runs in the calling process. The composition root (the CLI) may
# register how to load a queue's task modules on first use, so that a command loads only what its
# events reach: `medqa ingest files` below the training threshold never imports torch.
_task_loader: Callable[[str], object] | None = None


def set_task_loader(loader: Callable[[str], object] | None) -> None:
    """`loader(queue)` imports the task modules of `queue`; shared/ cannot name them itself."""
    global _task_loader
    _task_loader = loader


def _eager_task(consumer: Consumer) -> Any:
    task = app.tasks.get(consumer.task)
    if task is None and _task_loader is not None:
        _task_loader(consumer.queue)
        task = app.tasks.get(consumer.task)
    if task is None:
        raise RuntimeError(f"MEDQA_EAGER runs {consumer.task} in this process, but no loaded module "
                           "declares it; load the service task modules first (services/cli does)")
    return task


def send(consumer: Consumer, *args: Any) -> bool:
    """One message to one consumer. A dead broker is logged, not raised: the rows are stored already
    and the sweeper sends the message once the broker is back."""
    if app.conf.task_always_eager:
        task = _eager_task(consumer)
        # As with a broker, the consumer's failure is the consumer's: the producer has committed.
        result = task.apply(args=args, throw=False)
        if result.failed():
            log.error("%s%s failed in-process:\n%s", consumer.task, args, result.traceback)
            return False
        return True
    try:
        app.send_task(consumer.task, args=args, queue=consumer.queue)
        return True
    except (OperationalError, redis.exceptions.ConnectionError, OSError) as exc:
        log.warning("broker unreachable, %s%s left for the sweeper: %s", consumer.task, args, exc)
        return False


# ------------------------------------------------------------------------------------------- sweeper

@medqa_task("pipeline.sweep", queue="monitor", singleton=lambda: "sweep")
def sweep() -> dict:
    return sweep_now()


def sweep_now() -> dict[str, list]:
    """Re-derive pending events from the store and send them: abstracts waiting for a run when none
    is active, queued runs and running ones whose heartbeat stopped, undecided candidates, alert
    deliveries still pending, retracted papers in a version's lineage without their alert, and clean
    rebuild steps whose next step was never queued."""
    pending = _pending()
    sent: dict[str, list] = {"abstracts": [], "runs": [], "candidates": [], "alerts": [], "retracted": [],
                             "rebuild_steps": []}
    if pending["abstracts_waiting"]:
        sent["abstracts"] = publish(Event.ABSTRACTS_STORED)
    sent["runs"] = [r for r in pending["runs"] if publish(Event.RUN_QUEUED, r)]
    sent["candidates"] = [v for v in pending["candidates"] if publish(Event.VERSION_CREATED, v)]
    sent["alerts"] = [a for a in pending["alerts"] if publish(Event.ALERT_RAISED, a)]
    if pending["retracted"] and publish(Event.PAPERS_RETRACTED, pending["retracted"]):
        sent["retracted"] = pending["retracted"]
    # A rebuild step's version whose next step was never queued (its version.created was lost).
    sent["rebuild_steps"] = [v for v in pending["rebuild_steps"] if v not in sent["candidates"]
                             and publish(Event.VERSION_CREATED, v)]
    if any(sent.values()):
        log.info("sweeper re-sent %s", sent)
    return sent


def _pending() -> dict[str, Any]:
    settings = get_settings()
    stale = utcnow() - timedelta(seconds=3 * settings.visibility_timeout_s)
    with session_scope() as session:
        active = session.exec(select(TrainingRun.id).where(
            TrainingRun.model_line == settings.model_line,
            col(TrainingRun.status).in_((RunStatus.queued, RunStatus.running)))).first()
        runs = session.exec(select(TrainingRun.id).where(
            or_(col(TrainingRun.status) == RunStatus.queued,
                and_(col(TrainingRun.status) == RunStatus.running, col(TrainingRun.heartbeat_at) < stale)))).all()
        candidates = session.exec(select(ModelVersion.id).where(ModelVersion.status == VersionStatus.candidate)).all()
        alerts = session.exec(select(AlertDelivery.alert_id).where(
            AlertDelivery.status == DeliveryStatus.pending, col(AlertDelivery.next_attempt_at) <= utcnow())
            .distinct()).all()
        waiting = bool(unclaimed_pmids(session)) and active is None
        retracted = _retractions_without_alert(session)
        rebuild_steps = _rebuild_steps_without_next(session) if active is None else []
    return {"abstracts_waiting": waiting, "runs": list(runs), "candidates": list(candidates),
            "alerts": sorted(alerts), "retracted": retracted, "rebuild_steps": rebuild_steps}


def _rebuild_steps_without_next(session: Session) -> list[int]:
    """Versions made by a clean rebuild's step, not its last, whose next step was never queued."""
    step, following = aliased(TrainingRun), aliased(TrainingRun)
    rows = session.exec(select(ModelVersion.id).join(step, col(step.id) == ModelVersion.run_id).where(
        col(step.rebuild_of).is_not(None), col(step.replaces_version_id) != col(step.rebuild_of),
        ~exists().where(col(following.rebuild_of) == col(step.rebuild_of),
                        col(following.parent_version_id) == col(ModelVersion.id)))).all()
    return sorted(v for v in rows if v is not None)


def _retractions_without_alert(session: Session) -> list[int]:
    """Retracted papers that a version trained on and that have no retraction alert yet (its
    papers.retracted event was lost)."""
    key = literal(RETRACTION_ALERT) + cast(Abstract.pmid, String)
    rows = session.exec(select(Abstract.pmid).join(LineageItem, col(LineageItem.pmid) == Abstract.pmid)
                        .join(ModelVersion, col(ModelVersion.run_id) == LineageItem.run_id)
                        .where(col(Abstract.retracted).is_(True), col(LineageItem.role).in_(TRAINED),
                               ~exists().where(col(Alert.dedup_key) == key)).distinct()).all()
    return sorted(rows)
