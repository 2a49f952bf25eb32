"""The Celery app, its queues, and the one decorator every task is declared with.

Messages only carry row ids; the store is the truth. Services hand work on through the events of
shared/pipeline.py, never by calling another service's task. Three settings work together so a GPU run of
hours and a 30 s recovery after a killed worker can both hold:
- acks_late + prefetch 1: a message stays unacknowledged (in Redis's unacked index) while it runs;
- a short visibility timeout, with low unacked-restore intervals: a message whose worker died is
  restored within about `visibility_timeout_s` + 2 s;
- a lease thread in every running task re-stamps its own message in the unacked index, so a live
  run is never taken for a dead one, however long it takes.
Endless redelivery is cut by a per-message delivery counter (`max_deliveries`).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import redis
from celery import Celery, Task
from kombu import Exchange, Queue

from shared.settings import get_settings

log = logging.getLogger("medqa.tasks")

QUEUES = ("ingest", "train", "evaluate", "monitor")
UNACKED_INDEX = "unacked_index"  # kombu's Redis transport default key for in-flight messages
ROUTES: dict[str, dict[str, str]] = {}  # task name -> queue, filled by @medqa_task


def _configure(app: Celery) -> None:
    settings = get_settings()
    app.conf.update(
        broker_url=settings.broker_url,
        task_always_eager=settings.eager,
        task_eager_propagates=True,
        task_ignore_result=True,  # results live in the store, not in Celery
        # Each queue its own direct exchange and key: with one shared default exchange, a message sent
        # to one queue is copied into every queue bound to that key.
        task_queues=[Queue(q, Exchange(q, type="direct"), routing_key=q) for q in QUEUES],
        task_default_queue="monitor",
        task_routes=ROUTES,
        task_acks_late=True,
        task_reject_on_worker_lost=False,  # a child that dies is acked; the sweeper re-derives the work
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_s,
            "unacked_restore_interval": 2,
            "unacked_restore_throttle": 1,
            "socket_connect_timeout": 3,
            "socket_timeout": 10,
        },
        # A publish against a dead broker must fail fast: the row is committed already and the
        # sweeper will send the message once Redis is back.
        task_publish_retry_policy={"max_retries": 1, "interval_start": 0.2, "interval_step": 0.2},
        broker_connection_timeout=3,
        # Beat loads no task module, so each entry names its queue: routes are only known where a
        # task's module was imported.
        beat_schedule={
            "ingest-poll": {"task": "ingest.poll", "schedule": float(settings.ingest_poll_s),
                            "options": {"queue": "ingest"}},
            "monitor-run": {"task": "monitor.run", "schedule": float(settings.monitor_every_s),
                            "options": {"queue": "monitor"}},
            "sweep": {"task": "pipeline.sweep", "schedule": float(settings.sweep_every_s),
                      "options": {"queue": "monitor"}},
            **({"retrieval-index": {"task": "monitor.retrieval_index",
                                    "schedule": float(settings.retrieval_index_every_s),
                                    "options": {"queue": "monitor"}}} if settings.retrieval_index_every_s else {}),
        },
        # Which task modules a worker loads is the composition root's choice (services/cli/tasks.py):
        # the foundation names no service.
    )


app = Celery("medqa")
_configure(app)


def reconfigure() -> None:
    """Re-read settings into the app (tests switch between eager and a real broker). The cached
    broker connection pools are dropped too, or publishes would still go to the old broker."""
    _configure(app)
    app._pool = None
    app.amqp._producer_pool = None


@functools.cache
def _redis_for(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=10)


def redis_client() -> redis.Redis:
    return _redis_for(get_settings().broker_url)


class LeaseKeeper(threading.Thread):
    """Renews the running message's slot in the unacked index, and the singleton lock, if any."""

    def __init__(self, delivery_tag: str | None, lock: Any | None, every_s: float) -> None:
        super().__init__(daemon=True, name="medqa-lease")
        self.delivery_tag, self.lock, self.every_s = delivery_tag, lock, every_s
        self.stop = threading.Event()

    def run(self) -> None:
        r = redis_client()
        while not self.stop.wait(self.every_s):
            try:
                if self.delivery_tag:
                    # XX: only touch an entry that exists; after ack it is gone and stays gone.
                    r.zadd(UNACKED_INDEX, {self.delivery_tag: time.time()}, xx=True)
                if self.lock is not None:
                    self.lock.reacquire()
            except Exception as exc:  # a blip must not kill the task; the next beat retries
                log.warning("lease renewal failed: %s", exc)


class SingletonBusy(Exception):
    """Another worker holds the singleton lock for this work."""


@contextmanager
def _running(task: Task, lock_key: str | None) -> Iterator[None]:
    settings = get_settings()
    r = redis_client()
    lock = None
    if lock_key:
        # Half the visibility timeout: by the time a dead worker's message is redelivered, its lock
        # has expired, so the redelivered task is not turned away by its own predecessor.
        # thread_local=False: the lease thread, not the task's thread, renews it.
        lock = r.lock(f"medqa:lock:{lock_key}", timeout=settings.visibility_timeout_s / 2, blocking=False,
                      thread_local=False)
        if not lock.acquire():
            raise SingletonBusy(lock_key)
    keeper = LeaseKeeper((task.request.properties or {}).get("delivery_tag"), lock, settings.visibility_timeout_s / 5)
    keeper.start()
    try:
        yield
    finally:
        keeper.stop.set()
        keeper.join(timeout=5)
        if lock is not None:
            with suppress(Exception):  # expired already: nothing to release
                lock.release()


def medqa_task(
    name: str,
    *,
    queue: str,
    retry_on: tuple[type[BaseException], ...] = (),
    max_retries: int = 3,
    singleton: Callable[..., str] | None = None,
    on_give_up: Callable[..., None] | None = None,
) -> Callable[[Callable[..., Any]], Task]:
    """Declare a task: its queue, late acks, capped retries on named exceptions, an optional
    singleton lock (key computed from the task's arguments) and a hook run when a message has been
    delivered `max_deliveries` times without finishing (the worker died each time)."""
    if queue not in QUEUES:
        raise ValueError(f"unknown queue {queue!r}; queues are {QUEUES}")

    def wrap(fn: Callable[..., Any]) -> Task:
        ROUTES[name] = {"queue": queue}

        @app.task(name=name, bind=True, acks_late=True, autoretry_for=retry_on,
                  max_retries=max_retries, retry_backoff=2, retry_backoff_max=8, retry_jitter=True)
        @functools.wraps(fn)
        def run(self: Task, *args: Any, **kwargs: Any) -> Any:
            if self.request.is_eager or app.conf.task_always_eager:
                return fn(*args, **kwargs)  # in-process: no broker message to lease, no other worker
            if self.request.id is not None and _delivered_too_often(self):
                log.error("%s[%s] delivered more than %d times; giving up", name, self.request.id,
                          get_settings().max_deliveries)
                if on_give_up is not None:
                    on_give_up(*args, **kwargs)
                return None
            key = f"{name}:{singleton(*args, **kwargs)}" if singleton else None
            try:
                with _running(self, key):
                    return fn(*args, **kwargs)
            except SingletonBusy:
                # Not an error: the holder is doing this work. If it dies, the sweeper re-sends it.
                log.info("%s skipped: %s is held by another worker", name, key)
                return None

        return run

    return wrap


def _delivered_too_often(task: Task) -> bool:
    key = f"medqa:deliveries:{task.request.id}"
    r = redis_client()
    n = r.incr(key)
    r.expire(key, 7 * 24 * 3600)
    return n > get_settings().max_deliveries
