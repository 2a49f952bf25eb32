"""The whole loop with the store on PostgreSQL and artifacts on an S3-compatible server (moto's, over
HTTP on 127.0.0.1, as MinIO): ingest -> train -> gate -> API hot swap, with no adapter on the local
disk the API reads from; a corrupted object is refused and the old version keeps serving."""

from __future__ import annotations

import shutil
from datetime import date

import pytest
from apikit import AUTH, TOKEN
from fastapi.testclient import TestClient
from s3kit import moto_server, s3_settings, s3fs_client
from sqlmodel import col, select

from services.api.app import create_app
from services.devkit.synth import write_corpus
from services.ingest.tasks import ingest_path
from shared import registry
from shared.artifacts import MARKER
from shared.db import session_scope
from shared.settings import get_settings
from shared.tables import ModelVersion


@pytest.mark.slow
@pytest.mark.postgres
def test_the_loop_runs_on_object_storage_and_refuses_a_corrupted_adapter(medqa_env, pg_url, tmp_path):
    with moto_server() as endpoint:
        s3 = s3fs_client(endpoint)
        s3.mkdir("medqa")
        medqa_env(database_url=pg_url, **s3_settings(endpoint, "s3://medqa/artifacts"), train_lr="5e-3",
                  train_max_steps="6", api_token=TOKEN, api_champion_poll_s="3600", api_refresh_s="3600",
                  api_default_new_tokens="4", api_batch_wait_ms="5")
        for n, topic in enumerate(("cardiology", "oncology")):
            (path,) = write_corpus(tmp_path / f"c{n}", files=1, per_file=40, seed=n + 1, topics=(topic,),
                                   start_pmid=90_000_000 + 1_000_000 * n, entrez_start=date(2024, 1 + 5 * n, 1))
            ingest_path(path)  # 40 new abstracts: train, gate, promote
        with session_scope() as s:
            versions = s.exec(select(ModelVersion).order_by(col(ModelVersion.id))).all()
            v1, v2 = (v.id for v in versions)
            assert all(v.adapter_path.startswith("s3://medqa/artifacts/adapters/run-") for v in versions)
            champion = registry.champion(s, model_line="default").id
        for v in versions:  # each adapter is complete in the bucket: its files and the marker written last
            key = v.adapter_path.removeprefix("s3://")
            assert {"adapter_config.json", MARKER} <= {p.rsplit("/", 1)[-1] for p in s3.ls(key)}
        # Another host: nothing on the local disk but what the API fetches into its own cache.
        shutil.rmtree(get_settings().artifacts / "adapters", ignore_errors=True)
        cache = get_settings().data_dir / "artifact-cache"
        shutil.rmtree(cache, ignore_errors=True)

        with TestClient(create_app()) as c:
            c.app.state.runtime.index.refresh()  # type: ignore[attr-defined]
            assert c.get("/healthz").json()["serving_version"] == champion
            other = v1 if champion == v2 else v2
            r = c.post("/v1/promote", json={"version": other, "reason": "s3 loop", "force": True}, headers=AUTH)
            assert r.status_code == 200 and r.json()["serving_version"] == other, r.text
            assert c.post("/v1/answer", json={"question": "Does aspirin prevent stroke?"}).json()["model_version"] \
                == other
            assert sorted(p.name for p in cache.iterdir()) == sorted(
                v.sha256 for v in versions if v.id in (champion, other))

            # A corrupted object: the next swap to that version is refused, the current one keeps serving.
            bad = next(v for v in versions if v.id == champion)
            shutil.rmtree(cache / bad.sha256)
            weights = next(p for p in s3.ls(bad.adapter_path.removeprefix("s3://")) if p.endswith(".safetensors"))
            data = s3.cat_file(weights)
            s3.pipe_file(weights, data[:-8] + bytes(8))  # same size, different bytes
            r = c.post("/v1/promote", json={"version": champion, "reason": "back", "force": True}, headers=AUTH)
            assert r.status_code == 200 and r.json()["serving_version"] == other, r.text  # the alias moved
            health = c.get("/healthz").json()
            assert health["serving_version"] == other
            assert f"cannot serve v{champion}" in health["last_swap_error"] and "corrupted" in health["last_swap_error"]
