"""A local E-utilities emulator: esearch, efetch and einfo for PubMed, served from PubmedArticle XML.

Tests and the demo point Bio.Entrez at it (setting `entrez_base_url`), so the whole Entrez path
(date windows, paging, WebEnv history, retries) runs without the network. It answers in NCBI's
reply shapes, with DOCTYPEs that Bio.Entrez.read accepts, and it can be told to fail: HTTP 429 or
500, a reply cut mid-way, an HTML error page, a slow reply. Every request is logged, so a test can
count what a client sent and when.

What it does not do: PubMed's query language. A term is a conjunction (AND) of free words or
quoted phrases (matched in title and abstract), `word[lang]`, `term[mh]`, `"type"[pt]` and `hasabstract`;
other field tags are accepted and ignored; OR and NOT are refused with an error reply.
"""

from __future__ import annotations

import calendar
import gzip
import io
import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit
from xml.sax.saxutils import escape

from lxml import etree

from services.ingest.parser import ArticleRecord, parse_pubmed_bytes

__all__ = ["FAULTS", "EmulatorArticle", "EntrezEmulator", "LoggedRequest", "load_corpus"]

log = logging.getLogger("medqa.emulator")

FAULTS = ("429", "500", "truncated", "html", "slow")
ENDPOINTS = ("esearch", "efetch", "einfo")
PATH_PREFIX = "/entrez/eutils/"
MAX_RETMAX = 10_000  # NCBI's cap for one esearch/efetch reply
MAX_WEBENVS = 1_000  # history kept server-side; the oldest is forgotten, as NCBI expires them

_XML_DECL = '<?xml version="1.0" encoding="UTF-8" ?>\n'
_DOCTYPES = {
    "eSearchResult": '<!DOCTYPE eSearchResult PUBLIC "-//NLM//DTD esearch 20060628//EN" '
                     '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20060628/esearch.dtd">',
    "eInfoResult": '<!DOCTYPE eInfoResult PUBLIC "-//NLM//DTD einfo 20190110//EN" '
                   '"https://eutils.ncbi.nlm.nih.gov/eutils/dtd/20190110/einfo.dtd">',
    "PubmedArticleSet": '<!DOCTYPE PubmedArticleSet PUBLIC "-//NLM//DTD PubMedArticle, 1st January 2025//EN" '
                        '"https://dtd.nlm.nih.gov/ncbi/pubmed/out/pubmed_250101.dtd">',
    "eFetchResult": "",  # NCBI's efetch error reply carries no DOCTYPE
}
_HTML_PAGE = (b"<!DOCTYPE html>\n<html><head><title>Temporarily unavailable</title></head>\n"
              b"<body><h1>Service temporarily unavailable</h1>\n<p>The E-utilities emulator was asked "
              b"to answer with an error page.<br>Please retry later.</p></body></html>\n")
_SAFE_PARSER = {"load_dtd": False, "no_network": True, "resolve_entities": False, "huge_tree": True}
_SPLIT_AND = re.compile(r"\s+AND\s+")
_UNSUPPORTED_BOOLEAN = re.compile(r"\s(OR|NOT)\s")
_CLAUSE = re.compile(r"^(?P<text>.*?)\s*(?:\[(?P<field>[^\]]*)\])?$")
_WORD = re.compile(r'"([^"]*)"|(\S+)')
_FREE_TEXT_FIELDS = {None, "", "all", "all fields", "tiab", "title/abstract", "tw", "text word", "text",
                     "ti", "title", "ab", "abstract"}
_MESH_FIELDS = {"mh", "mesh", "mesh terms", "majr", "mesh major topic"}
_LANG_FIELDS = {"la", "lang", "language"}
_TYPE_FIELDS = {"pt", "publication type"}


