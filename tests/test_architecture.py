"""The architecture as code: one event table that matches the tasks, the README and the pipeline's own
docstring; layers that run one way (import-linter runs in `make test` too); an ingest worker without
torch; a Docker image without dev tools."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from services.cli.tasks import TASK_MODULES
from services.devkit.import_graph import measure
from shared import pipeline
from shared.celery_app import QUEUES, ROUTES, app

REPO = Path(__file__).resolve().parents[1]


def test_every_consumer_is_a_registered_task_on_its_queue():
    for event, route in pipeline.EVENTS.items():
        assert route.consumers, f"{event} has no consumer"
        for consumer in route.consumers:
            assert consumer.task in app.tasks, f"{event}: no task named {consumer.task}"
            assert ROUTES[consumer.task] == {"queue": consumer.queue}, consumer
            module = app.tasks[consumer.task].__module__
            assert module in TASK_MODULES[consumer.queue], f"{consumer.task} ({module}) is not loaded on its queue"
    assert {c.queue for r in pipeline.EVENTS.values() for c in r.consumers} <= set(QUEUES)


def test_the_readme_and_the_pipeline_docstring_show_the_event_table():
    readme = (REPO / "README.md").read_text()
    assert pipeline.event_table() in readme, "README's event table differs from shared/pipeline.EVENTS"
    doc_rows = [line.split() for line in (pipeline.__doc__ or "").splitlines()]
    for event, route in pipeline.EVENTS.items():
        for n, consumer in enumerate(route.consumers):
            expected = ([event.value, route.producer] if n == 0 else []) + [consumer.task, consumer.queue]
            assert any(row[:1] == expected[:1] and row[-2:] == expected[-2:] for row in doc_rows), expected


def test_layers_run_one_way_with_no_cycles():
    graph = measure()
    assert graph["cycles"] == 0, graph["cycle_members"]
    assert graph["shared_imports_service"] == 0, graph["shared_to_services"]
    assert graph["cross_service_imports"] == 0, graph["service_to_service"]


def test_an_ingest_worker_never_imports_torch():
    code = ("import sys; import services.ingest.tasks; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'services.trainer') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_the_image_installs_no_dev_extras_and_no_dev_kit():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "[dev]" not in dockerfile
    assert "rm -rf services/devkit" in dockerfile


def test_beat_names_each_scheduled_tasks_queue():
    """Beat imports no task module, so the schedule itself must route each entry to its queue."""
    for entry in app.conf.beat_schedule.values():
        assert entry["options"]["queue"] == ROUTES[entry["task"]]["queue"], entry
