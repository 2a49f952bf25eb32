"""`medqa data`: the reference corpora (PubMedQA, MedQuAD, LiveQA): cache them, and show what is there."""

from __future__ import annotations

import typer

from services.cli.common import JsonOpt, die, emit, out, table

data_app = typer.Typer(no_args_is_help=True, help="Reference corpora: `pull` caches them, `status` shows them.")


@data_app.command("pull")
def data_pull(as_json: bool = JsonOpt) -> None:
    """Load every configured corpus, fetching hub datasets into <data_dir>/corpora; exits 1 if any is
    unavailable, naming its setting."""
    from shared.corpora import CORPORA, pull

    docs = [pull(name) for name in CORPORA]
    _show(docs, as_json, "corpora pulled")
    missing = [d["error"] for d in docs if d.get("available") is False]
    if missing:
        die("; ".join(missing))


@data_app.command("status")
def data_status(as_json: bool = JsonOpt) -> None:
    """Each corpus with its source, item count and content hash (loads local and cached copies;
    never reaches for the hub)."""
    from shared.corpora import CORPORA, describe

    _show([describe(name, offline=True) for name in CORPORA], as_json, "corpora")


def _show(docs: list[dict], as_json: bool, title: str) -> None:
    emit(docs, as_json, table(title, ["corpus", "setting", "source", "items", "sha256", "problem"], [
        [d["corpus"], d["setting"], d["source"], d.get("items", "off" if d["kind"] == "off" else ""),
         (d.get("sha256") or "")[:16], (d.get("error") or "")[:90]] for d in docs]))
    if not as_json:
        out.print(f"{sum(d.get('available', False) for d in docs)} of {len(docs)} corpora available", highlight=False)