@dataclass(frozen=True, slots=True)
class EmulatorArticle:
    pmid: int
    entrez_date: date | None
    record: ArticleRecord
    xml: bytes  # the PubmedArticle element as it came, re-serialised by lxml


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    endpoint: str  # esearch, efetch, einfo, or the path for an unknown one
    params: dict[str, str]
    time: float  # time.monotonic() at arrival
    fault: str | None  # the injected fault this request got, if any


@dataclass
class _Fault:
    kind: str
    times: int
    endpoint: str | None
    after: int  # matching requests to let through first


class _BadRequest(Exception):
    """A parameter NCBI would refuse; becomes an ERROR reply with HTTP 400."""


def load_corpus(sources: Iterable[str | Path | bytes]) -> list[EmulatorArticle]:
    """PubmedArticle elements from files (plain or gzip) or bytes; other records are skipped."""
    articles: list[EmulatorArticle] = []
    for i, source in enumerate(sources):
        if isinstance(source, bytes):
            data, name = source, f"<corpus bytes {i}>"
        else:
            data, name = Path(source).read_bytes(), str(source)
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        articles.extend(_articles(data, name))
    return articles


def _as_articles(items: list[Any]) -> list[EmulatorArticle]:
    ready = [a for a in items if isinstance(a, EmulatorArticle)]
    if len(ready) == len(items):
        return ready
    if ready:
        raise TypeError("give the emulator either EmulatorArticle objects or files/bytes, not both")
    return load_corpus(items)


def _articles(data: bytes, name: str) -> Iterator[EmulatorArticle]:
    for _, elem in etree.iterparse(io.BytesIO(data), events=("end",), tag="PubmedArticle", **_SAFE_PARSER):
        raw = etree.tostring(elem, encoding="UTF-8", with_tail=False)
        elem.clear(keep_tail=False)
        # Our own parser gives the PMID, entrez date and text exactly as ingest will see them.
        records = parse_pubmed_bytes(b"<PubmedArticleSet>" + raw + b"</PubmedArticleSet>", name=name)
        record = records[0]
        assert isinstance(record, ArticleRecord)
        yield EmulatorArticle(record.pmid, record.entrez_date, record, raw)


