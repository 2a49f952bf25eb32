"""Fixtures: a fresh store per test (SQLite, or a throw-away PostgreSQL database), the dev kit's
tiny GPT-2 built once, eager Celery for unit flows, and a clean Redis database for real workers.

The reference corpora are pointed at ../shared/data explicitly here (MEDQA_TEST_SHARED_DATA, which
the Makefile sets, or the folder beside the repo). Where it is absent, tests that need it skip and
the store tests get a synthetic MedQuAD collection from the dev kit, asked for by name.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# Before any Hugging Face import: huggingface_hub reads it once, at import time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from services.cli.tasks import load_task_modules  # noqa: E402

SHARED_DATA = Path(os.environ.get("MEDQA_TEST_SHARED_DATA")
                   or Path(__file__).resolve().parents[2] / "shared" / "data")
# The tiny model is a folder named by path, like any local base model; built once per machine user.
TINY_GPT2 = str(Path(tempfile.gettempdir()) / f"medqa-test-models-{os.getuid()}" / "tiny-gpt2")
load_task_modules()  # eager flows run every consumer in the test process
PG_ADMIN_URL = os.environ.get("MEDQA_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
TEST_REDIS = os.environ.get("MEDQA_TEST_REDIS", "redis://127.0.0.1:6379/14")
LOOSE_POLICY = """
target = "ppl_new"
target_test = "non-inferiority"
[metrics.ppl_new]
direction = "lower"
max = 100000.0
margin_rel = 0.5
[metrics.ppl_retention]
direction = "lower"
max = 100000.0
margin_rel = 0.5
"""



def needs_shared_data(sub: str = "") -> pytest.MarkDecorator:
    return pytest.mark.skipif(not (SHARED_DATA / sub).exists(),
                              reason=f"needs ../shared/data/{sub} beside the repo (CI has it)")


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session", autouse=True)
def tiny_gpt2() -> str:
    from services.devkit.tiny_model import tiny_gpt2 as build

    assert build(Path(TINY_GPT2).parent) == TINY_GPT2
    return TINY_GPT2


def corpus_settings(tmp_path: Path) -> dict[str, str]:
    """The reference corpora for a test: the real ones beside the repo, else a synthetic MedQuAD."""
    if (SHARED_DATA / "pubmedqa").is_dir():
        return {"pubmedqa_source": str(SHARED_DATA / "pubmedqa" / "pqal_trainval.json"),
                "medquad_source": str(SHARED_DATA / "medquad"),
                "liveqa_source": str(SHARED_DATA / "liveqa_medical")}
    from services.devkit.synth import write_medquad

    write_medquad(tmp_path / "synthetic-medquad")
    return {"pubmedqa_source": "none", "medquad_source": str(tmp_path / "synthetic-medquad"), "liveqa_source": "none"}


def _pg_available() -> bool:
    import sqlalchemy

    try:
        with sqlalchemy.create_engine(PG_ADMIN_URL).connect():
            return True
    except Exception:
        return False


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A new empty PostgreSQL database, dropped afterwards."""
    import sqlalchemy

    if not _pg_available():
        pytest.fail(f"PostgreSQL is not reachable at {PG_ADMIN_URL}; .ci/run starts it")
    name = f"medqa_t_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    yield url
    from shared.db import engine_for

    engine_for(url).dispose()  # close pooled connections, or DROP DATABASE waits on them
    with admin.connect() as c:
        c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


def configure(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Set MEDQA_ variables, then re-read settings and the Celery app from them."""
    from shared.celery_app import reconfigure
    from shared.settings import reset_settings

    for key, value in env.items():
        monkeypatch.setenv(f"MEDQA_{key.upper()}", value)
    reset_settings()
    reconfigure()


@pytest.fixture
def medqa_env(tmp_path: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Eager tasks, tiny GPT-2, a fresh SQLite store under tmp_path. Returns a function that
    reconfigures with more settings."""
    for key in list(os.environ):
        if key.startswith("MEDQA_"):
            monkeypatch.delenv(key)
    policy = tmp_path / "policy.toml"
    policy.write_text(LOOSE_POLICY)
    base = dict(data_dir=str(tmp_path / "medqa"), model_cache_dir=str(model_cache), base_model=TINY_GPT2,
                **corpus_settings(tmp_path),
                eager="1", broker_url=TEST_REDIS, policy_file=str(policy), train_max_steps="6",
                train_batch_size="2", train_grad_accum="1", train_max_length="64", trigger_min_new="30",
                eval_max_texts="12", eval_qa_items="8", eval_consumer_items="4", eval_max_new_tokens="8",
                monitor_after_ingest="0", eval_grounding_items="0",  # tests/test_grounding_suite.py sets it
                checkpoint_every="3", drift_min_rows="10", train_precision="fp32")

    def apply(**more: str) -> None:
        configure(monkeypatch, **{**base, **more})
        from shared.db import migrate

        migrate()

    apply()
    yield apply
    from shared.settings import reset_settings

    reset_settings()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store_env(request: pytest.FixtureRequest, medqa_env):  # type: ignore[no-untyped-def]
    """The same store tests on SQLite and on PostgreSQL."""
    if request.param == "postgres":
        url = request.getfixturevalue("pg_url")
        medqa_env(database_url=url)
    return medqa_env


@pytest.fixture
def synth_dir(tmp_path: Path) -> Path:
    from services.devkit.synth import write_corpus

    folder = tmp_path / "corpus"
    write_corpus(folder, files=2, per_file=25, seed=3)
    return folder


def stored_versions(statuses: list) -> list[int]:
    """Version rows (each with its succeeded run) in the configured store, without training anything."""
    from shared.db import session_scope
    from shared.tables import ModelVersion, RunStatus, TrainingRun

    ids = []
    with session_scope() as s:
        for status in statuses:
            run = TrainingRun(model_line="default", base_model=TINY_GPT2, status=RunStatus.succeeded)
            s.add(run)
            s.flush()
            v = ModelVersion(model_line="default", run_id=run.id, base_model=TINY_GPT2, adapter_path="/x",
                             sha256="0" * 64, status=status, metrics={"ppl_new": 10.0})
            s.add(v)
            s.flush()
            assert v.id is not None
            ids.append(v.id)
    return ids
