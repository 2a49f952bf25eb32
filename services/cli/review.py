"""`medqa review`: the expert review queue (shared/review.py) as an operator sees it."""

from __future__ import annotations

import typer

from services.cli.common import JsonOpt, emit, ensure_store, out, table

review_app = typer.Typer(no_args_is_help=True, help="The expert review queue, its throughput and agreement.")


@review_app.command("status")
def review_status(as_json: bool = JsonOpt) -> None:
    """The queue by source (queued, still open), ratings in the last day and week, per reviewer,
    Cohen's kappa between reviewers where two rated the same item, and the training examples reviews
    produced."""
    from shared import review
    from shared.db import session_scope
    from shared.settings import get_settings

    ensure_store()
    with session_scope() as session:
        doc = review.queue_status(session, get_settings())
    if as_json:
        emit(doc, True)
        return
    out.print(table("review queue", ["source", "queued", "open"],
                    [[s, v["queued"], v["open"]] for s, v in doc["queue"].items()]))
    agree = doc["agreement"]
    out.print(f"ratings: {doc['ratings_last_day']} in the last day, {doc['ratings_last_week']} in the last week; "
              f"by reviewer: {', '.join(f'{k} {v}' for k, v in doc['reviewers'].items()) or 'none'}")
    for kind, label in (("ratings", "one-answer ratings"), ("pairs", "blind pairs")):
        kappa = agree[kind]["kappa"]
        out.print(f"agreement on {label}: "
                  + (f"Cohen's kappa {kappa:.2f} over {agree[kind]['items']} items rated twice" if kappa is not None
                     else f"not enough data ({agree[kind]['items']} items rated twice)"))
    out.print(f"reviewed training examples: {doc['reviewed_examples']}; feedback: {doc['feedback'] or 'none'}")
