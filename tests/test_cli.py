"""The `medqa` command line: JSON documents, clear refusals that change nothing."""

import json

import pytest
from typer.testing import CliRunner

from services.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, list(args))


@pytest.mark.parametrize("cmd", [["versions"], ["runs"], ["history"], ["drift"], ["alerts"], ["status"],
                                 ["ingest", "status"]])
def test_reports_print_one_json_document(medqa_env, cmd):
    res = invoke(*cmd, "--json")
    assert res.exit_code == 0, res.output
    json.loads(res.stdout)


@pytest.mark.parametrize("args", [
    ["promote", "v42", "--reason", "x"],
    ["promote", "banana", "--reason", "x"],
    ["rollback", "--reason", "x"],
    ["rollback", "--to", "7", "--reason", "x"],
    ["evaluate", "v9"],
])
def test_unknown_ids_exit_nonzero_and_change_nothing(medqa_env, args):
    before = invoke("history", "--json").stdout
    res = invoke(*args)
    assert res.exit_code != 0
    assert "error:" in res.output
    assert invoke("history", "--json").stdout == before


def test_promote_needs_a_reason(medqa_env):
    res = invoke("promote", "v1")
    assert res.exit_code == 2 and "--reason" in res.output


def test_worker_rejects_unknown_queue(medqa_env):
    res = invoke("worker", "gpu")
    assert res.exit_code == 2 and "unknown queue" in res.output


def test_ingest_missing_folder(medqa_env, tmp_path):
    res = invoke("ingest", "files", str(tmp_path / "nope"))
    assert res.exit_code == 1 and "no such file" in res.output


def test_ingest_then_status(medqa_env, synth_dir):
    medqa_env(trigger_min_new="1000")
    res = invoke("ingest", "files", str(synth_dir), "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stored"] == 50
    status = json.loads(invoke("status", "--json").stdout)
    assert status["abstracts"] == 50 and status["champion"] is None


def test_ingest_status_counts(medqa_env, synth_dir, tmp_path):
    medqa_env(trigger_min_new="1000")
    (tmp_path / "broken.xml").write_text("<PubmedArticleSet><PubmedArticle><MedlineCitation>")
    invoke("ingest", "files", str(synth_dir))
    invoke("ingest", "files", str(tmp_path / "broken.xml"))
    doc = json.loads(invoke("ingest", "status", "--json").stdout)
    assert doc["counts"]["stored"] == 50 and doc["counts"]["with_abstract"] == 50
    assert doc["counts"]["bad_documents"] == 1 and "broken.xml" in doc["last_error"]
    assert {c["source"] for c in doc["cursors"]} == {"file"}


def test_ingest_mine_backfills_abstracts_stored_before_mining(medqa_env):
    from shared.db import session_scope
    from shared.tables import Abstract

    medqa_env(trigger_min_new="1000")
    invoke("ingest", "status")  # creates the store
    text = "OBJECTIVE: To test tea.\nRESULTS: 90 adults drank tea.\nCONCLUSIONS: Tea did not lower blood pressure."
    with session_scope() as s:  # rows as an ingest before mining left them: no mined item
        s.add(Abstract(pmid=501, title="Does tea lower blood pressure?", text=text, content_hash="a" * 64, source="t"))
        s.add(Abstract(pmid=502, title="Tea and blood pressure.", text=text, content_hash="b" * 64, source="t"))
    res = invoke("ingest", "mine", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout) | {"rule_version": 0} == {"abstracts": 2, "mined": 1, "rule_version": 0}
    assert json.loads(invoke("ingest", "status", "--json").stdout)["counts"]["mined_qa"] == 1
    assert json.loads(invoke("ingest", "mine", "--json").stdout)["mined"] == 1  # again: replaced, not doubled
    assert json.loads(invoke("ingest", "status", "--json").stdout)["counts"]["mined_qa"] == 1


