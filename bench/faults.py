"""Benchmark: the fault suite's figures for the README's fault table (one JSON line last).

Run: .venv/bin/python bench/faults.py [--out bench/results/faults_DATE.json]

Runs `pytest tests/faults` (real processes: workers, `medqa serve`, private Redis and PostgreSQL
servers, a tmpfs) with MEDQA_FAULT_REPORT set, so that each test records the fault it injected and how
long the system took to recover (tests/faults/conftest.py). Reports:
  injected   fault tests run (each injects one fault scenario)
  survived   those that passed: nothing lost, one version per run, a consistent audit chain, a clear message
  recovery_s per fault: seconds from the end of the fault (server back, space freed, worker replaced) to
             the system's work being done again (the run's version decided, the API answering, ...)
There is no baseline: a fault either is survived or is not. Wall times depend on the box's load
(two cores here): the JSON line says how loaded it was (1-minute load average before and after).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_suite(report: Path, junit: Path) -> int:
    env = os.environ | {"MEDQA_FAULT_REPORT": str(report)}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/faults", f"--junitxml={junit}"]
    return subprocess.run(cmd, cwd=ROOT, env=env).returncode


def outcomes(junit: Path) -> dict[str, str]:
    """nodeid-ish name -> passed / failed / skipped, from pytest's JUnit XML."""
    result = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        result[name] = "failed" if kinds & {"failure", "error"} else "skipped" if "skipped" in kinds else "passed"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / f"faults_{date.today()}.json")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        report, junit = Path(tmp) / "faults.jsonl", Path(tmp) / "junit.xml"
        t0 = time.monotonic()
        code = run_suite(report, junit)
        wall = time.monotonic() - t0
        records = [json.loads(line) for line in report.read_text().splitlines()] if report.exists() else []
        cases = outcomes(junit)
    ran = {k: v for k, v in cases.items() if v != "skipped"}
    doc = {
        "bench": "faults",
        "injected": len(ran),
        "survived": sum(v == "passed" for v in ran.values()),
        "skipped": sorted(k for k, v in cases.items() if v == "skipped"),
        "failed": sorted(k for k, v in ran.items() if v == "failed"),
        "recovery_s": {r["fault"] + (f" [{r['test'].split('[')[-1]}" if "[" in r["test"] else ""): r["recovery_s"]
                       for r in records},
        "records": records,
        "wall_s": round(wall, 1),
        "load_1min_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "pytest_exit": code,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    summary = {k: doc[k] for k in ("bench", "injected", "survived", "failed", "recovery_s", "wall_s",
                                   "load_1min_before_after")}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
