"""`medqa ingest files` under MEDQA_EAGER: the import first (with its summary), then the training it
starts; Ctrl-C at either stage loses nothing; below the thresholds, neither torch nor Evidently loads."""

import json
import os
import subprocess
import sys

from sqlmodel import func, select
from typer.testing import CliRunner

from services.cli import app
from shared.db import session_scope
from shared.tables import Abstract, ModelVersion, RunStatus, TrainingRun

runner = CliRunner()


def test_eager_ingest_below_the_thresholds_loads_neither_torch_nor_evidently(medqa_env, synth_dir):
    """Before: every eager `medqa ingest` imported torch, transformers and Evidently (14.3 s, 727 MB
    here for 50 abstracts) before the trigger found nothing to do."""
    medqa_env(trigger_min_new="1000", monitor_after_ingest="1000")
    script = ("import json, sys\nfrom services.cli import main\nsys.argv = ['medqa', 'ingest', 'files', sys.argv[1],"
              " '--json']\ntry:\n    main()\nexcept SystemExit as e:\n    code = e.code\nprint(json.dumps(sorted("
              "m for m in ('torch', 'evidently', 'transformers', 'peft') if m in sys.modules)))\nsys.exit(code)\n")
    res = subprocess.run([sys.executable, "-c", script, str(synth_dir)], capture_output=True, text=True,
                         env=dict(os.environ), timeout=300)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout.strip().splitlines()[-1]) == []
    assert '"stored": 50' in res.stdout


def test_eager_ingest_summarises_before_training_and_an_interrupted_run_resumes(medqa_env, synth_dir,
                                                                               monkeypatch):
    """Before: the training ran inline after the first file, with no summary until it ended, and a
    Ctrl-C left the run 'running' for good."""
    import services.cli.ingest as cli_ingest
    import services.trainer.train as train_module

    order: list[str] = []
    summary = cli_ingest._print_ingest_summary
    monkeypatch.setattr(cli_ingest, "_print_ingest_summary",
                        lambda *a: (order.append("summary"), summary(*a)))
    real_train = train_module.train_lora

    def interrupted(**kwargs):
        order.append("train")
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "train_lora", interrupted)
    res = runner.invoke(app, ["ingest", "files", str(synth_dir)])
    assert res.exit_code == 130, res.output
    assert order == ["summary", "train"]
    assert "interrupted" in res.output and "medqa sweep" in res.output
    with session_scope() as s:
        run = s.exec(select(TrainingRun)).one()
        assert (run.status, run.deliveries) == (RunStatus.queued, 0)  # back in the queue, start uncounted
        claimed = s.exec(select(func.count()).where(Abstract.train_run_id == run.id)).one()
        assert claimed == 50  # its abstracts stay with it: nothing stranded, nothing trained twice

    monkeypatch.setattr(train_module, "train_lora", real_train)
    res = runner.invoke(app, ["sweep"])
    assert res.exit_code == 0, res.output
    with session_scope() as s:
        assert s.exec(select(TrainingRun)).one().status == RunStatus.succeeded
        assert len(s.exec(select(ModelVersion)).all()) == 1


def test_an_interrupted_import_keeps_the_files_done_and_goes_on_when_run_again(medqa_env, synth_dir,
                                                                              monkeypatch):
    import services.ingest.store as store

    medqa_env(trigger_min_new="1000")
    real = store.ingest_file
    calls = []

    def second_interrupted(path):
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(store, "ingest_file", second_interrupted)
    res = runner.invoke(app, ["ingest", "files", str(synth_dir)])
    assert res.exit_code == 130 and "1 of 2 files imported and kept" in res.output, res.output
    with session_scope() as s:
        assert s.exec(select(func.count()).select_from(Abstract)).one() == 25
    monkeypatch.setattr(store, "ingest_file", real)
    res = runner.invoke(app, ["ingest", "files", str(synth_dir), "--json"])
    doc = json.loads(res.stdout)
    assert (doc["files_skipped"], doc["stored"]) == (1, 25)