def test_runs_show_progress_and_eta(medqa_env):
    from shared.db import session_scope
    from shared.tables import RunStatus, TrainingRun

    with session_scope() as s:
        s.add(TrainingRun(model_line="default", base_model="m", status=RunStatus.running, step=10, total_steps=60,
                          tokens_per_s=1000.0, config={"batch_size": 4, "grad_accum": 1, "max_length": 250}))
    runs = json.loads(invoke("runs", "--json").stdout)
    assert runs[0]["eta_s"] == pytest.approx(50 * 1000 / 1000.0)
    status = json.loads(invoke("status", "--json").stdout)
    assert status["active_runs"][0]["step"] == 10 and status["active_runs"][0]["eta_s"] == pytest.approx(50.0)


@pytest.mark.postgres
def test_db_upgrade_never_prints_the_database_password(medqa_env, pg_url):
    """Before: "schema at head on postgresql+psycopg://postgres:<password>@..." (compose's migrate
    service runs it, so the password reached `docker compose logs`)."""
    with_password = pg_url.replace("postgres@", "postgres:hunter2@", 1)  # trust auth ignores it
    assert "hunter2" in with_password
    medqa_env(database_url=with_password)
    res = invoke("db", "upgrade")
    assert res.exit_code == 0, res.output
    assert "hunter2" not in res.output and "postgres:***@" in res.output


def test_a_store_that_is_down_is_one_line_not_a_traceback(tmp_path):
    """Before: `medqa status` printed a 522-line traceback when PostgreSQL was down."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQA_")}
    env |= {"MEDQA_DATABASE_URL": f"postgresql+psycopg://medqa:hunter2@127.0.0.1:{port}/medqa",
            "MEDQA_DATA_DIR": str(tmp_path)}
    res = subprocess.run([sys.executable, "-c", "from services.cli import main; main()", "status"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1
    assert "the store is unavailable" in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) <= 3 and "hunter2" not in res.stderr + res.stdout


@pytest.mark.parametrize("args", [
    ["promote", str(2**31), "--reason", "x"], ["promote", "v99999999999999999999", "--reason", "x"],
    ["rollback", "--to", str(2**31), "--reason", "x"], ["evaluate", str(2**40)], ["report", str(2**31)],
    ["drift", "show", str(2**31)], ["alerts", "ack", str(2**31)]])
def test_ids_beyond_the_store_are_unknown_not_a_traceback(medqa_env, args):
    """Before: ids >= 2^31 gave 200-line tracebacks (the store's ids are 32-bit)."""
    res = invoke(*args)
    assert isinstance(res.exception, SystemExit), res.exception  # a clean exit, not an escaped error
    if args[0] in ("drift", "alerts"):  # typed ID arguments: click's usage error names the range
        assert res.exit_code == 2 and "Invalid value" in res.output
    else:
        assert res.exit_code == 1 and "unknown version" in res.output


def test_actor_and_reason_are_bounded_and_printed_escaped(medqa_env):
    """Before: a 101-character --actor was a traceback on PostgreSQL and kept silently on SQLite, and
    `medqa history` printed escape sequences from stored reasons raw."""
    from conftest import stored_versions

    from shared import registry
    from shared.db import session_scope
    from shared.tables import VersionStatus

    (vid,) = stored_versions([VersionStatus.blessed])
    res = invoke("promote", str(vid), "--reason", "x", "--actor", "a" * 101)
    assert res.exit_code == 1 and "--actor must be 1 to 100 characters" in res.output
    res = invoke("promote", str(vid), "--reason", "bad\x00reason")
    assert res.exit_code == 1 and "--reason must not contain NUL" in res.output
    with session_scope() as s:  # a row written before these checks existed
        registry.promote(s, version_id=vid, actor="old", reason="ok\x1b[2J cleared")
    res = invoke("history")
    assert res.exit_code == 0 and "\x1b" not in res.output and "\\x1b[2J" in res.output


def test_a_lost_race_for_the_first_promotion_is_a_message(medqa_env, monkeypatch):
    """Before: IntegrityError tracebacks when two operators made the first promotion at once."""
    from sqlalchemy.exc import IntegrityError

    from shared import registry

    def lose_the_race(session, **kwargs):  # type: ignore[no-untyped-def]
        raise IntegrityError("INSERT INTO alias", {}, Exception("duplicate key value violates unique constraint"))

    monkeypatch.setattr(registry, "promote", lose_the_race)
    res = invoke("promote", "1", "--reason", "first")
    assert res.exit_code == 1 and "changed concurrently" in res.output and "Traceback" not in res.output
