"""NCBI faults through the real `medqa ingest entrez` process against the local E-utilities emulator:
every fault kind at once is retried to exactly the expected set; retries exhausted end in one line
that names the window, keep the watermark, and the next poll goes on from it. (Each fault kind alone,
a crash mid-window and a killed poller are in tests/test_entrez.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import time
from datetime import date, timedelta

import pytest
from procs import MEDQA
from sqlmodel import select

from services.devkit.emulator import FAULTS, EntrezEmulator
from services.devkit.synth import generate_articles, pubmed_xml
from services.ingest.parser import ArticleRecord, parse_pubmed_bytes
from services.ingest.store import keep
from shared.db import session_scope
from shared.tables import Abstract, IngestCursor

pytestmark = [pytest.mark.faults, pytest.mark.slow]
START = date(2024, 3, 1)
LAST = START + timedelta(days=27)


def _entrez(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MEDQA, "ingest", "entrez", "--since", START.isoformat(), "--until", LAST.isoformat(),
                           *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def test_every_ncbi_fault_at_once_then_an_outage_lose_nothing(medqa_env, fault_record):
    articles = generate_articles(120, seed=31, entrez_start=START, days=28)
    want = {r.pmid for r in parse_pubmed_bytes(pubmed_xml(articles))
            if isinstance(r, ArticleRecord) and keep(r)}
    with EntrezEmulator([pubmed_xml(articles)], slow_s=1.0) as emu:
        medqa_env(entrez_base_url=emu.base_url, ncbi_rate_per_s="50", entrez_window_days="7",
                  entrez_batch_size="10", entrez_backoff_s="0.01", entrez_max_attempts="4", entrez_timeout_s="0.5",
                  trigger_min_new="1000000", eager="0", broker_url="redis://127.0.0.1:1/0")
        for n, kind in enumerate(FAULTS):  # 429, 500, truncated, html, slow: each twice, on both tools
            emu.inject(kind, times=2, endpoint="efetch", after=n)
            emu.inject(kind, times=1, endpoint="esearch", after=n)
        res = _entrez("--json")
        assert res.returncode == 0, res.stderr[-3000:]
        faulted = [r.fault for r in emu.requests() if r.fault]
        faults = len(faulted)
        assert set(faulted) == set(FAULTS) and faults >= 2 * len(FAULTS)  # (fewer searches than faults queued)
        with session_scope() as s:
            assert set(s.exec(select(Abstract.pmid)).all()) == want  # no gap, no duplicate
        assert json.loads(res.stdout)["duplicates"] == 0

        # An outage longer than the retries: one line naming the window, the watermark kept.
        emu.clear_faults()
        emu.inject("500", times=1000)
        later = LAST + timedelta(days=7)
        t0 = time.monotonic()
        res = subprocess.run([MEDQA, "ingest", "entrez", "--until", later.isoformat()], capture_output=True,
                             text=True, env=os.environ.copy(), timeout=300)
        assert res.returncode == 1 and "Traceback" not in res.stderr
        assert "gave up after 4 attempts" in res.stderr and "HTTP 500" in res.stderr
        with session_scope() as s:
            cursor = s.exec(select(IngestCursor).where(IngestCursor.source == "entrez")).one()
        assert cursor.watermark == LAST.isoformat() and "HTTP 500" in (cursor.last_error or "")
        emu.clear_faults()  # NCBI is back: the next poll goes on from the watermark
        res = subprocess.run([MEDQA, "ingest", "entrez", "--until", later.isoformat(), "--json"],
                             capture_output=True, text=True, env=os.environ.copy(), timeout=300)
        assert res.returncode == 0, res.stderr[-3000:]
        recovery = time.monotonic() - t0
        with session_scope() as s:
            cursor = s.exec(select(IngestCursor).where(IngestCursor.source == "entrez")).one()
        assert cursor.watermark == later.isoformat() and cursor.last_error is None
    fault_record("NCBI faults (429, 500, truncated, HTML, timeout) and an outage", recovery_s=recovery,
                 injected_requests=faults)
