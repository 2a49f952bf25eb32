"""The Entrez source against the local emulator: windows, faults and retries, exactly-once after a
crash or a kill, window splitting, the shared NCBI rate limit and its fallback, CLI and beat task."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest
import redis
from Bio import Entrez
from sqlmodel import select
from typer.testing import CliRunner

from services.devkit.emulator import EntrezEmulator
from services.devkit.synth import generate_articles, pubmed_xml
from services.ingest import entrez
from services.ingest.entrez import NCBI_EUTILS, EntrezError, configure_entrez, default_query, ingest_entrez
from services.ingest.parser import ArticleRecord, parse_pubmed_bytes
from services.ingest.ratelimit import RateLimiter
from services.ingest.store import keep
from shared import pipeline
from shared.db import session_scope
from shared.settings import get_settings, load_settings
from shared.tables import Abstract, IngestCursor

REPO = Path(__file__).resolve().parents[1]
TEST_REDIS = os.environ.get("MEDQA_TEST_REDIS", "redis://127.0.0.1:6379/14")
DEAD_REDIS = "redis://127.0.0.1:1/0"  # nothing listens on port 1
START = date(2024, 1, 1)
LAST = START + timedelta(days=34)  # five 7-day windows
QUERY = "hasabstract[text] AND english[lang]"
REAL_SEND = pipeline.send


@pytest.fixture(scope="module")
def articles() -> list[dict]:
    return generate_articles(100, seed=7, entrez_start=START, days=35)


@pytest.fixture(scope="module")
def records(articles) -> list[ArticleRecord]:
    return [r for r in parse_pubmed_bytes(pubmed_xml(articles)) if isinstance(r, ArticleRecord)]


@pytest.fixture(scope="module")
def server(articles):
    with EntrezEmulator([pubmed_xml(articles[:50]), pubmed_xml(articles[50:])], slow_s=1.0) as emu:
        yield emu


@pytest.fixture
def emu(server):
    server.clear_faults()
    server.clear_log()
    yield server
    server.clear_faults()
    server.slow_s = 1.0


@pytest.fixture
def clean_redis():
    r = redis.Redis.from_url(TEST_REDIS)
    r.flushdb()
    yield r
    r.flushdb()


@pytest.fixture
def signals(monkeypatch) -> list[int]:
    """Stands in for the consumers of pipeline events (the trainer's trigger would train); records
    how many abstracts were committed each time abstracts.stored reached the training trigger."""
    seen: list[int] = []

    def record(consumer: pipeline.Consumer, *args: object) -> bool:
        if consumer.task == "train.trigger":
            seen.append(len(stored_pmids()))
        return True

    monkeypatch.setattr(pipeline, "send", record)
    return seen


@pytest.fixture
def env(medqa_env, emu, clean_redis, signals):
    """Settings for fast tests: tiny backoff, small batches, and no training run from the trigger."""
    base = dict(entrez_base_url=emu.base_url, ncbi_api_key="test-key", ncbi_rate_per_s="50",
                entrez_window_days="7", entrez_batch_size="10", entrez_backoff_s="0.01",
                entrez_max_attempts="4", entrez_timeout_s="5", trigger_min_new="100000")

    def apply(**more: str) -> None:
        medqa_env(**{**base, **more})

    apply()
    return apply


def expected(records, lo: date = START, hi: date = LAST) -> set[int]:
    return {r.pmid for r in records if keep(r) and lo <= r.entrez_date <= hi}


def stored_pmids() -> set[int]:
    with session_scope() as s:
        return set(s.exec(select(Abstract.pmid)).all())


def cursor(query: str = QUERY) -> IngestCursor | None:
    with session_scope() as s:
        return s.exec(select(IngestCursor).where(IngestCursor.source == "entrez", IngestCursor.query == query)).first()


def searched_windows(emu) -> list[tuple[str, str]]:
    return [(r.params["mindate"], r.params["maxdate"]) for r in emu.requests("esearch")]


def test_every_window_is_fetched_once_and_the_watermark_follows(env, emu, records):
    result = ingest_entrez(since=START, until=LAST)
    want = expected(records)
    assert stored_pmids() == want
    assert (result.stored, result.duplicates, result.updated) == (len(want), 0, 0)
    assert cursor().watermark == LAST.isoformat() and cursor().last_error is None
    # Contiguous, non-overlapping 7-day windows, each searched once.
    assert searched_windows(emu) == [(f"{START + timedelta(days=d):%Y/%m/%d}",
                                      f"{START + timedelta(days=d + 6):%Y/%m/%d}") for d in range(0, 35, 7)]
    first = emu.requests()[0].params
    assert (first["tool"], first["api_key"], first["usehistory"], first["retmax"]) == ("medqa-cl", "test-key", "y", "0")
    fetches = emu.requests("efetch")
    assert all(f.params["webenv"].startswith("MCID_") and f.params["retmax"] == "10" for f in fetches)
    assert len(fetches) == sum(math.ceil(len(expected(records, START + timedelta(days=d),
                                                      START + timedelta(days=d + 6))) / 10) for d in range(0, 35, 7))

    emu.clear_log()
    assert ingest_entrez(until=LAST).stored == 0  # the watermark is at LAST: nothing to ask for
    assert emu.requests() == []


def test_next_poll_starts_after_the_watermark(env, emu, records):
    ingest_entrez(since=START, until=START + timedelta(days=9))
    assert cursor().watermark == (START + timedelta(days=9)).isoformat()
    emu.clear_log()
    ingest_entrez(since=START, until=LAST)  # `since` earlier than the watermark: the watermark wins
    assert searched_windows(emu)[0][0] == f"{START + timedelta(days=10):%Y/%m/%d}"
    assert stored_pmids() == expected(records)


@pytest.mark.parametrize("endpoint", ["esearch", "efetch"])
@pytest.mark.parametrize("kind", ["429", "500", "truncated", "html", "slow"])
def test_each_fault_is_retried_without_duplicates_or_gaps(env, emu, records, kind, endpoint):
    if kind == "slow":
        env(entrez_timeout_s="0.3")  # the emulator sleeps 1 s: the client gives up and retries
    until = START + timedelta(days=13)
    emu.inject(kind, times=2, endpoint=endpoint, after=1)
    result = ingest_entrez(since=START, until=until)
    assert [r.fault for r in emu.requests(endpoint)].count(kind) == 2
    want = expected(records, START, until)
    assert stored_pmids() == want
    assert (result.stored, result.duplicates) == (len(want), 0)
    assert cursor().watermark == until.isoformat() and cursor().last_error is None


def test_exhausted_retries_keep_the_watermark_and_record_the_error(env, emu, records):
    first = START + timedelta(days=6)
    ingest_entrez(since=START, until=first)
    before = stored_pmids()
    emu.inject("500", times=100, endpoint="efetch")
    with pytest.raises(EntrezError, match=r"2024-01-08\.\.2024-01-14.*gave up after 4 attempts: HTTP 500"):
        ingest_entrez(until=LAST)
    assert [r.fault for r in emu.requests("efetch")].count("500") == 4  # four tries at window 2's first batch
    c = cursor()
    assert c.watermark == first.isoformat()
    assert "2024-01-08..2024-01-14" in c.last_error and "HTTP 500" in c.last_error
    assert stored_pmids() == before

    emu.clear_faults()
    ingest_entrez(until=LAST)
    assert stored_pmids() == expected(records)
    assert cursor().last_error is None and cursor().watermark == LAST.isoformat()


def test_connection_errors_are_retried_then_reported(env):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env(entrez_base_url=f"http://127.0.0.1:{port}/entrez/eutils/", entrez_max_attempts="2")
    with pytest.raises(EntrezError, match=r"esearch 2024-01-01\.\.2024-01-07: gave up after 2 attempts: URLError"):
        ingest_entrez(since=START, until=LAST)
    assert cursor().watermark is None and "URLError" in cursor().last_error


def test_a_refused_request_is_not_retried(env, emu):
    with pytest.raises(EntrezError, match=r"HTTP 400 Bad Request \(not retried\): the emulator supports AND only"):
        ingest_entrez(since=START, until=LAST, query="cancer OR stroke")
    assert len(emu.requests()) == 1
    assert "HTTP 400" in cursor("cancer OR stroke").last_error


def test_windows_at_the_esearch_limit_are_halved(env, emu, records, monkeypatch):
    monkeypatch.setattr(entrez, "ESEARCH_LIMIT", 20)
    env(entrez_window_days="14")
    ingest_entrez(since=START, until=LAST)
    assert stored_pmids() == expected(records)

    def parse(d: str) -> date:
        return date(*map(int, d.split("/")))

    windows = [(parse(lo), parse(hi)) for lo, hi in searched_windows(emu)]
    count = {w: len(expected(records, *w)) for w in windows}
    assert windows[0] == (START, START + timedelta(days=13)) and count[windows[0]] >= 20
    for lo, hi in windows:  # a full window was searched again as its two halves
        if count[(lo, hi)] >= 20:
            mid = lo + (hi - lo) // 2
            assert {(lo, mid), (mid + timedelta(days=1), hi)} <= set(windows)
    leaves = [w for w in windows if count[w] < 20]
    days = sorted(lo + timedelta(days=i) for lo, hi in leaves for i in range((hi - lo).days + 1))
    assert days == [START + timedelta(days=i) for i in range(35)]  # the fetched windows tile the range
    assert len(emu.requests("efetch")) == sum(math.ceil(count[w] / 10) for w in leaves)


def test_a_single_day_over_the_limit_is_paged(medqa_env, clean_redis, signals, monkeypatch, caplog):
    day = date(2024, 3, 5)
    crowd = generate_articles(30, seed=2, start_pmid=95_000_000, entrez_start=day, days=1)
    monkeypatch.setattr(entrez, "ESEARCH_LIMIT", 20)
    with EntrezEmulator([pubmed_xml(crowd)]) as emu:
        medqa_env(entrez_base_url=emu.base_url, ncbi_api_key="k", ncbi_rate_per_s="50", entrez_batch_size="10",
                  trigger_min_new="100000")
        with caplog.at_level(logging.WARNING, logger="medqa.ingest"):
            result = ingest_entrez(since=day, until=day)
        assert [r.params["retstart"] for r in emu.requests("efetch")] == ["0", "10", "20"]
    assert result.stored == 30 and len(stored_pmids()) == 30
    assert any("paging by retstart" in m for m in caplog.messages)


def test_a_crash_mid_window_is_resumed_exactly_once(env, emu, records, monkeypatch):
    real = entrez.store_records
    calls = []

    def crash_on_third(session, recs, *, source):
        calls.append(len(recs))
        result = real(session, recs, source=source)  # rows are in the session when the "crash" comes
        if len(calls) == 3:
            raise KeyboardInterrupt("simulated crash mid-window")
        return result

    monkeypatch.setattr(entrez, "store_records", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        ingest_entrez(since=START, until=LAST)
    after_crash = stored_pmids()
    assert after_crash == expected(records, START, START + timedelta(days=13))  # window 3 rolled back
    assert cursor().watermark == (START + timedelta(days=13)).isoformat()

    monkeypatch.setattr(entrez, "store_records", real)
    result = ingest_entrez(since=START, until=LAST)
    assert stored_pmids() == expected(records)
    assert (result.stored, result.duplicates) == (len(expected(records)) - len(after_crash), 0)


def test_a_killed_process_is_resumed_exactly_once(env, emu, records):
    env(entrez_batch_size="100")  # one efetch per window
    emu.slow_s = 30
    emu.inject("slow", endpoint="efetch", after=2)  # the third window's fetch hangs ...
    code = ("import shared.pipeline as p; p.send = lambda consumer, *args: True; "  # no consumers in this process
            f"from datetime import date; from services.ingest.entrez import ingest_entrez; "
            f"ingest_entrez(since=date({START.year}, {START.month}, {START.day}), "
            f"until=date({LAST.year}, {LAST.month}, {LAST.day}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not any(r.fault == "slow" for r in emu.requests("efetch")):
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the worker never reached the third window"
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # ... and the worker is killed in the middle of it
    finally:
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    two_windows = expected(records, START, START + timedelta(days=13))
    assert stored_pmids() == two_windows
    assert cursor().watermark == (START + timedelta(days=13)).isoformat()

    emu.clear_faults()
    result = ingest_entrez(since=START, until=LAST)
    assert stored_pmids() == expected(records)
    assert (result.stored, result.duplicates) == (len(expected(records)) - len(two_windows), 0)


def test_trigger_is_signalled_after_each_commit_with_new_rows(env, emu, signals):
    seen = signals
    ingest_entrez(since=START, until=START + timedelta(days=13))
    assert len(seen) == 2 and seen[0] > 0 and seen[1] == len(stored_pmids())  # each call sees its window committed
    ingest_entrez(since=START, until=START + timedelta(days=13))
    assert len(seen) == 2  # nothing new: no signal


def test_term_filter_setting_narrows_the_query(env, emu, records):
    mesh = records[0].mesh_terms[1]
    env(entrez_term_filter=f'"{mesh}"[mh]')
    query = default_query(get_settings())
    assert query == f'({QUERY}) AND ("{mesh}"[mh])'
    ingest_entrez(since=START, until=LAST)
    assert stored_pmids() == {p for p in expected(records) if mesh in next(
        r for r in records if r.pmid == p).mesh_terms}
    assert cursor(query).watermark == LAST.isoformat() and cursor(QUERY) is None


def test_watermark_stays_behind_unsettled_days(env, emu):
    today = date.today()
    ingest_entrez(since=today - timedelta(days=3), until=today)
    assert cursor().watermark == (today - timedelta(days=2)).isoformat()  # entrez_settle_days=2
    emu.clear_log()
    ingest_entrez(until=today)
    assert searched_windows(emu) == [(f"{today - timedelta(days=1):%Y/%m/%d}", f"{today:%Y/%m/%d}")]


# ------------------------------------------------------------------------------- the rate limit
def _burst(emu, limiters: list[RateLimiter], per_client: int) -> list[float]:
    """Each limiter drives one client thread sending einfo requests; returns arrival times."""
    emu.clear_log()

    def client(limiter: RateLimiter) -> None:
        for _ in range(per_client):
            limiter.acquire()
            with urllib.request.urlopen(emu.base_url + "einfo.fcgi", timeout=5) as r:
                r.read()

    threads = [threading.Thread(target=client, args=(lim,)) for lim in limiters]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sorted(r.time for r in emu.requests("einfo"))


def _max_per_second(times: list[float]) -> int:
    return max(sum(1 for u in times if t <= u < t + 1.0) for t in times)


def test_two_clients_share_one_limit_through_redis(emu, clean_redis):
    # Separate limiter objects and connections, as two worker processes would have.
    a, b = (RateLimiter(5, redis_url=TEST_REDIS, key="medqa:ncbi:rate:test") for _ in range(2))
    times = _burst(emu, [a, b], per_client=6)
    assert len(times) == 12 and a.shared and b.shared
    assert _max_per_second(times) <= 5
    assert times[-1] - times[0] >= 2.0  # 12 requests at 5/s span 2.2 s or more; unshared, about 1.1 s
    # Control: two unshared limiters at the same rate let twice as many through.
    a, b = (RateLimiter(5, redis_url=None) for _ in range(2))
    assert _max_per_second(_burst(emu, [a, b], per_client=6)) > 5


def test_redis_down_falls_back_to_an_in_process_limit(emu, caplog):
    limiter = RateLimiter(5, redis_url=DEAD_REDIS)
    with caplog.at_level(logging.WARNING, logger="medqa.ingest"):
        times = _burst(emu, [limiter, limiter], per_client=4)
    assert len(times) == 8 and not limiter.shared
    assert _max_per_second(times) <= 5
    assert sum("Redis unreachable" in m for m in caplog.messages) == 1  # logged once, not per request


def test_ingest_goes_on_with_the_broker_down(env, emu, records, monkeypatch):
    monkeypatch.setattr(pipeline, "send", REAL_SEND)  # the real consumers this time
    env(broker_url=DEAD_REDIS)
    result = ingest_entrez(since=START, until=START + timedelta(days=13))
    assert result.stored == len(expected(records, START, START + timedelta(days=13))) > 0


# --------------------------------------------------------------------------- Bio.Entrez plumbing
def test_build_request_is_redirected_and_keeps_its_timeout():
    configure_entrez(load_settings(entrez_base_url="http://127.0.0.1:9/x/", entrez_timeout_s=1.5))
    req = Entrez._build_request(NCBI_EUTILS + "esearch.fcgi", {"db": "pubmed", "term": "a b"})
    assert req.full_url.startswith("http://127.0.0.1:9/x/esearch.fcgi?db=pubmed&term=a+b&tool=medqa-cl")
    req.timeout = socket._GLOBAL_DEFAULT_TIMEOUT  # what urlopen() without a timeout does
    assert req.timeout == 1.5
    ids = ",".join(str(i) for i in range(300))  # Biopython still POSTs long id lists
    assert Entrez._build_request(NCBI_EUTILS + "efetch.fcgi", {"db": "pubmed", "id": ids}).get_method() == "POST"
    assert Entrez.max_tries == 1


def test_real_ncbi_needs_an_email():
    with pytest.raises(EntrezError, match="MEDQA_NCBI_EMAIL"):
        configure_entrez(load_settings(ncbi_email=None))
    configure_entrez(load_settings(ncbi_email="ops@example.org"))
    assert Entrez.email == "ops@example.org"


# ------------------------------------------------------------------------------- CLI and beat
def test_cli_ingest_entrez_and_status(env, emu, records):
    from services.cli import app

    runner = CliRunner()
    res = runner.invoke(app, ["ingest", "entrez", "--since", "2024-01-01", "--until", "2024-01-14", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["stored"] == len(expected(records, START, START + timedelta(days=13)))
    emu.inject("html", times=100)
    res = runner.invoke(app, ["ingest", "entrez", "--until", "2024-01-21"])
    assert res.exit_code == 1 and "error:" in res.output and "2024-01-15..2024-01-21" in res.output
    status = json.loads(runner.invoke(app, ["ingest", "status", "--json"]).stdout)
    (c,) = [c for c in status["cursors"] if c["source"] == "entrez"]
    assert c["watermark"] == "2024-01-14" and "NotXMLError" in c["last_error"]


def test_beat_poll_runs_entrez_when_an_email_is_set(env, emu):
    from services.ingest.tasks import poll

    assert poll() is None  # no watch folder, no e-mail: nothing to poll
    env(ncbi_email="ops@example.org")
    done = poll()
    assert done is not None and done["entrez"]["stored"] == 0  # the corpus is from 2024; today is empty
    assert searched_windows(emu)[-1][1] == f"{date.today():%Y/%m/%d}"
