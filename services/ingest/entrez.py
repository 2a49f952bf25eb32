"""The Entrez source: poll PubMed by entrez-date window through Bio.Entrez, exactly once.

Flow per (source="entrez", query) cursor: from the day after its watermark, cut [start, until]
into windows of `entrez_window_days`; for each, esearch (retmax=0, usehistory=y) gives the count
and a WebEnv; a window matching ESEARCH_LIMIT or more is halved until it fits (a single day that
still does not fit is paged by retstart); efetch pulls the window from the history server in
batches; the window's rows and the moved watermark commit in ONE transaction. A crash mid-window
therefore leaves the watermark before that window, the rerun fetches it again, and the store's
dedup by PMID and content hash makes the second pass add only what the first did not commit.

Retries are ours, not Biopython's (Entrez.max_tries = 1): exponential backoff with jitter on HTTP
429/5xx, connection errors and timeouts, truncated XML and HTML error pages. Every attempt first
takes a slot from the rate limit shared by all ingest workers.
"""

from __future__ import annotations

import http.client
import logging
import random
import re
import threading
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any, TypeVar
from urllib.error import HTTPError
from urllib.request import Request

from Bio import Entrez
from Bio.Entrez.Parser import CorruptedXMLError, NotXMLError
from sqlmodel import Session, select

from services.ingest.parser import ArticleRecord, DeleteRecord, PubmedParseError, parse_pubmed_bytes
from services.ingest.ratelimit import RateLimiter, ncbi_limiter
from services.ingest.store import IngestResult, store_records
from shared.db import session_scope
from shared.pipeline import Event, emit
from shared.settings import Settings, get_settings
from shared.tables import IngestCursor, utcnow

__all__ = ["ESEARCH_LIMIT", "NCBI_EUTILS", "EntrezClient", "EntrezError", "default_query", "ingest_entrez"]

log = logging.getLogger("medqa.ingest")

NCBI_EUTILS = "https://eutils.ncbi.nlm.nih.gov/entrez/eutils/"  # what Bio.Entrez hard-codes
RETRACTIONS_QUERY = '"retracted publication"[pt]'  # polled by modification date (poll_retractions)
ESEARCH_LIMIT = 10_000  # esearch serves at most this many ids per query: bigger windows are split
BACKOFF_CAP_S = 60.0
SOURCE = "entrez"
_ERROR_ELEMENT = re.compile(r"<ERROR>(.*?)</ERROR>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")

T = TypeVar("T")
Record = ArticleRecord | DeleteRecord


class EntrezError(RuntimeError):
    """An E-utilities request failed for good (retries exhausted, or a reply not worth retrying)."""


class _ErrorReply(Exception):
    """A well-formed reply that carries an NCBI <ERROR> (often a transient backend failure)."""


# ----------------------------------------------------------------------------- Bio.Entrez set-up
class _TimedRequest(Request):
    """A Request that keeps its own timeout. Bio.Entrez._open calls urlopen(request) with no
    timeout, and urllib then overwrites request.timeout with its 'use the socket default' marker
    (block forever); the process-wide socket default is not ours to change."""

    def __init__(self, *args: Any, timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._timeout_s = timeout_s

    @property
    def timeout(self) -> float:
        return self._timeout_s

    @timeout.setter
    def timeout(self, value: object) -> None:
        if isinstance(value, int | float):  # an explicit timeout wins; the marker object does not
            self._timeout_s = float(value)


_hook_lock = threading.Lock()
_base_url = NCBI_EUTILS
_timeout_s = 60.0


def _install_hook() -> None:
    """Bio.Entrez has no base-URL setting: each tool builds `https://eutils.ncbi.nlm.nih.gov/...`
    and hands it to _build_request. Wrapping that one function swaps the prefix and keeps
    Biopython's own request building (tool/email/api_key, POST for long id lists)."""
    original = Entrez._build_request
    if getattr(original, "_medqa_hook", False):
        return

    def build_request(cgi: str, params: Any = None, post: Any = None, ecitmatch: bool = False,
                      join_ids: bool = True) -> Request:
        if cgi.startswith(NCBI_EUTILS):
            cgi = _base_url + cgi[len(NCBI_EUTILS):]
        built = original(cgi, params, post=post, ecitmatch=ecitmatch, join_ids=join_ids)
        return _TimedRequest(built.full_url, data=built.data, method=built.get_method(),
                             headers=dict(built.header_items()), timeout_s=_timeout_s)

    build_request._medqa_hook = True  # type: ignore[attr-defined]
    Entrez._build_request = build_request


def configure_entrez(settings: Settings) -> None:
    """Point Bio.Entrez (process-wide module state) at the configured service and identity."""
    global _base_url, _timeout_s
    if settings.entrez_base_url == NCBI_EUTILS and not settings.ncbi_email:
        raise EntrezError("NCBI requires a contact e-mail with E-utilities requests: set MEDQA_NCBI_EMAIL")
    with _hook_lock:
        _install_hook()
        _base_url, _timeout_s = settings.entrez_base_url, settings.entrez_timeout_s
        # The emulator needs no identity; a placeholder keeps Biopython's per-request warning quiet.
        Entrez.email = settings.ncbi_email or f"{settings.entrez_tool}@localhost"  # type: ignore[assignment]
        Entrez.api_key = settings.ncbi_api_key.get_secret_value() if settings.ncbi_api_key else None  # type: ignore[assignment]
        Entrez.tool = settings.entrez_tool
        Entrez.max_tries = 1  # our retry loop governs: backoff, jitter, the shared rate limit


def default_query(settings: Settings) -> str:
    if settings.entrez_term_filter:
        return f"({settings.entrez_query}) AND ({settings.entrez_term_filter})"
    return settings.entrez_query


# ------------------------------------------------------------------------------------ the client
@dataclass(frozen=True, slots=True)
class Search:
    count: int
    webenv: str
    query_key: str


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, HTTPError):
        return exc.code == 429 or exc.code >= 500
    # OSError covers URLError, refused/reset connections and socket timeouts.
    return isinstance(exc, OSError | http.client.HTTPException | CorruptedXMLError | NotXMLError
                      | PubmedParseError | _ErrorReply)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, HTTPError):
        return f"HTTP {exc.code} {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


