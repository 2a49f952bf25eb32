"""Micro-batching: concurrent requests wait a few ms for company, then run as one call in one thread.

A causal LM answers 8 questions in one left-padded `generate` for little more than the cost of one
on a CPU (bench/serve.py), so gathering concurrent requests raises throughput. The single worker
thread is also what keeps the model safe: every forward pass, tokenizer call and adapter swap
happens in (or under the lock of) one place, never from the server's request threads.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Generic, TypeVar

log = logging.getLogger("medqa.api.batcher")

In = TypeVar("In")
Out = TypeVar("Out")
_STOP = object()


class Batcher(Generic[In, Out]):
    """`submit(item)` returns a Future; a worker thread calls `handle(items)` on up to `max_batch`
    items gathered within `wait_ms` of the first, and resolves each future with its own result.
    With max_batch 1 every request is its own call (batching off)."""

    def __init__(self, handle: Callable[[Sequence[In]], Sequence[Out]], *, max_batch: int, wait_ms: float,
                 name: str = "medqa-batcher") -> None:
        self._handle = handle
        self.max_batch = max(1, max_batch)
        self.wait_s = max(0.0, wait_ms) / 1000.0
        self._queue: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = False

    def start(self) -> Batcher[In, Out]:
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Finish what is queued, then end the thread."""
        if self._started:
            self._queue.put(_STOP)
            self._thread.join(timeout)
            self._started = False

    def submit(self, item: In) -> Future[Out]:
        if not self._started:
            raise RuntimeError("the batcher is not running")
        fut: Future[Out] = Future()
        self._queue.put((item, fut))
        return fut

    def _gather(self, first: tuple[In, Future[Out]]) -> tuple[list[tuple[In, Future[Out]]], bool]:
        batch, stop = [first], False
        deadline = time.monotonic() + self.wait_s
        while len(batch) < self.max_batch:
            left = deadline - time.monotonic()
            try:
                # Whatever is queued already joins without waiting; then wait out the window.
                nxt = self._queue.get_nowait() if left <= 0 else self._queue.get(timeout=left)
            except queue.Empty:
                break
            if nxt is _STOP:
                stop = True
                break
            batch.append(nxt)  # type: ignore[arg-type]
        return batch, stop

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is _STOP:
                break
            batch, stop = self._gather(first)  # type: ignore[arg-type]
            # A client that gave up (timeout, disconnect) cancelled its future: skip its work.
            live = [(item, fut) for item, fut in batch if fut.set_running_or_notify_cancel()]
            if not live:
                continue
            try:
                results = self._handle([item for item, _ in live])
                if len(results) != len(live):
                    raise RuntimeError(f"handler returned {len(results)} results for {len(live)} items")
            except BaseException as exc:  # every waiting request hears of it; the thread goes on
                log.exception("batch of %d failed", len(live))
                for _, fut in live:
                    fut.set_exception(exc)
                continue
            for (_, fut), result in zip(live, results, strict=True):
                fut.set_result(result)