class EntrezEmulator:
    """A threaded HTTP server on 127.0.0.1; use as a context manager or start()/stop()."""

    def __init__(self, corpus: Iterable[str | Path | bytes] | Sequence[EmulatorArticle], *, port: int = 0,
                 host: str = "127.0.0.1", slow_s: float = 2.0) -> None:
        by_pmid = {a.pmid: a for a in _as_articles(list(corpus))}
        # NCBI lists the newest entries first; a fixed order keeps paging stable between calls.
        self._articles = sorted(by_pmid.values(), key=lambda a: (a.entrez_date or date.min, a.pmid), reverse=True)
        self._by_pmid = by_pmid
        self.slow_s = slow_s
        self._host, self._port = host, port
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._log: list[LoggedRequest] = []
        self._history: OrderedDict[str, list[list[int]]] = OrderedDict()
        self._stopping = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._started = datetime.now()

    # -- lifecycle
    def start(self) -> EntrezEmulator:
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self._host, self._port), _Handler)
        server.emulator = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="entrez-emulator", daemon=True)
        self._thread.start()
        log.info("E-utilities emulator serving %d articles at %s", len(self._articles), self.base_url)
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes handlers sleeping in a "slow" fault
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> EntrezEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return f"http://{self._host}:{self._server.server_port}{PATH_PREFIX}"

    def __len__(self) -> int:
        return len(self._articles)

    @property
    def articles(self) -> list[EmulatorArticle]:
        return list(self._articles)

    # -- test hooks
    def inject(self, kind: str, times: int = 1, endpoint: str | None = None, *, after: int = 0) -> None:
        """The next `times` matching requests (after letting `after` through) get fault `kind`."""
        if kind not in FAULTS:
            raise ValueError(f"unknown fault {kind!r}; faults are {FAULTS}")
        if endpoint is not None and endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; endpoints are {ENDPOINTS}")
        if times < 1 or after < 0:
            raise ValueError("times must be >= 1 and after >= 0")
        with self._lock:
            self._faults.append(_Fault(kind, times, endpoint, after))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def requests(self, endpoint: str | None = None) -> list[LoggedRequest]:
        """The request log in arrival order, optionally for one endpoint."""
        with self._lock:
            return [r for r in self._log if endpoint is None or r.endpoint == endpoint]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # -- request handling (called from handler threads)
    def _arrive(self, endpoint: str, params: dict[str, str]) -> str | None:
        with self._lock:
            fault = None
            for f in self._faults:
                if f.endpoint not in (None, endpoint):
                    continue
                if f.after > 0:
                    f.after -= 1
                    continue
                f.times -= 1
                fault = f.kind
                if f.times == 0:
                    self._faults.remove(f)
                break
            self._log.append(LoggedRequest(endpoint, params, time.monotonic(), fault))
            return fault

    def _answer(self, endpoint: str, params: dict[str, str]) -> tuple[int, str, bytes]:
        root = {"esearch": "eSearchResult", "efetch": "eFetchResult", "einfo": "eInfoResult"}[endpoint]
        try:
            if endpoint == "esearch":
                return 200, "text/xml; charset=UTF-8", self._esearch(params)
            if endpoint == "efetch":
                return 200, "text/xml; charset=UTF-8", self._efetch(params)
            return 200, "text/xml; charset=UTF-8", self._einfo(params)
        except _BadRequest as exc:
            return 400, "text/xml; charset=UTF-8", _document(root, f"<ERROR>{escape(str(exc))}</ERROR>")

    def _esearch(self, p: dict[str, str]) -> bytes:
        _need_pubmed(p)
        term = p.get("term", "").strip()
        if not term:
            raise _BadRequest("Empty term and query_key - nothing to do")
        match = _term_matcher(term)
        lo, hi, datetype = _date_window(p)
        retstart, retmax = _int(p, "retstart", 0), min(_int(p, "retmax", 20), MAX_RETMAX)
        ids = [a.pmid for a in self._articles
               if (lo is None or hi is None or _dated(a, datetype, lo, hi)) and match(a.record)]
        page = ids[retstart:retstart + retmax]
        history = ""
        if p.get("usehistory", "").lower() == "y":
            webenv, key = self._remember(p.get("webenv"), ids)
            history = f"<QueryKey>{key}</QueryKey><WebEnv>{webenv}</WebEnv>"
        body = (f"<Count>{len(ids)}</Count><RetMax>{len(page)}</RetMax><RetStart>{retstart}</RetStart>{history}"
                "<IdList>\n" + "".join(f"<Id>{i}</Id>\n" for i in page) + "</IdList>"
                f"<TranslationSet/><QueryTranslation>{escape(term)}</QueryTranslation>")
        return _document("eSearchResult", body)

    def _efetch(self, p: dict[str, str]) -> bytes:
        _need_pubmed(p)
        if p.get("retmode", "xml").lower() != "xml" or p.get("rettype", "abstract").lower() not in ("abstract", "xml"):
            raise _BadRequest("the emulator serves rettype=abstract, retmode=xml only")
        if p.get("id"):
            try:
                ids = [int(x) for x in p["id"].split(",") if x.strip()]
            except ValueError:
                raise _BadRequest(f"Invalid uid in id list: {p['id'][:80]}") from None
            retstart, retmax = 0, len(ids)
        elif p.get("webenv") and p.get("query_key"):
            ids = self._recall(p["webenv"], p["query_key"])
            retstart, retmax = _int(p, "retstart", 0), min(_int(p, "retmax", 20), MAX_RETMAX)
        else:
            raise _BadRequest("Neither query_key nor id specified")
        # Unknown PMIDs are left out silently, as NCBI does.
        chosen = [self._by_pmid[i].xml for i in ids[retstart:retstart + retmax] if i in self._by_pmid]
        return _document("PubmedArticleSet", "\n" + "\n".join(c.decode("utf-8") for c in chosen) + "\n")

    def _einfo(self, p: dict[str, str]) -> bytes:
        db = p.get("db", "")
        if not db:
            return _document("eInfoResult", "<DbList><DbName>pubmed</DbName></DbList>")
        _need_pubmed(p)
        stamp = self._started.strftime("%Y/%m/%d %H:%M")
        return _document("eInfoResult", (
            "<DbInfo><DbName>pubmed</DbName><MenuName>PubMed</MenuName>"
            "<Description>PubMed bibliographic record (local emulator)</Description>"
            f"<DbBuild>Emulator-{self._started:%Y.%m.%d.%H.%M}</DbBuild><Count>{len(self._articles)}</Count>"
            f"<LastUpdate>{stamp}</LastUpdate><FieldList/><LinkList/></DbInfo>"))

    def _remember(self, webenv: str | None, ids: list[int]) -> tuple[str, int]:
        with self._lock:
            if webenv not in self._history:  # a new environment, as NCBI starts one when none is given
                webenv = f"MCID_{uuid.uuid4().hex[:24]}"
                self._history[webenv] = []
                while len(self._history) > MAX_WEBENVS:
                    self._history.popitem(last=False)
            assert webenv is not None
            queries = self._history[webenv]
            queries.append(ids)
            return webenv, len(queries)

    def _recall(self, webenv: str, query_key: str) -> list[int]:
        with self._lock:
            queries = self._history.get(webenv)
            if queries is None or not query_key.isdigit() or not 1 <= int(query_key) <= len(queries):
                raise _BadRequest(f"Unable to obtain query #{query_key} from WebEnv (unknown or expired)")
            return queries[int(query_key) - 1]


