"""The local E-utilities emulator: NCBI reply shapes, date windows, paging, WebEnv, faults, the log."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import date, timedelta
from pathlib import Path

import pytest
from Bio import Entrez
from lxml import etree

from services.devkit.emulator import EntrezEmulator, load_corpus
from services.devkit.synth import generate_articles, pubmed_xml, write_corpus
from services.ingest.parser import PubmedParseError, parse_pubmed_bytes

REPO = Path(__file__).resolve().parents[1]
START = date(2024, 1, 1)


@pytest.fixture(scope="module")
def articles() -> list[dict]:
    return generate_articles(90, seed=5, entrez_start=START, days=35)


@pytest.fixture(scope="module")
def emu(articles):
    # Two documents, as a corpus of update files would be.
    with EntrezEmulator([pubmed_xml(articles[:40]), pubmed_xml(articles[40:])], slow_s=0.5) as server:
        yield server


@pytest.fixture(autouse=True)
def _clean(request):
    if "emu" in request.fixturenames:
        emu = request.getfixturevalue("emu")
        emu.clear_faults()
        emu.clear_log()


def get(emu: EntrezEmulator, tool: str, timeout: float = 5, **params) -> tuple[int, str, bytes]:
    url = emu.base_url + f"{tool}.fcgi?" + urllib.parse.urlencode(params)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), exc.read()


def esearch(emu: EntrezEmulator, **params) -> etree._Element:
    status, _, body = get(emu, "esearch", db="pubmed", **params)
    assert status == 200, body
    return etree.fromstring(body)


def ids_of(reply: etree._Element) -> list[int]:
    return [int(i.text) for i in reply.findall("IdList/Id")]


def test_esearch_date_window_is_inclusive(emu, articles):
    lo, hi = START + timedelta(days=7), START + timedelta(days=13)
    reply = esearch(emu, term="*", datetype="edat", mindate=f"{lo:%Y/%m/%d}", maxdate=f"{hi:%Y/%m/%d}",
                    retmax=1000)
    want = {a["pmid"] for a in articles if lo <= a["entrez_date"] <= hi}
    assert want and int(reply.findtext("Count")) == len(want)
    assert set(ids_of(reply)) == want
    # Partial dates mean the whole month or year, as on NCBI.
    month = esearch(emu, term="*", datetype="edat", mindate="2024/01", maxdate="2024/01", retmax=0)
    assert int(month.findtext("Count")) == sum(a["entrez_date"].month == 1 for a in articles)


def test_esearch_paging_and_counts(emu, articles):
    first = esearch(emu, term="*", retmax=25)
    assert (first.findtext("Count"), first.findtext("RetMax"), first.findtext("RetStart")) == ("90", "25", "0")
    pages = [ids_of(esearch(emu, term="*", retstart=k, retmax=25)) for k in range(0, 100, 25)]
    flat = [i for page in pages for i in page]
    assert [len(p) for p in pages] == [25, 25, 25, 15]
    assert sorted(flat) == sorted(a["pmid"] for a in articles) and len(set(flat)) == 90
    assert esearch(emu, term="*", retmax=0).findall("IdList/Id") == []
    assert ids_of(esearch(emu, term="*", retstart=500)) == []


def test_webenv_history_serves_efetch_pages(emu, articles):
    lo, hi = START, START + timedelta(days=20)
    reply = esearch(emu, term="hasabstract[text] AND english[lang]", datetype="edat", usehistory="y",
                    mindate=f"{lo:%Y/%m/%d}", maxdate=f"{hi:%Y/%m/%d}", retmax=0)
    webenv, key, count = reply.findtext("WebEnv"), reply.findtext("QueryKey"), int(reply.findtext("Count"))
    assert webenv and key == "1" and count == sum(lo <= a["entrez_date"] <= hi for a in articles)
    fetched = []
    for retstart in range(0, count, 10):
        status, ctype, body = get(emu, "efetch", db="pubmed", WebEnv=webenv, query_key=key, retstart=retstart,
                                  retmax=10, rettype="abstract", retmode="xml")
        assert status == 200 and "xml" in ctype
        assert body.startswith(b"<?xml") and b'"https://dtd.nlm.nih.gov/' in body.split(b"<PubmedArticleSet>")[0]
        fetched += [r.pmid for r in parse_pubmed_bytes(body)]
    assert len(fetched) == count == len(set(fetched))
    assert {a["pmid"] for a in articles if lo <= a["entrez_date"] <= hi} == set(fetched)
    # A second search in the same environment gets the next query key.
    again = esearch(emu, term="*", usehistory="y", WebEnv=webenv, retmax=0)
    assert (again.findtext("WebEnv"), again.findtext("QueryKey")) == (webenv, "2")


def test_efetch_by_id_keeps_the_article_xml(emu, articles):
    chosen = [articles[3], articles[50]]
    status, _, body = get(emu, "efetch", db="pubmed", id=f"{chosen[0]['pmid']},{chosen[1]['pmid']},1",
                          rettype="abstract", retmode="xml")
    assert status == 200
    records = parse_pubmed_bytes(body)
    assert [r.pmid for r in records] == [a["pmid"] for a in chosen]  # unknown PMID 1 is left out
    assert [(r.title, r.abstract, r.entrez_date) for r in records] == [
        (a["title"], a["abstract"], a["entrez_date"]) for a in chosen]


def test_bio_entrez_reads_every_reply(emu, monkeypatch):
    from services.ingest.entrez import configure_entrez
    from shared.settings import load_settings

    configure_entrez(load_settings(entrez_base_url=emu.base_url))
    monkeypatch.setattr(Entrez, "email", "test@example.org")
    search = Entrez.read(Entrez.esearch(db="pubmed", term="*", usehistory="y", retmax=3))
    assert int(search["Count"]) == 90 and len(search["IdList"]) == 3
    fetched = Entrez.read(Entrez.efetch(db="pubmed", webenv=search["WebEnv"], query_key=search["QueryKey"],
                                        retmax=3, rettype="abstract", retmode="xml"))
    assert [str(a["MedlineCitation"]["PMID"]) for a in fetched["PubmedArticle"]] == search["IdList"]
    assert Entrez.read(Entrez.einfo())["DbList"] == ["pubmed"]
    many = [str(p) for p in range(90_000_000, 90_000_250)]  # over 200 ids: Biopython POSTs them
    fetched = Entrez.read(Entrez.efetch(db="pubmed", id=many, rettype="abstract", retmode="xml"))
    assert len(fetched["PubmedArticle"]) == 90  # the ids the corpus has
    assert Entrez.read(Entrez.einfo(db="pubmed"))["DbInfo"][0]["Count"] == "90"  # a list, as in real replies


def test_term_matching(emu, articles):
    def count(term: str) -> int:
        return int(esearch(emu, term=term, retmax=0).findtext("Count"))

    word = articles[0]["title"].split()[1].strip(".,").lower()
    assert count(word) == sum(word in (a["title"] + "\n" + a["abstract"]).lower() for a in articles) > 0
    mesh = articles[0]["mesh_terms"][1]
    assert count(f'"{mesh}"[mh]') == sum(mesh in a["mesh_terms"] for a in articles) > 0
    assert count("english[lang] AND hasabstract") == 90
    assert count("french[lang]") == 0
    assert count("all") == count("(humans[xyz])") == 90  # an unknown field tag is ignored
    assert count(f"{word} AND zzzunknownzzz") == 0
    status, _, body = get(emu, "esearch", db="pubmed", term="a OR b")
    assert status == 400 and b"<ERROR>" in body


@pytest.mark.parametrize(("tool", "params", "message"), [
    ("esearch", {"db": "nucleotide", "term": "x"}, b"Invalid db name"),
    ("esearch", {"db": "pubmed"}, b"Empty term"),
    ("esearch", {"db": "pubmed", "term": "x", "mindate": "2024/13/01", "maxdate": "2024/12/31"}, b"Invalid date"),
    ("esearch", {"db": "pubmed", "term": "x", "mindate": "2024/01/01"}, b"together"),
    ("esearch", {"db": "pubmed", "term": "x", "retmax": "-5"}, b"Invalid retmax"),
    ("esearch", {"db": "pubmed", "term": "x", "datetype": "pdat", "mindate": "2024", "maxdate": "2024"}, b"edat"),
    ("efetch", {"db": "pubmed"}, b"Neither query_key nor id"),
    ("efetch", {"db": "pubmed", "WebEnv": "MCID_nope", "query_key": "1"}, b"Unable to obtain query"),
    ("efetch", {"db": "pubmed", "id": "12,abc"}, b"Invalid uid"),
    ("efetch", {"db": "pubmed", "id": "12", "retmode": "text"}, b"retmode=xml"),
    ("einfo", {"db": "genome"}, b"Invalid db name"),
])
def test_bad_parameters_get_an_error_reply(emu, tool, params, message):
    status, ctype, body = get(emu, tool, **params)
    assert status == 400 and "xml" in ctype
    root = etree.fromstring(body)
    assert root.tag in ("eSearchResult", "eFetchResult", "eInfoResult") and message in body


def test_unknown_path_is_404(emu):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(emu.base_url + "espell.fcgi?db=pubmed", timeout=5)
    assert err.value.code == 404


def test_faults(emu):
    emu.inject("429")
    emu.inject("500", endpoint="efetch", times=2)
    emu.inject("html", endpoint="einfo")
    assert get(emu, "esearch", db="pubmed", term="*")[0] == 429
    assert get(emu, "esearch", db="pubmed", term="*")[0] == 200  # used up
    assert get(emu, "einfo")[1].startswith("text/html")
    assert [get(emu, "efetch", db="pubmed", id="1")[0] for _ in range(3)] == [500, 500, 200]

    emu.inject("truncated", endpoint="esearch")
    status, _, body = get(emu, "esearch", db="pubmed", term="*", retmax=50)
    assert status == 200 and body.startswith(b"<?xml") and not body.rstrip().endswith(b"</eSearchResult>")
    with pytest.raises(etree.XMLSyntaxError):
        etree.fromstring(body)
    emu.inject("truncated", endpoint="efetch")
    with pytest.raises(PubmedParseError, match="truncated"):
        parse_pubmed_bytes(get(emu, "efetch", db="pubmed", id="90000001,90000002")[2])
    emu.inject("html", endpoint="efetch")
    with pytest.raises(PubmedParseError):
        parse_pubmed_bytes(get(emu, "efetch", db="pubmed", id="90000001")[2])

    faults = [(r.endpoint, r.fault) for r in emu.requests() if r.fault]
    assert faults == [("esearch", "429"), ("einfo", "html"), ("efetch", "500"), ("efetch", "500"),
                      ("esearch", "truncated"), ("efetch", "truncated"), ("efetch", "html")]
    with pytest.raises(ValueError, match="unknown fault"):
        emu.inject("teapot")


def test_fault_after_lets_requests_through_first(emu):
    emu.inject("500", endpoint="einfo", after=2)
    assert [get(emu, "einfo")[0] for _ in range(4)] == [200, 200, 500, 200]


def test_slow_reply(emu):
    emu.inject("slow", endpoint="einfo")
    t0 = time.monotonic()
    assert get(emu, "einfo")[0] == 200
    assert time.monotonic() - t0 >= emu.slow_s
    emu.inject("slow", endpoint="einfo")
    with pytest.raises((TimeoutError, urllib.error.URLError)):
        get(emu, "einfo", timeout=0.1)


def test_request_log(emu):
    get(emu, "esearch", db="pubmed", term="cancer", retmax=1)
    get(emu, "einfo")
    log = emu.requests()
    assert [r.endpoint for r in log] == ["esearch", "einfo"]
    assert log[0].params == {"db": "pubmed", "term": "cancer", "retmax": "1"}
    assert log[0].time <= log[1].time
    assert emu.requests("einfo") == log[1:]


def test_loads_gzip_files_and_skips_deletions(tmp_path, articles):
    import gzip

    (tmp_path / "a.xml.gz").write_bytes(gzip.compress(pubmed_xml(articles[:3], delete_pmids=[1, 2])))
    corpus = load_corpus([tmp_path / "a.xml.gz"])
    assert [a.pmid for a in corpus] == [a["pmid"] for a in articles[:3]]
    assert corpus[0].entrez_date == articles[0]["entrez_date"]


def test_medqa_emulator_command(tmp_path):
    write_corpus(tmp_path / "corpus", files=2, per_file=5, seed=1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDQA_")} | {"MEDQA_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen([sys.executable, "-m", "services.devkit", "emulator", "--corpus", str(tmp_path / "corpus"),
                             "--port", "0"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "serving 10 articles" in line, (line, proc.stderr.read() if proc.poll() is not None else "")  # type: ignore[union-attr]
        base = line.split(" at ", 1)[1].strip()
        with urllib.request.urlopen(base + "einfo.fcgi?db=pubmed", timeout=5) as r:
            assert b"<Count>10</Count>" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # a deadline, not a timing check: a loaded 2-core box can take long
    assert proc.returncode == 0
