"""bench/continual.py: its goal arithmetic, and its short form end to end (what CI runs of it)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import needs_shared_data

ROOT = Path(__file__).resolve().parents[1]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_continual", ROOT / "bench" / "continual.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _summary(medquad_forgetting: float, new_slice_ppl: float) -> dict:
    return {"retention_forgetting": {"medquad_answer_ppl": medquad_forgetting}, "new_slice_ppl": new_slice_ppl,
            "forgetting": 0.0}


def test_retention_forgetting_is_relative_loss_since_the_base():
    bench = _bench()
    base = {"pubmedqa_acc": 0.5, "pubmedqa_f1": 0.4, "medquad_answer_ppl": 10.0}
    after = {"pubmedqa_acc": 0.45, "pubmedqa_f1": 0.44, "medquad_answer_ppl": 12.0}
    # Lower accuracy and higher perplexity are losses (positive); a better F1 is a gain (negative).
    assert bench.retention_forgetting(base, after) == {"pubmedqa_acc": 0.1, "pubmedqa_f1": -0.1,
                                                        "medquad_answer_ppl": 0.2}


def test_goal_needs_no_replay_to_forget_and_replay_to_hold_a_quarter():
    bench = _bench()
    no_replay = _summary(0.20, 10.0)
    assert bench.goal_check(_summary(0.04, 10.3), no_replay, qa_mode=True)["met"]
    missed = bench.goal_check(_summary(0.06, 10.3), no_replay, qa_mode=True)  # 30% of no-replay's forgetting
    assert not missed["met"] and not missed["forgetting_met"] and missed["forgetting_share"] == 0.3
    costly = bench.goal_check(_summary(0.0, 10.6), no_replay, qa_mode=True)  # new slice learned 6% worse
    assert costly["forgetting_met"] and not costly["new_slice_met"] and not costly["met"]
    # When no replay forgets less than the minimum, the stream cannot rank replay: never "met".
    flat = bench.goal_check(_summary(0.0, 10.0), _summary(0.03, 10.0), qa_mode=True)
    assert not flat["no_replay_forgets"] and not flat["met"]
    # Other streams read the old slices' backward transfer, with the same minimum.
    slices = {"forgetting": 0.03, "new_slice_ppl": 10.0}
    assert not bench.goal_check({"forgetting": 0.0, "new_slice_ppl": 10.0}, slices)["met"]
    slices["forgetting"] = 0.08
    assert bench.goal_check({"forgetting": 0.02, "new_slice_ppl": 10.0}, slices)["met"]


@pytest.mark.slow
@needs_shared_data("pubmedqa")
def test_short_form_writes_r_matrices_retention_and_report(tmp_path, model_cache):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "continual.py"), "--quick", "--model", "tiny-gpt2",
                          "--models-dir", str(model_cache), "--out", str(tmp_path)],
                         capture_output=True, text=True, env=env, timeout=540, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    k = result["config"]["k"]
    assert set(result["R"]) == {"no_replay", "replay@0.3", "replay@0.5", "replay@0.3 no warm-up"}
    for name, R in result["R"].items():
        # Lower-triangular: after increment i, every slice seen so far.
        assert [len(row) for row in R] == list(range(1, k + 1)), name
        assert len(result["retention"][name]) == k
        assert set(result["strategies"][name]["retention_forgetting"]) == {
            "pubmedqa_acc", "pubmedqa_f1", "medquad_answer_ppl"}
    assert 0 <= result["base_retention"]["pubmedqa_acc"] <= 1 and result["base_retention"]["medquad_answer_ppl"] > 1
    assert set(result["goal"]) == {"replay@0.3", "replay@0.5", "replay@0.3 no warm-up"}
    report = (tmp_path / "continual.md").read_text()
    assert "## R matrix: no_replay" in report and "## QA-form retention" in report
    assert (tmp_path / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