def _document(root: str, body: str) -> bytes:
    doctype = _DOCTYPES[root]
    return (_XML_DECL + (doctype + "\n" if doctype else "") + f"<{root}>{body}</{root}>\n").encode("utf-8")


def _need_pubmed(p: dict[str, str]) -> None:
    db = p.get("db", "")
    if db.lower() != "pubmed":
        raise _BadRequest(f"Invalid db name specified: {db}" if db else "Missing db parameter")


def _int(p: dict[str, str], name: str, default: int) -> int:
    value = p.get(name, "").strip()
    if not value:
        return default
    if not value.isdigit():
        raise _BadRequest(f"Invalid {name}: {value!r}")
    return int(value)


def _date_window(p: dict[str, str]) -> tuple[date | None, date | None, str]:
    datetype = p.get("datetype", "edat").lower()
    mindate, maxdate = p.get("mindate", "").strip(), p.get("maxdate", "").strip()
    if not mindate and not maxdate:
        return None, None, datetype
    if not (mindate and maxdate):
        raise _BadRequest("mindate and maxdate must be given together")
    if datetype not in ("edat", "mdat"):
        raise _BadRequest(f"the emulator supports datetype=edat and mdat only, got {datetype!r}")
    return _parse_date(mindate, end=False), _parse_date(maxdate, end=True), datetype


def _dated(article: EmulatorArticle, datetype: str, lo: date, hi: date) -> bool:
    """edat: the entrez date; mdat: the last modification, which PubMed's DateRevised stands for here
    (a record revised to flag its retraction is modified that day)."""
    when = article.entrez_date if datetype == "edat" else article.record.revised_date or article.entrez_date
    return when is not None and lo <= when <= hi


def _parse_date(text: str, *, end: bool) -> date:
    """YYYY, YYYY/MM or YYYY/MM/DD; a partial maxdate means the end of that year or month."""
    parts = text.replace("-", "/").split("/")
    try:
        if len(parts) == 3:
            return date(int(parts[0]), int(parts[1]), int(parts[2]))
        if len(parts) == 2:
            year, month = int(parts[0]), int(parts[1])
            return date(year, month, calendar.monthrange(year, month)[1] if end else 1)
        if len(parts) == 1:
            return date(int(parts[0]), 12, 31) if end else date(int(parts[0]), 1, 1)
    except ValueError:
        pass
    raise _BadRequest(f"Invalid date {text!r}: expected YYYY/MM/DD")


