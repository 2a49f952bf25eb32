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
    for var in ("POSTGRES_PASSWORD", "FLOWER_PASSWORD", "MEDQA_NCBI_EMAIL", "MEDQA_API_TOKEN", "MINIO_ROOT_USER",
                "MINIO_ROOT_PASSWORD", "MEDQA_S3_ACCESS_KEY_ID", "MEDQA_S3_SECRET_ACCESS_KEY"):
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


MEDQA_SERVICES = [n for n, s in SERVICES.items() if s.get("image") == "medqa-cl:latest"]


def test_minio_and_the_bucket_step_come_before_the_workers_and_the_api():
    minio = SERVICES["minio"]
    assert minio["image"].startswith("minio/minio") and minio["command"] == ["server", "/data"]
    assert minio["healthcheck"]["test"]
    assert set(minio["environment"]) == {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"}
    buckets = SERVICES["buckets"]
    assert buckets["image"].startswith("minio/mc") and buckets["restart"] == "no"
    assert buckets["depends_on"]["minio"]["condition"] == "service_healthy"
    script = " ".join(buckets["command"])
    assert "mc mb --ignore-existing store/medqa" in script  # the bucket MEDQA_ARTIFACT_URL names
    for name in ("beat", "worker-ingest", "worker-train", "worker-evaluate", "worker-monitor", "api"):
        assert SERVICES[name]["depends_on"]["buckets"]["condition"] == "service_completed_successfully", name


def test_every_medqa_service_stores_artifacts_in_minio():
    from shared.settings import load_settings

    assert {"migrate", "beat", "api", "worker-train", "flower"} <= set(MEDQA_SERVICES)
    for name in MEDQA_SERVICES:
        env = SERVICES[name]["environment"]
        assert env["MEDQA_ARTIFACT_URL"] == "s3://medqa/artifacts", name
        assert env["MEDQA_S3_ENDPOINT_URL"] == "http://minio:9000", name
        assert {"MEDQA_S3_REGION", "MEDQA_S3_ACCESS_KEY_ID", "MEDQA_S3_SECRET_ACCESS_KEY"} <= set(env), name
        assert "MEDQA_ARTIFACT_DIR" not in env, name  # the local artifact folder is only a cache now
    env = SERVICES["api"]["environment"]
    settings = load_settings(artifact_url=env["MEDQA_ARTIFACT_URL"], s3_endpoint_url=env["MEDQA_S3_ENDPOINT_URL"],
                             s3_region=env["MEDQA_S3_REGION"])
    assert settings.artifact_url == "s3://medqa/artifacts"


def _named_mounts(service: dict) -> list[tuple[str, str, bool]]:
    """(volume, path in the container, read-only) of each named volume (bind mounts of host paths left out)."""
    out = []
    for spec in service.get("volumes", []):
        source, target, *mode = str(spec).split(":")
        if not source.startswith((".", "/", "$", "~")):
            out.append((source, target, "ro" in mode))
    return out


def test_no_volume_is_shared_for_artifacts():
    """Before: every medqa service mounted one medqa-data volume at /data (adapters, checkpoints, models,
    reports). Now each has its own /data; only the reference corpora are one volume, written by the init
    step and mounted read-only elsewhere."""
    users: dict[str, list[tuple[str, str, bool]]] = {}
    for name, service in SERVICES.items():
        for volume, target, ro in _named_mounts(service):
            users.setdefault(volume, []).append((name, target, ro))
    assert "medqa-data" not in users and set(users) <= set(COMPOSE["volumes"])
    for volume, mounts in users.items():
        if volume == "medqa-corpora":
            assert {t for _, t, _ in mounts} == {"/data/corpora"}
            assert [n for n, _, ro in mounts if not ro] == ["migrate"], "only the init step writes the corpora"
        else:
            assert len(mounts) == 1, f"volume {volume} is shared by {[n for n, _, _ in mounts]}"
    for name in MEDQA_SERVICES:
        data = [v for v, t, _ in _named_mounts(SERVICES[name]) if t == "/data"]
        assert SERVICES[name]["environment"]["MEDQA_DATA_DIR"] == "/data"
        assert len(data) <= 1 and all(len(users[v]) == 1 for v in data), name  # artifacts cache is its own
