"""Alert channels: log, webhook (generic JSON or Slack-compatible), e-mail (SMTP).

Each `send_*` either returns (delivered) or raises `DeliveryError` with a message an operator can act
on; retrying and recording the outcome is the caller's job (services/monitor/alerts.py).
"""

from __future__ import annotations

import logging
import smtplib
import socket
import ssl
from collections.abc import Callable
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urlsplit

import httpx

from shared.settings import Settings
from shared.tables import Alert

log = logging.getLogger("medqa.alerts")
TIMEOUT_S = 10.0
LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING}


class DeliveryError(RuntimeError):
    """An alert could not be delivered on one channel; the message says why."""


def _when(alert: Alert) -> str | None:
    return alert.created_at.isoformat() if alert.created_at else None


def send_log(alert: Alert) -> None:
    log.log(LEVELS.get(alert.severity, logging.INFO), "ALERT #%s [%s] %s: %s", alert.id, alert.severity, alert.kind,
            alert.message)


def webhook_payload(alert: Alert, fmt: str = "json") -> dict[str, Any]:
    if fmt == "slack":
        text = f"[{alert.severity.upper()}] {alert.kind}: {alert.message}"
        return {
            "text": text,  # the notification text, and all that plain incoming webhooks show
            "blocks": [
                {"type": "section", "text": {"type": "mrkdwn", "text": text[:2900]}},  # Slack caps a block at 3000
                {"type": "context", "elements": [{"type": "mrkdwn", "text":
                                                  f"MedQA-CL alert #{alert.id} · {alert.dedup_key} · {_when(alert)}"}]},
            ],
        }
    return {"id": alert.id, "kind": alert.kind, "severity": alert.severity, "dedup_key": alert.dedup_key,
            "message": alert.message, "created_at": _when(alert)}


def _where(url: str) -> str:
    """scheme://host:port only: webhook paths often carry a secret token (Slack's do)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


def send_webhook(alert: Alert, *, url: str | None, fmt: str = "json", timeout_s: float = TIMEOUT_S) -> None:
    if not url:
        raise DeliveryError("webhook: MEDQA_ALERT_WEBHOOK_URL is not set")
    try:
        resp = httpx.post(url, json=webhook_payload(alert, fmt), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"webhook {_where(url)}: {type(exc).__name__}: {exc}") from exc
    if not resp.is_success:
        raise DeliveryError(f"webhook {_where(url)} answered HTTP {resp.status_code}: {resp.text[:200]!r}")


def email_message(alert: Alert, *, sender: str, to: list[str]) -> EmailMessage:
    msg = EmailMessage()
    msg["Subject"] = f"[MedQA-CL {alert.severity}] {alert.kind}"
    msg["From"] = sender
    msg["To"] = ", ".join(to)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1] or None)
    msg.set_content(f"{alert.message}\n\nkind: {alert.kind}\nseverity: {alert.severity}\n"
                    f"incident: {alert.dedup_key}\nraised: {_when(alert)}\nalert id: {alert.id}\n\n"
                    f"Acknowledge with: medqa alerts ack {alert.id}\n")
    return msg


def send_email(alert: Alert, *, host: str, port: int, to: list[str], sender: str | None = None,
               user: str | None = None, password: str | None = None, starttls: bool = False,
               timeout_s: float = TIMEOUT_S) -> None:
    if not to:
        raise DeliveryError("email: MEDQA_ALERT_EMAIL_TO is empty")
    msg = email_message(alert, sender=sender or f"medqa-cl@{socket.gethostname()}", to=to)
    try:
        with smtplib.SMTP(host, port, timeout=timeout_s) as smtp:
            if starttls:
                smtp.starttls(context=ssl.create_default_context())
            if user:
                smtp.login(user, password or "")
            refused = smtp.send_message(msg)
    except (smtplib.SMTPException, OSError) as exc:
        raise DeliveryError(f"email via {host}:{port}: {type(exc).__name__}: {exc}") from exc
    if refused:  # some recipients accepted: the alert went out; say who did not get it
        log.warning("alert #%s: SMTP server refused %s", alert.id, ", ".join(refused))


def sender_for(channel: str, settings: Settings) -> Callable[[Alert], None]:
    """The configured send function for one channel name."""
    if channel == "log":
        return send_log
    if channel == "webhook":
        url = settings.alert_webhook_url.get_secret_value() if settings.alert_webhook_url else ""
        return lambda a: send_webhook(a, url=url, fmt=settings.alert_webhook_format)
    if channel == "email":
        password = settings.alert_smtp_password.get_secret_value() if settings.alert_smtp_password else None
        return lambda a: send_email(a, host=settings.alert_smtp_host, port=settings.alert_smtp_port,
                                    to=settings.alert_email_to, sender=settings.alert_email_from,
                                    user=settings.alert_smtp_user, password=password,
                                    starttls=settings.alert_smtp_starttls)
    raise DeliveryError(f"unknown alert channel {channel!r}")
