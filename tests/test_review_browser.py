"""The blind review page in a real headless browser: Debian's Chromium driven by Selenium against
`medqa serve` in its own process. `make test` installs chromium and chromium-driver when run as root
(CI is); elsewhere this test skips and says so.

REVIEW_PAGE_SCREENSHOT=path also saves the pair page's screenshot there (the README's figure)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from apikit import API_ENV
from procs import free_port
from sqlmodel import col, select

from shared import review
from shared.db import session_scope
from shared.tables import ReviewItem, ReviewRating

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (make test installs them when run as root)")]
TOKEN = "r3viewer-alice"


def _serve(port: int) -> subprocess.Popen:
    server = subprocess.Popen([sys.executable, "-c", "from services.cli import main; main()", "serve", "--port",
                               str(port)], env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        assert server.poll() is None, server.stderr.read().decode() if server.stderr else ""
        assert time.monotonic() < deadline, "the API did not come up"
        time.sleep(0.5)


def _browser(download_dir: Path):  # type: ignore[no-untyped-def]
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    # As root, without a sandbox; no background traffic (this machine's network is closed).
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={download_dir}", "--window-size=1200,1000"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def _click_and_load(browser, element_id: str) -> None:  # type: ignore[no-untyped-def]
    """Submit a form and wait for the page it leads to (the old page's elements go stale)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    browser.find_element(By.ID, element_id).click()
    WebDriverWait(browser, 60).until(expected_conditions.staleness_of(old))


def _queue() -> tuple[int, int]:
    quote = [{"pmid": 31, "quote": "Pain fell by a third with treatment X in 40 adults."}]
    with session_scope() as s:
        pair = ReviewItem(kind="pair", source="disagreement", priority=2.0, question="Does treatment X reduce pain?",
                          answer=review.shown_answer("Yes. Pain fell by a third.", quote, {"label": "yes"}),
                          other=review.shown_answer("No. The trial was too small.", quote, {"label": "no"}),
                          candidate_first=False, candidate_version_id=2, champion_version_id=1, dedup_key="b:pair")
        single = ReviewItem(kind="single", source="thumbs_down", priority=3.0, question="Is aspirin safe for children?",
                            answer=review.shown_answer("Yes, always.", [], None), dedup_key="b:single")
        s.add_all([pair, single])
        s.flush()
        assert pair.id is not None and single.id is not None
        return pair.id, single.id


def test_a_reviewer_signs_in_rates_blind_and_the_ratings_are_stored(medqa_env, tmp_path):
    from selenium.webdriver.common.by import By

    medqa_env(**API_ENV, api_reviewer_tokens=f"alice={TOKEN},bob=r3viewer-bob")
    pair_id, single_id = _queue()
    port = free_port()
    server = _serve(port)
    browser = _browser(tmp_path / "chromium")
    try:
        browser.get(f"http://127.0.0.1:{port}/review")
        assert "sign in" in browser.find_element(By.ID, "message").text
        browser.find_element(By.ID, "token").send_keys(TOKEN)
        _click_and_load(browser, "sign-in")

        # The thumbs-down comes first (priority); rated wrong, with a correction for another expert.
        assert browser.find_element(By.ID, "question").text == "Is aspirin safe for children?"
        browser.find_element(By.ID, "rating-wrong").click()
        browser.find_element(By.NAME, "correction").send_keys("Not for children: it risks Reye's syndrome.")
        _click_and_load(browser, "submit")

        # The blind pair: two answers, no model named anywhere on the page.
        assert browser.find_element(By.ID, "question").text == "Does treatment X reduce pain?"
        page = browser.page_source
        assert "candidate" not in page.lower() and "champion" not in page.lower()
        first = browser.find_element(By.ID, "answer-a").text
        assert "No. The trial was too small." in first  # candidate_first=False: the champion's is shown as A
        assert "PMID 31" in first
        shot = tmp_path / "review_page.png"
        browser.save_screenshot(str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        if os.environ.get("REVIEW_PAGE_SCREENSHOT"):
            shutil.copyfile(shot, os.environ["REVIEW_PAGE_SCREENSHOT"])
        browser.find_element(By.ID, "choice-b").click()  # B: the candidate's answer
        browser.find_element(By.NAME, "note").send_keys("B cites the effect size.")
        _click_and_load(browser, "submit")

        # The correction Alice wrote is queued for another expert, never for her.
        assert browser.find_element(By.ID, "empty").text.startswith("Nothing to review")
    finally:
        browser.quit()
        server.terminate()
        server.wait(timeout=30)

    with session_scope() as s:
        ratings = s.exec(select(ReviewRating).order_by(col(ReviewRating.id))).all()
        assert [(r.item_id, r.reviewer, r.rating, r.preference) for r in ratings] == [
            (single_id, "alice", "wrong", None), (pair_id, "alice", None, "candidate")]
        assert ratings[1].note == "B cites the effect size."
        correction = s.exec(select(ReviewItem).where(ReviewItem.source == "correction")).one()
        assert correction.answer["text"] == "Not for children: it risks Reye's syndrome."
