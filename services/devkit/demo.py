"""`medqa demo`: the whole loop, offline, on this CPU, with SQLite and eager tasks.

The older half of the corpus is imported as NLM files, one at a time, the way update files arrive;
the newer half is served by the project's local E-utilities emulator and polled through Bio.Entrez
window by window, as production polls NCBI. The trigger fires whenever enough new abstracts piled
up, so the demo makes a first version from the base model and then an increment warm-started from
the champion with replay; each is gated and monitored.
The demo owns <data_dir>/demo and starts it afresh; the converted base model is cached beside it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from sqlmodel import Session, col, func, select

from services.cli.tasks import load_task_modules
from services.devkit.emulator import EntrezEmulator
from shared.settings import Settings, get_settings, redacted_url, reset_settings

if TYPE_CHECKING:
    from services.ingest.store import IngestResult


def _corpus(corpus: Path | None, workspace: Path) -> tuple[Path, str]:
    """The PubMed XML the demo ingests: MEDQA_DEMO_CORPUS (the Makefile points it at the real NLM
    samples where they exist), else synthetic XML from the project's generator, said so in the label."""
    if corpus is not None:
        if not corpus.exists():
            raise FileNotFoundError(f"MEDQA_DEMO_CORPUS={corpus} does not exist")
        return corpus, f"{corpus} (MEDQA_DEMO_CORPUS)"
    from services.devkit.synth import write_corpus

    folder = workspace / "synthetic-corpus"
    write_corpus(folder, files=8, per_file=40, seed=7)
    return folder, f"{folder} (synthetic PubMed XML from the project's generator; MEDQA_DEMO_CORPUS not set)"


def _configure(workspace: Path, models: Path, entrez: dict[str, str]) -> None:
    defaults = {
        **entrez,
        "MEDQA_EAGER": "1",
        "MEDQA_DATA_DIR": str(workspace),
        "MEDQA_MODEL_CACHE_DIR": str(models),
        "MEDQA_DATABASE_URL": "",
        "MEDQA_TRIGGER_MIN_NEW": "110",
        "MEDQA_TRAIN_MAX_STEPS": "16",
        # One 135M model on 2 CPU cores: small effective batch keeps the whole loop inside minutes.
        "MEDQA_TRAIN_BATCH_SIZE": "4",
        "MEDQA_TRAIN_GRAD_ACCUM": "1",
        "MEDQA_TRAIN_MAX_LENGTH": "256",
        "MEDQA_TRAIN_LR": "5e-4",
        "MEDQA_CHECKPOINT_EVERY": "8",
        "MEDQA_EVAL_MAX_TEXTS": "32",
        # The default suite sizes (sized for the policy's margins; smaller suites make the paired gate
        # answer "inconclusive"), with shorter generated answers to save time: the demo scores three
        # models (the base, v1, v2).
        "MEDQA_EVAL_MAX_NEW_TOKENS": "32",
    }
    for key, value in defaults.items():
        # The demo's own workspace settings always apply; model and training knobs the user set win.
        if key in ("MEDQA_EAGER", "MEDQA_DATA_DIR", "MEDQA_DATABASE_URL", *entrez) or key not in os.environ:
            os.environ[key] = value
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    reset_settings()
    from shared.celery_app import reconfigure

    reconfigure()
    load_task_modules()  # eager: every consumer runs in this process


