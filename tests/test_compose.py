"""docker-compose.yml cannot run here (no Docker engine), so check its structure against the code:
every command exists in the CLI, every queue exists in the Celery app, secrets have no defaults."""

import importlib
import re
from pathlib import Path

import pytest
import yaml
from typer.main import get_command

from services.cli import app
from shared.celery_app import QUEUES

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / "docker-compose.yml").read_text()
COMPOSE = yaml.safe_load(TEXT)
SERVICES = COMPOSE["services"]


def test_expected_services():
    assert {"redis", "postgres", "migrate", "beat", "worker-ingest", "worker-train", "worker-evaluate",
            "worker-monitor", "flower", "api"} <= set(SERVICES)


@pytest.mark.parametrize("name", [n for n, s in SERVICES.items() if s.get("command", [""])[0] == "medqa"])
def test_medqa_commands_exist_in_the_cli(name):
    cmd = SERVICES[name]["command"]
    group = get_command(app)
    ctx_cmd = group.commands.get(cmd[1])  # type: ignore[attr-defined]
    assert ctx_cmd is not None, f"{name}: `medqa {cmd[1]}` is not a CLI command"
    if hasattr(ctx_cmd, "commands"):
        assert cmd[2] in ctx_cmd.commands, f"{name}: `medqa {cmd[1]} {cmd[2]}` is not a CLI command"
    if cmd[1] == "worker":
        assert set(cmd[2].split(",")) <= set(QUEUES), f"{name}: unknown queue {cmd[2]}"


def test_every_queue_has_a_worker():
    served = {q for s in SERVICES.values() if s.get("command", [None, None])[:2] == ["medqa", "worker"]
              for q in s["command"][2].split(",")}
    assert served == set(QUEUES)


def test_trainer_reserves_a_gpu_and_runs_one_task():
    train = SERVICES["worker-train"]
    devices = train["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == 1
    cmd = train["command"]
    assert cmd[cmd.index("--concurrency") + 1] == "1"


def _seconds(value: str) -> float:
    return float(value.rstrip("s"))


def test_health_checks_and_start_order():
    for name in ("redis", "postgres"):
        assert SERVICES[name]["healthcheck"]["test"]
    api = SERVICES["api"]["healthcheck"]
    probe_timeout = re.search(r"timeout=(\d+)", api["test"][1])
    assert probe_timeout and float(probe_timeout.group(1)) < _seconds(api["timeout"])  # the probe ends first
    for name in ("beat", "worker-train"):
        deps = SERVICES[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["postgres"]["condition"] == "service_healthy"


def test_secrets_are_required_not_defaulted():
    for var in ("POSTGRES_PASSWORD", "FLOWER_PASSWORD", "MEDQA_NCBI_EMAIL", "MEDQA_API_TOKEN"):
        uses = re.findall(r"\$\{" + var + r"(:[?-])", TEXT)
        assert uses and all(u == ":?" for u in uses), f"{var} must be ${{{var}:?...}}"


def test_flower_app_path_imports():
    cmd = " ".join(SERVICES["flower"]["command"])
    module, attr = re.search(r"--app ([\w.]+):(\w+)", cmd).groups()  # type: ignore[union-attr]
    assert hasattr(importlib.import_module(module), attr)


def test_api_serves_on_its_published_port_with_the_store_settings():
    api = SERVICES["api"]
    cmd = api["command"]
    serve = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    options = {o for p in serve.params for o in p.opts}
    assert {c for c in cmd[2:] if c.startswith("--")} <= options
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    port = cmd[cmd.index("--port") + 1]
    assert any(str(p).endswith(f":{port}") for p in api["ports"]) and port in api["healthcheck"]["test"][1]
    assert api["environment"]["MEDQA_DATABASE_URL"] == SERVICES["beat"]["environment"]["MEDQA_DATABASE_URL"]


def test_the_init_step_upgrades_the_schema_then_pulls_the_corpora():
    cmd = SERVICES["migrate"]["command"]
    assert cmd[:2] == ["sh", "-c"]
    steps = [step.split() for step in cmd[2].split("&&")]
    assert steps == [["medqa", "db", "upgrade"], ["medqa", "data", "pull"]]
    group = get_command(app)
    for _, name, sub in steps:
        assert sub in group.commands[name].commands  # type: ignore[attr-defined]
