"""/review: the blind expert review page. Plain server-rendered HTML with forms, no script.

A reviewer signs in with their reviewer token (kept in an HttpOnly, SameSite=Strict cookie), sees the
next item the review queue's policy draws for them (shared/review.py), and either picks the better of
two unlabelled answers (a candidate's and the champion's, in an order drawn when the pair was queued)
or rates one answer as correct, partly correct, wrong or harmful, with a note and, for a wrong answer,
a correction. The page never says which model wrote what.
"""
# No `from __future__ import annotations` here: FastAPI reads the routes' annotations at runtime.

import random
from html import escape
from typing import Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from services.api.deps import REVIEWER_COOKIE, ReviewerRefused, SettingsDep, reviewer_for, reviewer_token
from shared import review
from shared.db import session_scope
from shared.settings import Settings
from shared.tables import ReviewItem

router = APIRouter(include_in_schema=False)  # a page for people, not part of the JSON API
_rng = random.Random()
MAX_NOTE = 2000
RATING_LABELS = (("correct", "Correct"), ("partly", "Partly correct"), ("wrong", "Wrong"), ("harmful", "Harmful"))

_STYLE = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}"
          ".answers{display:flex;gap:1rem}.answer{flex:1;border:1px solid #999;padding:.5rem 1rem}"
          "blockquote{color:#333;border-left:3px solid #ccc;margin:.5rem 0;padding-left:.5rem}"
          ".error{color:#a00}textarea{width:100%}")


def _page(title: str, body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
                        f"<style>{_STYLE}</style></head><body><h1>{escape(title)}</h1>{body}</body></html>",
                        status_code=status)


def _sign_in(message: str, status: int) -> HTMLResponse:
    return _page("Expert review: sign in", f"<p class='error' id='message'>{escape(message)}</p>"
                 "<form method='post' action='/review/login'><label>Reviewer token "
                 "<input type='password' name='token' id='token' autocomplete='off'></label> "
                 "<button type='submit' id='sign-in'>Sign in</button></form>", status)


async def _form(request: Request) -> dict[str, str]:
    body = (await request.body()).decode("utf-8", errors="replace")
    return {k: v[0] for k, v in parse_qs(body, keep_blank_values=True).items()}


def _answer_html(label: str, answer: dict[str, Any]) -> str:
    quotes = "".join(f"<blockquote>{escape(e['quote'])} <small>(PMID {int(e['pmid'])})</small></blockquote>"
                     for e in answer.get("evidence", []))
    return (f"<div class='answer' id='answer-{label.lower()}'><h2>Answer {escape(label)}</h2>"
            f"<p>{escape(answer.get('text', ''))}</p><h3>Evidence</h3>{quotes or '<p>none quoted</p>'}</div>")


def _item_html(item: ReviewItem, reviewer: str) -> str:
    head = (f"<p>Signed in as <b>{escape(reviewer)}</b>. Item {item.id}.</p>"
            f"<h2 id='question'>{escape(item.question)}</h2>")
    note = ("<p><label>Note<br><textarea name='note' rows='3' maxlength='2000'></textarea></label></p>")
    if item.kind == "pair":
        first, second = review.shown_pair(item)
        choices = "".join(f"<label><input type='radio' name='choice' value='{v}' id='choice-{v.lower()}' required> "
                          f"{text}</label><br>" for v, text in (("A", "A is better"), ("B", "B is better"),
                                                                  ("tie", "About the same")))
        return (head + f"<div class='answers'>{_answer_html('A', first)}{_answer_html('B', second)}</div>"
                f"<form method='post' action='/review/{item.id}'><p>{choices}</p>{note}"
                "<button type='submit' id='submit'>Submit</button></form>")
    ratings = "".join(f"<label><input type='radio' name='rating' value='{v}' id='rating-{v}' required> "
                      f"{text}</label><br>" for v, text in RATING_LABELS)
    correction = ("<p><label>Correction (what the answer should say; another expert checks it)<br>"
                  "<textarea name='correction' rows='4' maxlength='2000'></textarea></label></p>")
    return (head + _answer_html("1", item.answer) + f"<form method='post' action='/review/{item.id}'><p>{ratings}</p>"
            f"{note}{correction}<button type='submit' id='submit'>Submit</button></form>")


def _who(request: Request, settings: Settings) -> str:
    return reviewer_for(reviewer_token(request), settings)


@router.get("/review")
def review_page(request: Request, settings: SettingsDep) -> Response:
    try:
        reviewer = _who(request, settings)
    except ReviewerRefused as refused:
        return _sign_in(refused.message, refused.status)
    with session_scope() as session:
        item = review.next_item(session, reviewer, settings, _rng)
        if item is None:
            return _page("Expert review", f"<p>Signed in as <b>{escape(reviewer)}</b>.</p>"
                         "<p id='empty'>Nothing to review now. Thank you.</p>")
        return _page("Expert review", _item_html(item, reviewer))


@router.post("/review/login")
async def sign_in(request: Request, settings: SettingsDep) -> Response:
    token = (await _form(request)).get("token", "")
    try:
        reviewer_for(token, settings)
    except ReviewerRefused as refused:
        return _sign_in(refused.message, refused.status)
    response = RedirectResponse("/review", status_code=303)
    response.set_cookie(REVIEWER_COOKIE, token.strip(), httponly=True, samesite="strict", path="/review",
                        secure=request.url.scheme == "https")
    return response


@router.post("/review/{item_id}")
async def rate(item_id: int, request: Request, settings: SettingsDep) -> Response:
    try:
        reviewer = _who(request, settings)
    except ReviewerRefused as refused:
        return _sign_in(refused.message, refused.status)
    form = await _form(request)
    note = (form.get("note") or "").strip()[:MAX_NOTE] or None
    correction = (form.get("correction") or "").strip()[:MAX_NOTE] or None
    with session_scope() as session:
        item = session.get(ReviewItem, item_id)
        if item is None:
            return _page("Expert review", "<p class='error'>No such item.</p><p><a href='/review'>Next</a></p>", 404)
        try:
            review.record_rating(session, item, reviewer, rating=form.get("rating"), choice=form.get("choice"),
                                 note=note, correction=correction)
        except review.ReviewError as exc:
            return _page("Expert review", f"<p class='error' id='message'>{escape(str(exc))}</p>"
                         "<p><a href='/review'>Back</a></p>", 422)
    return RedirectResponse("/review", status_code=303)