class EntrezClient:
    def __init__(self, settings: Settings, limiter: RateLimiter | None = None) -> None:
        configure_entrez(settings)
        self.max_attempts = settings.entrez_max_attempts
        self.backoff_s = settings.entrez_backoff_s
        self.limiter = limiter or ncbi_limiter(settings)

    def search(self, query: str, lo: date, hi: date, datetype: str = "edat") -> Search:
        what = f"esearch {lo}..{hi}"

        def call() -> Search:
            with closing(Entrez.esearch(db="pubmed", term=query, datetype=datetype, mindate=f"{lo:%Y/%m/%d}",
                                        maxdate=f"{hi:%Y/%m/%d}", retmax=0, usehistory="y")) as handle:
                try:
                    reply = Entrez.read(handle)
                except RuntimeError as exc:  # Bio.Entrez raises it for an <ERROR> element
                    raise _ErrorReply(str(exc)) from exc
            return Search(int(reply["Count"]), str(reply["WebEnv"]), str(reply["QueryKey"]))

        return self._retry(what, call)

    def fetch(self, search: Search, retstart: int, retmax: int, *, label: str) -> list[Record]:
        what = f"efetch {label} retstart={retstart}"

        def call() -> list[Record]:
            with closing(Entrez.efetch(db="pubmed", webenv=search.webenv, query_key=search.query_key,
                                       retstart=retstart, retmax=retmax, rettype="abstract",
                                       retmode="xml")) as handle:
                data = handle.read()
            if isinstance(data, str):  # Bio wraps text/plain replies in a text stream
                data = data.encode("utf-8")
            return parse_pubmed_bytes(data, name=what)

        return self._retry(what, call)

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        for attempt in range(1, self.max_attempts + 1):
            self.limiter.acquire()
            try:
                return call()
            except Exception as exc:
                reason = _http_reason(exc)
                if not _retryable(exc):
                    if isinstance(exc, HTTPError):
                        raise EntrezError(f"{what}: {_describe(exc)} (not retried){reason}") from exc
                    raise  # not a fetch failure (a bug, a database error): let it surface as it is
                if attempt == self.max_attempts:
                    raise EntrezError(f"{what}: gave up after {attempt} attempts: {_describe(exc)}{reason}") from exc
                delay = self._backoff(attempt)
                log.warning("%s: %s; retry %d/%d in %.2fs", what, _describe(exc), attempt, self.max_attempts - 1,
                            delay)
                time.sleep(delay)
        raise AssertionError("unreachable: the loop returns or raises")

    def _backoff(self, attempt: int) -> float:
        # "Equal jitter": at least half the exponential step, so waits do grow, and a random rest,
        # so workers that failed together do not come back together.
        step = min(BACKOFF_CAP_S, self.backoff_s * 2 ** (attempt - 1))
        return step / 2 + random.uniform(0, step / 2)


def _http_reason(exc: BaseException) -> str:
    """NCBI's reason for an HTTP error: the <ERROR> text of an XML reply, else the start of the
    body as text. Reading also closes the error, which holds the connection open."""
    if not isinstance(exc, HTTPError):
        return ""
    try:
        body = exc.read(4096).decode("utf-8", "replace")
    except Exception:  # the reason is a nicety; the status code is in the message already
        body = ""
    finally:
        exc.close()
    match = _ERROR_ELEMENT.search(body)
    text = match.group(1) if match else _TAG.sub(" ", body)
    text = " ".join(text.split())[:200]
    return f": {text}" if text else ""


# ------------------------------------------------------------------------------------ the flow
def poll_retractions(*, since: date | None = None, until: date | None = None) -> IngestResult:
    """Newly retracted publications, by modification date (PubMed modifies a record when it flags
    its retraction) from their own watermark: through the same client, rate limit and retries as
    the abstract poll. Stored papers among them are marked retracted (papers.retracted goes to the
    monitor); the others are kept as tombstones, so they arrive retracted."""
    return ingest_entrez(since=since, until=until, query=RETRACTIONS_QUERY, datetype="mdat")


