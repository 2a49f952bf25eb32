"""Alerts: one row per incident (dedup key + cooldown), delivered to the configured channels.

`raise_alert` stores the alert and one `AlertDelivery` row per channel in the caller's transaction, so
an alert that cannot go out is never lost. Once that transaction commits, the alert.raised event
has the deliveries tried at once (monitor.deliver_alerts); a channel that fails is retried with
exponential backoff when the sweeper sends the event again, and is marked `failed` (and logged as an error) after
`alert_max_attempts` tries. Delivery problems never raise out of `raise_alert` nor undo the caller's work.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlmodel import Session, col, select

from services.monitor.channels import DeliveryError, sender_for
from shared.db import session_scope
from shared.pipeline import Event, emit
from shared.settings import get_settings
from shared.tables import Alert, AlertDelivery, DeliveryStatus, utcnow

log = logging.getLogger("medqa.alerts")
CLAIM_S = 120.0  # an attempt in flight holds its delivery this long (longer than a channel's timeout)
MAX_BACKOFF_S = 3600.0


def raise_alert(session: Session, *, kind: str, severity: str, dedup_key: str, message: str,
                deliver: bool = True) -> Alert | None:
    """Store an alert and its deliveries, unless the same incident alerted within the cooldown.
    With `deliver`, the channels are tried right after the caller's transaction commits."""
    settings = get_settings()
    recent = session.exec(select(Alert).where(
        Alert.dedup_key == dedup_key,
        col(Alert.created_at) >= utcnow() - timedelta(seconds=settings.alert_cooldown_s))).first()
    if recent is not None:
        return None
    alert = Alert(kind=kind, severity=severity, dedup_key=dedup_key, message=message,
                  channels=list(settings.alert_channels))
    session.add(alert)
    session.flush()
    deliveries = [AlertDelivery(alert_id=alert.id, channel=c) for c in settings.alert_channels]  # type: ignore[arg-type]
    session.add_all(deliveries)
    session.flush()
    if deliver:  # tried once the caller commits: no network wait inside its transaction
        emit(session, Event.ALERT_RAISED, alert.id)
    return alert


def _due(session: Session, ids: Iterable[int] | None, now: datetime, alert_id: int | None = None) -> list[int]:
    q = select(AlertDelivery.id).where(
        AlertDelivery.status == DeliveryStatus.pending,
        col(AlertDelivery.attempts) < get_settings().alert_max_attempts,
        col(AlertDelivery.next_attempt_at) <= now)
    if ids is not None:
        q = q.where(col(AlertDelivery.id).in_(list(ids)))
    if alert_id is not None:
        q = q.where(AlertDelivery.alert_id == alert_id)
    return [i for i in session.exec(q.order_by(col(AlertDelivery.id))).all() if i is not None]


def _claim(session: Session, delivery_id: int, now: datetime) -> tuple[AlertDelivery, Alert] | None:
    """Take one attempt at a due delivery: attempts+1 and next_attempt_at pushed ahead, only if it is
    still due and nobody took it since it was read (two sweepers, or a sweeper and raise_alert's own
    attempt), so one attempt is in flight at a time."""
    d = session.get(AlertDelivery, delivery_id)
    if d is None or d.status != DeliveryStatus.pending:
        return None
    claimed = session.execute(
        update(AlertDelivery)
        .where(col(AlertDelivery.id) == delivery_id, col(AlertDelivery.status) == DeliveryStatus.pending,
               col(AlertDelivery.attempts) == d.attempts,
               col(AlertDelivery.attempts) < get_settings().alert_max_attempts,
               col(AlertDelivery.next_attempt_at) <= now)
        .values(attempts=d.attempts + 1, next_attempt_at=utcnow() + timedelta(seconds=CLAIM_S))
        .execution_options(synchronize_session=False))
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return None
    session.refresh(d)
    alert = session.get(Alert, d.alert_id)
    assert alert is not None  # foreign key
    return d, alert


def _send(channel: str, alert: Alert) -> str | None:
    """None when delivered, else why not."""
    try:
        sender_for(channel, get_settings())(alert)
        return None
    except DeliveryError as exc:
        return str(exc)
    except Exception as exc:  # a bug in a channel must not stop the other deliveries
        log.exception("alert #%s: %s channel crashed", alert.id, channel)
        return f"{type(exc).__name__}: {exc}"


def _record(session: Session, delivery_id: int, error: str | None) -> str:
    settings = get_settings()
    d = session.get(AlertDelivery, delivery_id)
    assert d is not None
    now = utcnow()
    if error is None:
        d.status, d.sent_at, d.next_attempt_at = DeliveryStatus.sent, now, None
        outcome = "sent"
    else:
        d.last_error = error
        if d.attempts >= settings.alert_max_attempts:
            d.status, d.next_attempt_at = DeliveryStatus.failed, None
            outcome = "failed"
            log.error("alert #%s: %s delivery failed after %d attempts, giving up: %s", d.alert_id, d.channel,
                      d.attempts, error)
        else:
            delay = min(settings.alert_retry_backoff_s * 2 ** (d.attempts - 1), MAX_BACKOFF_S)
            d.next_attempt_at = now + timedelta(seconds=delay)
            outcome = "retry"
            log.warning("alert #%s: %s delivery attempt %d/%d failed, retrying in %.0f s: %s", d.alert_id,
                        d.channel, d.attempts, settings.alert_max_attempts, delay, error)
    session.add(d)
    session.flush()
    if outcome == "sent":
        statuses = session.exec(select(AlertDelivery.status).where(AlertDelivery.alert_id == d.alert_id)).all()
        alert = session.get(Alert, d.alert_id)
        if alert is not None and all(st == DeliveryStatus.sent for st in statuses):
            alert.sent_at = now
            session.add(alert)
    return outcome


def deliver_pending(session: Session | None = None, *, ids: Iterable[int] | None = None,
                    alert_id: int | None = None) -> dict[str, int]:
    """Try each due pending delivery once (or only `ids`, or only those of `alert_id`). Returns counts
    of sent / retry / failed.

    Without a session, each attempt is claimed and recorded in its own short transactions and the
    channel is called between them, so no database lock is held while waiting on the network. With a
    session, everything happens in it and the caller commits."""
    now = utcnow()
    if session is None:
        counts = _deliver_in_own_transactions(ids, now, alert_id)
    else:
        counts = Counter()
        for did in _due(session, ids, now, alert_id):
            taken = _claim(session, did, now)
            if taken is not None:
                counts[_record(session, did, _send(taken[0].channel, taken[1]))] += 1
    return {k: counts[k] for k in ("sent", "retry", "failed")}


def _deliver_in_own_transactions(ids: Iterable[int] | None, now: datetime, alert_id: int | None) -> Counter[str]:
    """Each delivery claimed and recorded in short transactions of their own, the channel called between."""
    counts: Counter[str] = Counter()
    with session_scope() as session:
        due = _due(session, ids, now, alert_id)
    for did in due:
        with session_scope() as session:
            taken = _claim(session, did, now)
        if taken is None:
            continue
        error = _send(taken[0].channel, taken[1])
        with session_scope() as session:
            counts[_record(session, did, error)] += 1
    return counts
