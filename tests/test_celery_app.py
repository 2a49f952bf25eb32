"""The task decorator against the real Redis: singleton locks, lease renewal, delivery cap, routing."""

import threading
import time

import pytest
import redis
from conftest import TEST_REDIS

from shared import celery_app
from shared.celery_app import QUEUES, ROUTES, medqa_task

calls: list[str] = []


@medqa_task("test.slow", queue="monitor", singleton=lambda key: key)
def slow(key: str) -> str:
    calls.append(key)
    time.sleep(1.5)
    return key


@pytest.fixture
def live(medqa_env):
    r = redis.Redis.from_url(TEST_REDIS)
    r.flushdb()
    medqa_env(eager="0", visibility_timeout_s="5")
    calls.clear()
    yield r
    r.flushdb()


def test_routes_and_queues():
    import services.evaluator.tasks  # noqa: F401  (registers its routes)
    import services.trainer.tasks  # noqa: F401
    assert ROUTES["train.run"] == {"queue": "train"} and ROUTES["evaluate.version"] == {"queue": "evaluate"}
    assert {r["queue"] for r in ROUTES.values()} <= set(QUEUES)
    with pytest.raises(ValueError, match="unknown queue"):
        medqa_task("x", queue="gpu")


def test_singleton_lock_turns_away_a_second_runner(live):
    results = {}
    t = threading.Thread(target=lambda: results.setdefault("a", slow("k")))
    t.start()
    time.sleep(0.3)
    results["b"] = slow("k")  # same key while the first holds the lock: skipped
    t.join()
    assert results == {"a": "k", "b": None} and calls == ["k"]
    assert slow("k") == "k"  # released afterwards


def test_lease_keeps_the_lock_past_its_timeout(live, medqa_env):
    # Lock timeout is visibility/2 = 2.5 s; a 1.5 s task with renewals every 1 s never loses it,
    # and a renewal from the lease thread must work (the lock is not thread-local).
    medqa_env(eager="0", visibility_timeout_s="5")
    lock = live.lock("medqa:lock:probe", timeout=1, thread_local=False)
    assert lock.acquire(blocking=False)
    keeper = celery_app.LeaseKeeper(None, lock, every_s=0.3)
    keeper.start()
    time.sleep(1.6)
    keeper.stop.set()
    keeper.join()
    assert live.get("medqa:lock:probe") is not None  # still held: it was renewed


def test_delivery_cap_gives_up(live):
    class Req:
        id = "abc"

    class FakeTask:
        request = Req()

    for _ in range(3):
        assert not celery_app._delivered_too_often(FakeTask())  # type: ignore[arg-type]
    assert celery_app._delivered_too_often(FakeTask())  # type: ignore[arg-type]