def _term_matcher(term: str):  # type: ignore[no-untyped-def]
    if term in ("*", "all", "all[sb]"):
        return lambda _record: True
    if _UNSUPPORTED_BOOLEAN.search(f" {term} "):
        raise _BadRequest("the emulator supports AND only, not OR or NOT")
    tests = [_clause(c.strip("() ")) for c in _SPLIT_AND.split(term.strip()) if c.strip("() ")]
    return lambda record: all(t(record) for t in tests)


def _clause(clause: str):  # type: ignore[no-untyped-def]
    m = _CLAUSE.match(clause)
    assert m is not None  # the pattern matches any string
    text, field = m["text"].strip().strip("()"), (m["field"] or "").strip().lower() or None
    if text.lower() == "hasabstract":
        return lambda r: bool(r.abstract)
    if field in _LANG_FIELDS:
        want = text.strip('"').lower()[:3]
        return lambda r: r.language.lower()[:3] == want
    if field in _MESH_FIELDS:
        want = text.strip('"').lower()
        return lambda r: any(t.lower() == want for t in r.mesh_terms)
    if field in _TYPE_FIELDS:
        want = text.strip('"').lower()
        return lambda r: any(t.lower() == want for t in r.publication_types)
    if field not in _FREE_TEXT_FIELDS:
        log.debug("emulator ignores field tag [%s] in %r", field, clause)
        return lambda _r: True
    words = [(q or w).lower() for q, w in _WORD.findall(text)]
    return lambda r: all(w in f"{r.title}\n{r.abstract}".lower() for w in words)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() must not wait for a handler asleep in a "slow" fault
    emulator: EntrezEmulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that timed out and hung up is expected (slow faults); say so quietly.
        log.debug("emulator: connection from %s ended early", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "medqa-eutils-emulator/1"

    def do_GET(self) -> None:
        self._serve(urlsplit(self.path).query)

    def do_POST(self) -> None:  # Bio.Entrez posts long id lists
        length = int(self.headers.get("Content-Length") or 0)
        query = urlsplit(self.path).query
        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
        self._serve("&".join(q for q in (query, body) if q))

    def _serve(self, query: str) -> None:
        emu = self.server.emulator
        path = urlsplit(self.path).path
        # NCBI reads parameter names case-insensitively (Bio.Entrez users write webenv, NCBI's docs WebEnv).
        params = {k.lower(): v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        endpoint = path[len(PATH_PREFIX):].removesuffix(".fcgi") if path.startswith(PATH_PREFIX) else path
        if endpoint not in ENDPOINTS:
            emu._arrive(path, params)
            self._send(404, "text/plain", f"no such E-utility: {path}\n".encode())
            return
        fault = emu._arrive(endpoint, params)
        if fault == "429":
            body = json.dumps({"error": "API rate limit exceeded", "api-key": "emulator", "count": "4",
                               "limit": "3"}).encode()
            self._send(429, "application/json", body)
            return
        if fault == "500":
            self._send(500, "text/html", b"<html><body><h1>500 Internal Server Error</h1></body></html>\n")
            return
        if fault == "html":
            self._send(200, "text/html; charset=UTF-8", _HTML_PAGE)
            return
        if fault == "slow" and emu._stopping.wait(emu.slow_s):
            return  # the emulator is stopping: leave without answering
        status, ctype, body = emu._answer(endpoint, params)
        if fault == "truncated":
            status, body = 200, body[:max(len(body) // 2, 1)]
        self._send(status, ctype, body)

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
        log.debug("emulator: " + format, *args)
