"""`medqa demo` end to end on the tiny GPT-2 and a synthetic corpus: files, then the E-utilities
emulator through Bio.Entrez, two increments, a summary that reports real figures."""

import json

import pytest
from conftest import SHARED_DATA
from typer.testing import CliRunner

from services.devkit.cli import app
from services.devkit.synth import write_corpus


@pytest.mark.slow
def test_demo_runs_the_whole_loop(medqa_env, tmp_path, monkeypatch):
    medqa_env(trigger_min_new="40", train_lr="5e-3")
    corpus = tmp_path / "corpus"
    write_corpus(corpus, files=4, per_file=30, seed=4)
    monkeypatch.setenv("MEDQA_DEMO_CORPUS", str(corpus))
    res = CliRunner().invoke(app, ["demo", "--json"])
    assert res.exit_code == 0, res.output[-3000:]
    summary = json.loads(res.stdout)
    assert summary["abstracts_ingested"] == 120
    src = summary["sources"]
    assert src["nlm_files"] == ["synth0001.xml", "synth0002.xml"]
    assert src["entrez_emulator"]["stored"] == 60 and src["entrez_emulator"]["requests"] >= 2
    assert len(summary["rounds"]) >= 2 and all(r["status"] == "succeeded" for r in summary["rounds"])
    assert summary["rounds"][1]["started_from"] == summary["rounds"][0]["version"]
    assert summary["champion"] is not None and summary["drift"]
    assert all(r["ppl_new"]["after"] > 0 for r in summary["rounds"])
    for r in summary["rounds"]:
        assert isinstance(r["mined_qa"], int) and r["mined_qa"] >= 0
    if (SHARED_DATA / "pubmedqa").is_dir():  # the QA story: PubMedQA before and after each round
        for r in summary["rounds"]:
            q = r["pubmedqa"]
            assert q["before"] is not None and q["items"] == 8
            for x in (q["before"], q["after"]):
                assert x["interval"][0] <= x["accuracy"] <= x["interval"][1]
                assert sum(x["labels"].values()) == 8 and 0 <= x["macro_f1"] <= 1 and 0 <= x["ece"] <= 1
                assert x["macro_f1_interval"][0] <= x["macro_f1"] <= x["macro_f1_interval"][1]
