"""Alerts: one row per incident (dedup key + cooldown), delivered to the configured channels.

The log channel is always on. Webhook and e-mail delivery arrive with the monitor issue; a row is
stored before delivery, so an alert that fails to go out is never lost.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlmodel import Session, col, select

from shared.models import Alert, utcnow

log = logging.getLogger("medqa.alerts")
COOLDOWN = timedelta(hours=6)


def raise_alert(session: Session, *, kind: str, severity: str, dedup_key: str, message: str) -> Alert | None:
    """Store and deliver an alert, unless the same incident alerted within the cooldown."""
    recent = session.exec(select(Alert).where(
        Alert.dedup_key == dedup_key, col(Alert.created_at) >= utcnow() - COOLDOWN)).first()
    if recent is not None:
        return None
    alert = Alert(kind=kind, severity=severity, dedup_key=dedup_key, message=message, channels=["log"])
    level = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING}.get(severity,
                                                                                                    logging.INFO)
    log.log(level, "ALERT [%s] %s: %s", severity, kind, message)
    alert.sent_at = utcnow()
    session.add(alert)
    session.flush()
    return alert