def run_demo(corpus: Path | None = None, *, console: Console | None = None) -> dict:
    """Run the loop; progress goes to stderr, the summary to `console` (None: no summary)."""
    home = get_settings().data_dir
    workspace, models = home / "demo", get_settings().models_dir
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir(parents=True)
    source, label = _corpus(corpus, workspace)

    from services.ingest.store import pubmed_files

    files = pubmed_files(source)
    as_files, via_entrez = files[: (len(files) + 1) // 2], files[(len(files) + 1) // 2:]
    emulator = EntrezEmulator(via_entrez).start()
    saved_env = dict(os.environ)
    try:
        return _loop(workspace, models, label, as_files, emulator, console)
    finally:
        emulator.stop()
        # The demo points settings at its own workspace and emulator; leave the caller's as they were.
        os.environ.clear()
        os.environ.update(saved_env)
        reset_settings()
        from shared.celery_app import reconfigure

        reconfigure()


def _loop(workspace: Path, models: Path, label: str, as_files: list[Path], emulator: EntrezEmulator,
          console: Console | None) -> dict:
    _configure(workspace, models, {
        "MEDQA_ENTREZ_BASE_URL": emulator.base_url, "MEDQA_NCBI_EMAIL": "demo@localhost",
        "MEDQA_ENTREZ_SETTLE_DAYS": "0"})

    from services.monitor.tasks import monitor_run
    from shared.db import migrate, session_scope

    con = Console(stderr=True, width=None if sys.stderr.isatty() else 160)
    settings = get_settings()
    con.rule("MedQA-CL demo")
    con.print(f"corpus: {label}\nreference corpora: pubmedqa={settings.pubmedqa_source}, "
              f"medquad={settings.medquad_source}, liveqa={settings.liveqa_source}\n"
              f"base model: {settings.base_model}\nworkspace: {workspace}", highlight=False)
    t0 = time.perf_counter()
    migrate()
    model_seconds = _prepare_base_model(con, settings)

    loop_t0 = time.perf_counter()
    _ingest_files(con, as_files)
    polled = _poll_emulator(con, emulator)
    monitor_run()  # beat's periodic check, over whatever has not been trained on yet
    loop_seconds = time.perf_counter() - loop_t0

    with session_scope() as session:
        summary = _summary(session, settings, label=label, as_files=as_files, emulator=emulator, polled=polled,
                           model_seconds=model_seconds, loop_seconds=loop_seconds, t0=t0)
    if console is not None:
        _print_summary(console, summary)
    (workspace / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _prepare_base_model(con: Console, settings: Settings) -> float:
    """Convert the base model (once; later demos reuse it) and return the seconds it took."""
    from shared.lm.base_model import resolve_base_model

    with con.status("preparing the base model (converted once, then reused)"):
        t_model = time.perf_counter()
        resolve_base_model(settings.base_model, settings.models_dir)
        return time.perf_counter() - t_model


def _ingest_files(con: Console, as_files: list[Path]) -> None:
    from services.ingest.tasks import ingest_path

    for path in as_files:
        result = ingest_path(path)  # eager: a due trigger trains, gates and monitors right here
        con.print(f"ingested {path.name}: +{result.stored} new, {result.updated} revised, "
                  f"{result.deleted} deleted", highlight=False)


def _poll_emulator(con: Console, emulator: EntrezEmulator) -> IngestResult | None:
    """Poll new entrez dates from where the files left off, as production polls NCBI; None when the
    emulator has nothing newer. (Old records revised in update files keep their old entrez dates:
    they arrive through files, not the poll.)"""
    from services.ingest.entrez import ingest_entrez
    from shared.db import session_scope
    from shared.tables import Abstract

    with session_scope() as session:
        newest = session.exec(select(func.max(Abstract.entrez_date))).one()
    dates = sorted(d for d in (a.entrez_date for a in emulator.articles) if d and (newest is None or d > newest))
    if not dates:
        return None
    # About a dozen windows keep the demo short; production polls in 7-day windows.
    span = (dates[-1] - dates[0]).days + 1
    os.environ["MEDQA_ENTREZ_WINDOW_DAYS"] = str(min(366, max(7, -(-span // 12))))
    reset_settings()
    con.print(f"polling the E-utilities emulator at {emulator.base_url} ({len(emulator)} articles), "
              f"{dates[0]} to {dates[-1]} in {get_settings().entrez_window_days}-day windows", highlight=False)
    polled = ingest_entrez(since=dates[0], until=dates[-1])
    con.print(f"ingested through Entrez: +{polled.stored} new, {polled.updated} revised", highlight=False)
    return polled


def _summary(session: Session, settings: Settings, *, label: str, as_files: list[Path], emulator: EntrezEmulator,
             polled: IngestResult | None, model_seconds: float, loop_seconds: float, t0: float) -> dict:
    from shared import registry
    from shared.tables import Abstract, DriftReport, Evaluation

    champ = registry.champion(session, model_line=settings.model_line)
    drifts = [{"id": d.id, "status": d.status, "reference": d.reference_window, "current": d.current_window,
               "html": d.html_path} for d in session.exec(select(DriftReport).order_by(col(DriftReport.id)))]
    return {
        "corpus": label,
        "sources": {"nlm_files": [p.name for p in as_files], "entrez_emulator": {
            "url": emulator.base_url, "articles": len(emulator), "requests": len(emulator.requests()),
            "stored": polled.stored if polled else 0}},
        "abstracts_ingested": session.exec(select(func.count()).select_from(Abstract)).one(),
        "evaluations": session.exec(select(func.count()).select_from(Evaluation)).one(),
        "rounds": _rounds(session),
        "champion": f"v{champ.id}" if champ else None,
        "drift": drifts,
        "base_model_prep_seconds": round(model_seconds, 1),
        "loop_seconds": round(loop_seconds, 1),
        "total_seconds": round(time.perf_counter() - t0, 1),
        "database": redacted_url(settings.database_url),  # never the credentials
    }


def _rounds(session: Session) -> list[dict]:
    """One entry per training run, oldest first: its data, its version and that version's gate."""
    from shared import registry
    from shared.manifest import RunManifest
    from shared.tables import ModelVersion, TrainingRun

    rounds = []
    for run in session.exec(select(TrainingRun).order_by(col(TrainingRun.id))):
        version = session.exec(select(ModelVersion).where(ModelVersion.run_id == run.id)).first()
        ev = registry.latest_evaluation(session, version_id=version.id) if version and version.id else None
        manifest = RunManifest.from_json(run.manifest)
        rounds.append({
            "run": run.id, "status": run.status.value, "error": run.error,
            "new_abstracts": len(manifest.new),
            "replay": manifest.counts,
            "train_seconds": version.metrics.get("train_seconds") if version else None,
            "tokens_per_s": run.tokens_per_s,
            "version": f"v{version.id}" if version else None,
            "started_from": f"v{run.parent_version_id}" if run.parent_version_id else "base model",
            "ppl_new": {"before": ev.baseline_metrics.get("ppl_new"), "after": ev.metrics.get("ppl_new")}
            if ev else None,
            "ppl_retention": {"before": ev.baseline_metrics.get("ppl_retention"),
                              "after": ev.metrics.get("ppl_retention")} if ev else None,
            "decision": (version.status.value if version else None),
            "reasons": ev.reasons if ev else [],
            "mined_qa": len(manifest.mined),
            "pubmedqa": _pubmedqa(session, version, ev) if version and ev else None,
        })
    return rounds


def _pubmedqa(session: Session, version: Any, ev: Any) -> dict | None:
    """PubMedQA before (the baseline the gate compared with) and after (the version), on the gate's
    items: accuracy with its 95% interval, macro-F1, expected calibration error and the predicted labels."""
    from services.evaluator.qa import macro_f1_interval
    from shared.stats import mean_interval
    from shared.tables import SuiteResult

    after = session.exec(select(SuiteResult).where(SuiteResult.subject == f"v{version.id}",
                                                   SuiteResult.suite == "pubmedqa")
                         .order_by(col(SuiteResult.id).desc())).first()
    if after is None or not after.items:
        return None
    baseline = f"v{ev.baseline_version_id}" if ev.baseline_version_id else f"base:{version.base_model}"
    before = session.exec(select(SuiteResult).where(SuiteResult.subject == baseline,
                                                    SuiteResult.suite_hash == after.suite_hash)).first()

    def shown(row: Any) -> dict:
        acc = mean_interval(row.items["correct"])
        f1 = macro_f1_interval(row.items["gold"], row.items["label"])
        return {"accuracy": round(acc.estimate, 3), "interval": [round(acc.low, 3), round(acc.high, 3)],
                "macro_f1": round(f1.estimate, 3), "macro_f1_interval": [round(f1.low, 3), round(f1.high, 3)],
                "ece": round(row.metrics.get("pubmedqa_ece", 0), 3), "labels": dict(Counter(row.items["label"]))}

    return {"items": len(after.items["correct"]), "before": shown(before) if before and before.items else None,
            "after": shown(after)}


def _print_summary(con: Console, summary: dict) -> None:
    con.rule("summary")
    con.print(f"corpus:              {summary['corpus']}", highlight=False)
    src = summary["sources"]
    con.print(f"abstracts ingested:  {summary['abstracts_ingested']} ({len(src['nlm_files'])} NLM files; "
              f"{src['entrez_emulator']['stored']} through Entrez from the local emulator, "
              f"{src['entrez_emulator']['requests']} requests)", highlight=False)
    for r in summary["rounds"]:
        con.print(f"run {r['run']} ({r['status']}) from {r['started_from']} on {r['new_abstracts']} new abstracts "
                  f"({r['mined_qa']} mined QA items) + replay {r['replay']['replay_pmids']} past / "
                  f"{r['replay']['replay_general']} general", highlight=False)
        if r["error"]:
            con.print(f"  error: {r['error']}", highlight=False)
            continue
        con.print(f"  training: {r['train_seconds'] or 0:.1f} s, {r['tokens_per_s'] or 0:.0f} tokens/s "
                  f"-> {r['version']}")
        for key in ("ppl_new", "ppl_retention"):
            if r[key]:
                con.print(f"  {key:<14} before {r[key]['before']:.3f}  after {r[key]['after']:.3f}")
        if r["pubmedqa"]:
            q = r["pubmedqa"]
            for when in ("before", "after"):
                if q[when]:
                    x = q[when]
                    f1_low, f1_high = x["macro_f1_interval"]
                    con.print(f"  pubmedqa {when:<6} accuracy {x['accuracy']:.3f} [{x['interval'][0]:.3f}, "
                              f"{x['interval'][1]:.3f}]  macro-F1 {x['macro_f1']:.3f} [{f1_low:.3f}, {f1_high:.3f}]  "
                              f"ECE {x['ece']:.3f}  "
                              f"labels {x['labels']} ({q['items']} items)", highlight=False)
        con.print(f"  gate: {r['decision']}")
        for reason in r["reasons"]:
            con.print(f"    {reason}", highlight=False)
    con.print(f"champion:            {summary['champion']}")
    for d in summary["drift"]:
        con.print(f"drift #{d['id']}: {d['status']} ({d['current']} vs {d['reference']})\n   report: {d['html']}",
                  highlight=False)
    con.print(f"loop time:           {summary['loop_seconds']} s "
              f"(base model prep {summary['base_model_prep_seconds']} s)")