def ingest_entrez(*, since: date | None = None, query: str | None = None, until: date | None = None,
                  datetype: str = "edat") -> IngestResult:
    """Fetch and store everything the query matches by entrez date (or `datetype`), from the day after
    the cursor's watermark (or `since`, if later) through `until` (default today). A first run with
    neither starts one window before `until`. Raises EntrezError when a window cannot be fetched;
    the windows before it stay committed, and the next run starts at that window."""
    settings = get_settings()
    q = query or default_query(settings)
    if len(q) > 500:  # IngestCursor.query is VARCHAR(500)
        raise ValueError(f"query is {len(q)} characters; at most 500 are supported")
    today = date.today()
    until = until or today
    watermark = _watermark(q)
    if watermark is not None:
        start = watermark + timedelta(days=1)
        if since is not None:
            start = max(start, since)
    else:
        start = since or until - timedelta(days=settings.entrez_window_days - 1)
    total = IngestResult()
    if start > until:
        log.info("entrez %r: nothing to do, watermark %s is at or past %s", q, watermark, until)
        return total
    run = _Run(EntrezClient(settings), q, settings, settled=today - timedelta(days=settings.entrez_settle_days),
               datetype=datetype)
    lo = start
    while lo <= until:
        hi = min(until, lo + timedelta(days=settings.entrez_window_days - 1))
        total.add(run.window(lo, hi))
        lo = hi + timedelta(days=1)
    return total


@dataclass
class _Run:
    client: EntrezClient
    query: str
    settings: Settings
    settled: date  # the watermark never passes this day: PubMed may still add to later ones
    datetype: str = "edat"

    def window(self, lo: date, hi: date) -> IngestResult:
        label = f"{lo}..{hi}"
        try:
            search = self.client.search(self.query, lo, hi, self.datetype)
        except EntrezError as exc:
            raise self._failed(label, exc) from exc
        if search.count >= ESEARCH_LIMIT and lo < hi:
            mid = lo + (hi - lo) // 2
            log.info("entrez window %s matches %d (limit %d): splitting", label, search.count, ESEARCH_LIMIT)
            result = self.window(lo, mid)
            result.add(self.window(mid + timedelta(days=1), hi))
            return result
        if search.count >= ESEARCH_LIMIT:
            log.warning("entrez day %s matches %d, more than esearch's %d: paging by retstart (NCBI may refuse "
                        "to page past 9,999; narrow the query if records go missing)", lo, search.count,
                        ESEARCH_LIMIT)
        try:
            records = self._fetch_all(search, label)
        except EntrezError as exc:
            raise self._failed(label, exc) from exc
        result = self._commit(records, hi)
        log.info("entrez window %s: %d matched, %d stored, %d updated, %d duplicates, %d filtered", label,
                 search.count, result.stored, result.updated, result.duplicates, result.filtered)
        return result

    def _failed(self, label: str, exc: EntrezError) -> EntrezError:
        """Record the error on the cursor (its own transaction); the watermark stays where it is."""
        message = f"entrez window {label} for query {self.query!r} failed: {exc}"
        _record_error(self.query, message)
        return EntrezError(message)

    def _fetch_all(self, search: Search, label: str) -> list[Record]:
        records: list[Record] = []
        batch = min(self.settings.entrez_batch_size, ESEARCH_LIMIT)
        for retstart in range(0, search.count, batch):
            got = self.client.fetch(search, retstart, batch, label=label)
            expected = min(batch, search.count - retstart)
            n = sum(isinstance(r, ArticleRecord) for r in got)
            if n < expected:  # records withdrawn since the search, or books: not an error, but visible
                log.warning("efetch %s retstart=%d returned %d of %d articles", label, retstart, n, expected)
            records.extend(got)
        return records

    def _commit(self, records: list[Record], hi: date) -> IngestResult:
        # Rows and watermark in one transaction: either both land or neither does.
        with session_scope() as session:
            result = store_records(session, records, source=SOURCE)
            cursor = _cursor(session, self.query)
            mark = min(hi, self.settled)
            if cursor.watermark is None or mark.isoformat() > cursor.watermark:
                cursor.watermark = mark.isoformat()
            cursor.last_success, cursor.last_error = utcnow(), None
            cursor.stored += result.stored + result.updated
            cursor.skipped += result.duplicates + result.filtered
            session.add(cursor)
            if result.stored or result.updated:
                emit(session, Event.ABSTRACTS_STORED)
        return result


def _cursor(session: Session, query: str) -> IngestCursor:
    cursor = session.exec(select(IngestCursor).where(IngestCursor.source == SOURCE,
                                                     IngestCursor.query == query)).first()
    return cursor or IngestCursor(source=SOURCE, query=query)


def _watermark(query: str) -> date | None:
    with session_scope() as session:
        cursor = _cursor(session, query)
        return date.fromisoformat(cursor.watermark) if cursor.watermark else None


def _record_error(query: str, message: str) -> None:
    with session_scope() as session:
        cursor = _cursor(session, query)
        cursor.last_error = message
        session.add(cursor)
