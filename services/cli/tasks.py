"""Which task modules a process loads: the composition of services into workers.

A worker loads the task modules of the queues it serves (and the pipeline's sweeper), nothing else:
an ingest worker never imports torch. Under MEDQA_EAGER every consumer runs in the calling process,
so the CLI, the demo and the tests load them all.
"""

from __future__ import annotations

import importlib

from shared.celery_app import QUEUES

TASK_MODULES: dict[str, tuple[str, ...]] = {
    "ingest": ("services.ingest.tasks",),
    "train": ("services.trainer.tasks",),
    "evaluate": ("services.evaluator.tasks",),
    "monitor": ("services.monitor.tasks", "shared.pipeline"),
}
assert set(TASK_MODULES) == set(QUEUES), "every queue needs its task modules"


def modules_for(queues: list[str]) -> list[str]:
    return list(dict.fromkeys(m for q in queues for m in TASK_MODULES[q]))


def load_task_modules(queues: list[str] | None = None) -> list[str]:
    """Import (and so register) the task modules of `queues` (default: all)."""
    modules = modules_for(list(queues or QUEUES))
    for name in modules:
        importlib.import_module(name)
    return modules
