"""`medqa report V`: the candidate-vs-champion table of a version's last evaluation, each guard's
paired interval, margin, suite size and detectable effect, the items it won and lost most, its
decision reasons, and one PNG per metric across the model line's versions, as markdown and HTML."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from sqlmodel import Session, select

from services.evaluator.judge import item_differences
from services.evaluator.suites import SuiteScores
from shared import registry
from shared.db import session_scope
from shared.lineage import version_card
from shared.policy import Policy
from shared.settings import get_settings
from shared.stats import paired_series
from shared.tables import Evaluation, ModelVersion, SuiteResult

ITEMS_SHOWN = 3  # biggest wins and losses per guard


@dataclass
class Report:
    markdown: Path
    html: Path
    plots: list[Path]


def _fmt(v: float | None) -> str:
    return "" if v is None else f"{v:.4g}"


def _card_lines(card: dict) -> list[str]:
    """The version card (shared/lineage.version_card) as report lines."""
    rebuild = card["rebuild"]
    return [
        "own run: " + ", ".join(f"{role} {n}" for role, n in card["own_run_items"].items()),
        f"papers in its weights (ancestors included): {card['papers_in_weights']}; by source: "
        + (", ".join(f"{k} {v}" for k, v in card["by_source"].items()) or "none"),
        "by publication year: " + (", ".join(f"{k} {v}" for k, v in card["by_year"].items()) or "none"),
        "retracted papers in its lineage: " + (", ".join(map(str, card["retracted_in_lineage"])) or "none")
        + "; deleted: " + (", ".join(map(str, card["deleted_in_lineage"])) or "none"),
        "rebuild: " + (f"replaces v{rebuild['replaces']}; " if rebuild["replaces"] else "")
        + (f"replaced by {', '.join(f'v{v}' for v in rebuild['replaced_by'])}" if rebuild["replaced_by"]
           else "in progress" if rebuild["in_progress_runs"] else "not rebuilt"),
    ]


def write_report(version_id: int, out_dir: Path | None = None) -> Report:
    settings = get_settings()
    policy = Policy.load(settings.policy_file)  # type: ignore[arg-type]
    with session_scope() as session:
        version = registry.get_version(session, version_id=version_id)
        evaluation = registry.latest_evaluation(session, version_id=version_id)
        if evaluation is None:
            raise registry.RegistryError(f"v{version_id} has not been evaluated yet (`medqa evaluate v{version_id}`)")
        line: list[ModelVersion] = registry.list_versions(session, model_line=version.model_line)
        history = [(v.id or 0, v.status.value, dict(v.metrics)) for v in line]
        champ = registry.champion(session, model_line=version.model_line)
        cand, base = dict(evaluation.metrics), dict(evaluation.baseline_metrics)
        against = f"v{evaluation.baseline_version_id}" if evaluation.baseline_version_id else "base model"
        header = (f"v{version_id} ({version.status.value}; parent "
                  f"{'v' + str(version.parent_version_id) if version.parent_version_id else 'base'}; "
                  f"champion now {'v' + str(champ.id) if champ else 'none'})")
        passed, reasons, at = evaluation.passed, list(evaluation.reasons), evaluation.created_at
        guards = [g for g in evaluation.guards if g.get("estimate") is not None]
        scores = _paired_scores(session, evaluation, version)
        card = version_card(session, version_id)
    out = out_dir or settings.artifacts / "reports" / f"v{version_id}"
    out.mkdir(parents=True, exist_ok=True)

    names = [n for n in sorted(cand) if not n.endswith("_seconds")]
    rows = []
    for n in names:
        c, b = cand.get(n), base.get(n)
        change = "" if b in (None, 0) or c is None else f"{(c - b) / abs(b):+.2%}"
        rows.append([n, _fmt(c), _fmt(b), change, "guarded" if n in policy.rules else ""])
    plots = [_plot(out / f"{n}.png", n, history) for n in names]

    title = f"Evaluation report: {header}"
    verdict = f"{'blessed' if passed else 'rejected'} at {at:%Y-%m-%d %H:%M} UTC, against {against}"
    cols = ["metric", f"v{version_id}", against, "change", "policy"]
    md = [f"# {title}", "", f"Decision: **{verdict}**", "", "| " + " | ".join(cols) + " |",
          "|" + "---|" * len(cols)] + ["| " + " | ".join(r) + " |" for r in rows]
    guard_cols = ["guard", "change", "interval", "margin", "verdict", "items", "detectable"]
    guard_rows = [_guard_row(g) for g in guards]
    items = _item_lines(guards, scores)
    md += ["", "## Paired comparisons", "", "| " + " | ".join(guard_cols) + " |", "|" + "---|" * len(guard_cols)]
    md += ["| " + " | ".join(r) + " |" for r in guard_rows]
    md += ["", "## Items won and lost most", ""] + [f"- {line}" for line in items]
    md += ["", "## Reasons", ""] + [f"- {r}" for r in reasons]
    data = _card_lines(card)
    md += ["", "## Data", ""] + [f"- {line}" for line in data] + ["", "## Metrics across versions", ""]
    md += [f"![{p.stem}]({p.name})" for p in plots]
    (out / "report.md").write_text("\n".join(md) + "\n")

    e = html.escape
    table = "".join(f"<th>{e(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{e(x)}</td>" for x in r) + "</tr>" for r in rows)
    page = (f"<!doctype html><meta charset='utf-8'><title>{e(title)}</title><h1>{e(title)}</h1>"
            f"<p>Decision: <b>{e(verdict)}</b></p><table border='1' cellpadding='4'><tr>{table}</tr>{body}</table>"
            f"<h2>Paired comparisons</h2><table border='1' cellpadding='4'><tr>"
            f"{''.join(f'<th>{e(c)}</th>' for c in guard_cols)}</tr>"
            f"{''.join('<tr>' + ''.join(f'<td>{e(x)}</td>' for x in r) + '</tr>' for r in guard_rows)}</table>"
            f"<h2>Items won and lost most</h2><ul>{''.join(f'<li>{e(x)}</li>' for x in items)}</ul>"
            f"<h2>Reasons</h2><ul>{''.join(f'<li>{e(r)}</li>' for r in reasons)}</ul>"
            f"<h2>Data</h2><ul>{''.join(f'<li>{e(x)}</li>' for x in data)}</ul>"
            f"<h2>Metrics across versions</h2>{''.join(f'<img src={e(p.name)!r}>' for p in plots)}")
    (out / "report.html").write_text(page)
    return Report(out / "report.md", out / "report.html", plots)


def _paired_scores(session: Session, evaluation: Evaluation,
                   version: ModelVersion) -> dict[str, tuple[SuiteScores, SuiteScores]]:
    """Suite name -> (candidate, baseline) per-item scores on the same suite hash."""
    baseline = (f"v{evaluation.baseline_version_id}" if evaluation.baseline_version_id
                else f"base:{version.base_model}")
    rows = session.exec(select(SuiteResult).where(SuiteResult.subject.in_([f"v{version.id}", baseline]))).all()  # type: ignore[attr-defined]
    mine = {r.suite_hash: r for r in rows if r.subject == f"v{version.id}" and r.items}
    out = {}
    for r in rows:
        if r.subject == baseline and r.items and r.suite_hash in mine:
            c = mine[r.suite_hash]
            out[r.suite] = (SuiteScores(dict(c.metrics), dict(c.items)), SuiteScores(dict(r.metrics), dict(r.items)))
    return out


def _guard_row(g: dict) -> list[str]:
    rel = g.get("unit") == "relative"
    fmt = (lambda x: f"{x:+.2%}") if rel else (lambda x: f"{x:+.4g}")
    size = (lambda x: f"{x:.2%}") if rel else (lambda x: f"{x:.3g}")
    detectable = size(g["detectable"]) + (" (SUITE TOO SMALL)" if g.get("underpowered") else "")
    margin = "" if g.get("margin") is None else size(g["margin"])
    return [g["metric"], fmt(g["estimate"]), f"[{fmt(g['low'])}, {fmt(g['high'])}]", margin, g["verdict"],
            str(g["n_items"]), detectable]


def _item_lines(guards: list[dict], scores: dict[str, tuple[SuiteScores, SuiteScores]]) -> list[str]:
    lines = []
    for g in guards:
        source = paired_series(g["metric"])
        if source is None or source[0] not in scores:
            continue
        diffs = item_differences(g["metric"], *scores[source[0]])
        unit = " nats/token" if g["metric"].startswith("ppl_") else ""
        wins = [f"{item} {d:+.3g}" for item, d in diffs[:ITEMS_SHOWN]]
        losses = [f"{item} {d:+.3g}" for item, d in diffs[-ITEMS_SHOWN:][::-1]]
        lines.append(f"{g['metric']}{unit}: won {', '.join(wins) or 'none'}; lost {', '.join(losses) or 'none'}")
    return lines


def _plot(path: Path, metric: str, history: list[tuple[int, str, dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only; workers have no display
    import matplotlib.pyplot as plt

    points = [(vid, status, m[metric]) for vid, status, m in history if metric in m]
    colours = {"blessed": "tab:green", "rejected": "tab:red", "candidate": "tab:gray", "retired": "tab:blue"}
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([p[0] for p in points], [p[2] for p in points], color="0.6", zorder=1)
    for vid, status, value in points:
        ax.scatter([vid], [value], color=colours.get(status, "black"), zorder=2)
    ax.set_xlabel("version")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} (green blessed, red rejected)")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path
