"""Alert delivery against real local receivers: one alert per incident, webhook (JSON and Slack) and
SMTP, retries with backoff, failure after the last attempt, acknowledgement from the command line."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import socket
import threading
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from sqlmodel import col, select
from typer.testing import CliRunner

from services.cli import app
from services.monitor.alerts import _claim, deliver_pending, raise_alert
from shared.db import session_scope
from shared.tables import Alert, AlertDelivery, DriftReport, utcnow

runner = CliRunner()
# Tests taking `store_env` run on SQLite and on PostgreSQL (their settings calls keep its database_url).


class Receiver:
    """A webhook endpoint on 127.0.0.1: records every JSON body, answers the queued statuses, then 200."""

    def __init__(self, statuses: list[int]) -> None:
        self.bodies: list[dict] = []
        self.statuses = statuses
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.bodies.append(json.loads(body))
                code = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(code)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if code < 400 else b"no")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator:  # type: ignore[type-arg]
    started: list[Receiver] = []

    def start(*statuses: int) -> Receiver:
        started.append(Receiver(list(statuses)))
        return started[-1]

    yield start
    for r in started:
        r.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alert_once(key: str = "data_drift:champion v1", *, kind: str = "data_drift", severity: str = "warning",
               message: str = "data drift: 50% of columns drifted") -> int | None:
    with session_scope() as s:
        alert = raise_alert(s, kind=kind, severity=severity, dedup_key=key, message=message)
        return alert.id if alert else None


def deliveries(alert_id: int) -> dict[str, AlertDelivery]:
    with session_scope() as s:
        return {d.channel: d for d in s.exec(select(AlertDelivery).where(AlertDelivery.alert_id == alert_id))}


def get_alert(alert_id: int) -> Alert:
    with session_scope() as s:
        alert = s.get(Alert, alert_id)
        assert alert is not None
        return alert


def all_alerts() -> list[Alert]:
    with session_scope() as s:
        return list(s.exec(select(Alert).order_by(col(Alert.id))))


def test_one_webhook_post_per_incident_within_the_cooldown(medqa_env, receiver):
    rx = receiver()
    medqa_env(alert_channels="log,webhook", alert_webhook_url=rx.url)
    first = alert_once()
    assert first is not None
    assert alert_once() is None and alert_once() is None  # the same incident, inside the cooldown
    assert len(rx.bodies) == 1
    body = rx.bodies[0]
    assert body["id"] == first and body["kind"] == "data_drift" and body["severity"] == "warning"
    assert body["dedup_key"] == "data_drift:champion v1" and "50% of columns" in body["message"]
    assert body["created_at"].startswith(str(utcnow().year))

    second = alert_once("data_drift:champion v2", message="another incident")
    assert second is not None and len(rx.bodies) == 2 and rx.bodies[1]["message"] == "another incident"

    d = deliveries(first)
    assert set(d) == {"log", "webhook"}
    assert all(x.status == "sent" and x.attempts == 1 and x.sent_at is not None for x in d.values())
    alert = get_alert(first)
    assert alert.channels == ["log", "webhook"] and alert.sent_at is not None
    assert len(all_alerts()) == 2


def test_cooldown_comes_from_the_setting(medqa_env, receiver):
    rx = receiver()
    medqa_env(alert_channels="webhook", alert_webhook_url=rx.url, alert_cooldown_s="3600")
    first = alert_once()
    with session_scope() as s:  # the incident was raised two hours ago: outside a one-hour cooldown
        a = s.get(Alert, first)
        assert a is not None
        a.created_at = utcnow() - timedelta(hours=2)
        s.add(a)
    assert alert_once() is not None
    assert len(rx.bodies) == 2 and len(all_alerts()) == 2


def test_failed_webhook_is_kept_pending_then_retried(store_env, receiver):
    rx = receiver(500)  # down once, then up
    store_env(alert_channels="log,webhook", alert_webhook_url=rx.url)
    alert_id = alert_once()
    assert alert_id is not None and len(rx.bodies) == 1
    hook = deliveries(alert_id)["webhook"]
    assert hook.status == "pending" and hook.attempts == 1
    assert hook.last_error is not None and "HTTP 500" in hook.last_error
    assert "secret-token" not in hook.last_error  # the URL's path may be a credential
    assert hook.next_attempt_at is not None and hook.next_attempt_at > utcnow()  # backoff, 30 s by default
    assert deliveries(alert_id)["log"].status == "sent"
    assert get_alert(alert_id).sent_at is None  # not every channel has it yet

    assert deliver_pending() == {"sent": 0, "retry": 0, "failed": 0}  # not due yet
    assert len(rx.bodies) == 1
    with session_scope() as s:
        d = s.get(AlertDelivery, hook.id)
        assert d is not None
        d.next_attempt_at = utcnow() - timedelta(seconds=1)
        s.add(d)
    assert deliver_pending() == {"sent": 1, "retry": 0, "failed": 0}
    hook = deliveries(alert_id)["webhook"]
    assert hook.status == "sent" and hook.attempts == 2 and hook.sent_at is not None
    assert len(rx.bodies) == 2 and rx.bodies[1]["id"] == alert_id
    assert get_alert(alert_id).sent_at is not None
    assert deliver_pending() == {"sent": 0, "retry": 0, "failed": 0}  # sent stays sent
    assert len(rx.bodies) == 2


def test_unreachable_webhook_fails_after_max_attempts_and_the_alert_stays(store_env, caplog):
    from shared.pipeline import sweep_now

    url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
    store_env(alert_channels="webhook", alert_webhook_url=url, alert_max_attempts="3", alert_retry_backoff_s="0")
    with session_scope() as s:  # the caller's own work in the same transaction
        s.add(DriftReport(kind="data", status="drift", drift_detected=True))
        alert = raise_alert(s, kind="data_drift", severity="warning", dedup_key="k", message="drift")
        assert alert is not None
        alert_id = alert.id
    assert alert_id is not None
    with session_scope() as s:
        assert len(s.exec(select(DriftReport)).all()) == 1  # not rolled back by the failed delivery
    hook = deliveries(alert_id)["webhook"]
    assert hook.status == "pending" and hook.attempts == 1 and hook.last_error

    assert sweep_now()["alerts"] == [alert_id]  # the sweeper sends alert.raised again ...
    hook = deliveries(alert_id)["webhook"]
    assert hook.status == "pending" and hook.attempts == 2  # ... and the delivery is retried
    with caplog.at_level(logging.ERROR, logger="medqa.alerts"), session_scope() as s:
        assert deliver_pending(s) == {"sent": 0, "retry": 0, "failed": 1}  # in the caller's session
    assert any("failed after 3 attempts" in r.getMessage() for r in caplog.records)
    assert deliver_pending() == {"sent": 0, "retry": 0, "failed": 0}  # failed is final

    hook = deliveries(alert_id)["webhook"]
    assert hook.status == "failed" and hook.attempts == 3 and hook.next_attempt_at is None
    assert hook.last_error and "127.0.0.1" in hook.last_error
    alert = get_alert(alert_id)
    assert alert.message == "drift" and alert.sent_at is None and not alert.acknowledged


def test_one_attempt_in_flight_at_a_time(store_env):
    store_env(alert_channels="log")
    with session_scope() as s:
        alert = raise_alert(s, kind="k", severity="info", dedup_key="k", message="m", deliver=False)
        assert alert is not None
        alert_id = alert.id
    assert alert_id is not None
    did = deliveries(alert_id)["log"].id
    assert did is not None
    now = utcnow()
    with session_scope() as s:
        assert _claim(s, did, now) is not None
    with session_scope() as s:  # a second sweeper that read the row as due before the claim
        assert _claim(s, did, now) is None
    assert deliveries(alert_id)["log"].attempts == 1


def test_slack_format_payload(medqa_env, receiver):
    rx = receiver()
    medqa_env(alert_channels="webhook", alert_webhook_url=rx.url, alert_webhook_format="slack")
    alert_id = alert_once(severity="critical", message="retention regressed")
    assert alert_id is not None and len(rx.bodies) == 1
    body = rx.bodies[0]
    assert "CRITICAL" in body["text"] and "data_drift" in body["text"] and "retention regressed" in body["text"]
    assert body["blocks"][0]["type"] == "section" and "retention regressed" in body["blocks"][0]["text"]["text"]
    assert "id" not in body  # not the generic payload
    assert deliveries(alert_id)["webhook"].status == "sent"


class Collector:
    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's hook name)
        self.envelopes.append(envelope)
        return "250 Message accepted for delivery"


@pytest.fixture
def smtp_server() -> Iterator[tuple[int, Collector]]:
    from aiosmtpd.controller import Controller

    handler = Collector()
    port = free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


def test_email_reaches_the_smtp_server(medqa_env, smtp_server):
    port, handler = smtp_server
    medqa_env(alert_channels="log,email", alert_smtp_port=str(port), alert_email_from="medqa@example.org",
              alert_email_to="ops@example.org, oncall@example.org")
    alert_id = alert_once(kind="data_drift", severity="critical", message="retention perplexity up 12%")
    assert alert_id is not None
    assert len(handler.envelopes) == 1
    env = handler.envelopes[0]
    assert env.mail_from == "medqa@example.org"
    assert sorted(env.rcpt_tos) == ["oncall@example.org", "ops@example.org"]
    msg = email.message_from_bytes(env.original_content, policy=email.policy.default)
    assert msg["Subject"] == "[MedQA-CL critical] data_drift"
    body = msg.get_body().get_content()  # type: ignore[union-attr]
    assert "retention perplexity up 12%" in body and "severity: critical" in body
    assert f"medqa alerts ack {alert_id}" in body
    assert {c: d.status for c, d in deliveries(alert_id).items()} == {"log": "sent", "email": "sent"}


def test_email_login_refused_is_recorded(medqa_env, smtp_server):
    port, handler = smtp_server  # no AUTH offered: a configured login cannot succeed
    medqa_env(alert_channels="email", alert_smtp_port=str(port), alert_email_to="ops@example.org",
              alert_smtp_user="medqa", alert_smtp_password="pw")
    alert_id = alert_once()
    assert alert_id is not None and handler.envelopes == []
    d = deliveries(alert_id)["email"]
    assert d.status == "pending" and d.attempts == 1
    assert d.last_error and f"127.0.0.1:{port}" in d.last_error and "AUTH" in d.last_error


def test_ack_from_the_cli(medqa_env):
    alert_id = alert_once()
    assert alert_id is not None
    listed = json.loads(runner.invoke(app, ["alerts", "--json"]).stdout)
    assert [(d["channel"], d["status"]) for d in listed[0]["deliveries"]] == [("log", "sent")]
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["open_alerts"] == 1

    res = runner.invoke(app, ["alerts", "ack", str(alert_id), "--actor", "alice"])
    assert res.exit_code == 0, res.output
    alert = get_alert(alert_id)
    assert alert.acknowledged and alert.acknowledged_by == "alice" and alert.acknowledged_at is not None
    assert json.loads(runner.invoke(app, ["status", "--json"]).stdout)["open_alerts"] == 0
    res = runner.invoke(app, ["alerts"])
    assert res.exit_code == 0 and "alice" in res.output and "log:sent" in res.output

    again = runner.invoke(app, ["alerts", "ack", str(alert_id), "--actor", "bob"])
    assert again.exit_code == 0 and "already" in again.output
    assert get_alert(alert_id).acknowledged_by == "alice"


def test_ack_unknown_id_changes_nothing(medqa_env):
    alert_once()
    before = runner.invoke(app, ["alerts", "--json"]).stdout
    res = runner.invoke(app, ["alerts", "ack", "999"])
    assert res.exit_code != 0
    assert "error:" in res.output and "unknown alert 999" in res.output
    assert runner.invoke(app, ["alerts", "--json"]).stdout == before


@pytest.mark.parametrize(("env", "needle"), [
    ({"MEDQA_ALERT_CHANNELS": "pager"}, "MEDQA_ALERT_CHANNELS='pager'"),
    ({"MEDQA_ALERT_CHANNELS": "log,webhook"}, "MEDQA_ALERT_WEBHOOK_URL"),
    ({"MEDQA_ALERT_CHANNELS": "email"}, "MEDQA_ALERT_EMAIL_TO"),
    ({"MEDQA_ALERT_WEBHOOK_FORMAT": "teams"}, "MEDQA_ALERT_WEBHOOK_FORMAT"),
])
def test_bad_alert_settings_name_the_variable(monkeypatch, env, needle):
    from shared.settings import SettingsError, load_settings, reset_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(SettingsError) as err:
        load_settings()
    assert needle in str(err.value)
    reset_settings()
    try:
        res = runner.invoke(app, ["alerts"])
    finally:
        reset_settings()
    assert res.exit_code == 2 and needle in res.output


def test_alert_settings_parse_comma_lists(monkeypatch):
    from shared.settings import load_settings

    monkeypatch.setenv("MEDQA_ALERT_CHANNELS", " log , email,log")
    monkeypatch.setenv("MEDQA_ALERT_EMAIL_TO", "a@example.org,b@example.org")
    s = load_settings()
    assert s.alert_channels == ["log", "email"] and s.alert_email_to == ["a@example.org", "b@example.org"]
    assert s.alert_smtp_password is None and s.alert_webhook_url is None  # no default secrets


def test_migration_0004_downgrades_and_upgrades(medqa_env):
    import sqlalchemy
    from alembic import command

    from shared.db import alembic_config, get_engine

    command.downgrade(alembic_config(), "0003")
    insp = sqlalchemy.inspect(get_engine())
    assert "alertdelivery" not in insp.get_table_names()
    assert "acknowledged_by" not in {c["name"] for c in insp.get_columns("alert")}
    command.upgrade(alembic_config(), "head")
    insp = sqlalchemy.inspect(get_engine())
    assert "alertdelivery" in insp.get_table_names()
    assert {"acknowledged_at", "acknowledged_by"} <= {c["name"] for c in insp.get_columns("alert")}
