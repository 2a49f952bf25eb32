"""One NCBI rate limit for every ingest worker on every host, kept in Redis.

NCBI allows 3 requests/s per client (10 with an API key) and blocks clients that exceed it.
Biopython's own throttle is per process, so N workers would send N times that; here all of them
take their slots from one Redis key. The algorithm is GCRA with no burst, as a reservation: one
Lua call reads the next free slot, moves it one interval on and answers how long to wait for the
slot it handed out. Each request costs one round-trip, waiters are served in order, and Redis's
own clock is the only clock, so hosts whose clocks disagree still space their requests correctly.

If Redis is unreachable, ingest must go on (the broker being down is no reason to stop fetching):
the limiter falls back to the same algorithm in process, logs that once, and tries Redis again
every few seconds. While some workers are on the fallback the shared limit is not guaranteed.
"""

from __future__ import annotations

import functools
import logging
import threading
import time

import redis

from shared.settings import Settings

log = logging.getLogger("medqa.ingest")

RATE_KEY = "medqa:ncbi:rate"
# NCBI counts arrivals; network jitter can bring two evenly spaced requests closer than the
# interval. 10% spare (Biopython waits 0.37 s rather than 0.33 s for the same reason) keeps
# every 1-second window at the limit.
SPACING_MARGIN = 1.1
REDIS_RETRY_S = 10.0  # after a failure, skip Redis this long: every call would pay a timeout

# KEYS[1]: the next free slot (µs, Redis clock). ARGV[1]: the interval (µs).
# Returns the µs the caller waits before using its slot. The key expires when idle.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local slot = tonumber(redis.call('GET', KEYS[1]) or '0')
if slot < now then slot = now end
local next_slot = slot + tonumber(ARGV[1])
redis.call('SET', KEYS[1], string.format('%.0f', next_slot),
           'PX', math.ceil((next_slot - now) / 1000) + 1000)
return slot - now
"""


def ncbi_rate(settings: Settings) -> float:
    """Requests per second: the setting, else NCBI's limit for this client."""
    if settings.ncbi_rate_per_s is not None:
        return settings.ncbi_rate_per_s
    return 10.0 if settings.ncbi_api_key else 3.0


class _LocalLimiter:
    """The same reservation scheme for one process: the fallback when Redis is down."""

    def __init__(self, interval_s: float) -> None:
        self._interval = interval_s
        self._next = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        with self._lock:
            now = time.monotonic()
            slot = max(self._next, now)
            self._next = slot + self._interval
            return slot - now


class RateLimiter:
    """`acquire()` blocks until this caller may send one request."""

    def __init__(self, rate_per_s: float, *, redis_url: str | None, key: str = RATE_KEY) -> None:
        if rate_per_s <= 0:
            raise ValueError(f"rate must be positive, got {rate_per_s}")
        self.rate_per_s = rate_per_s
        self.interval_s = SPACING_MARGIN / rate_per_s
        self.key = key
        self._local = _LocalLimiter(self.interval_s)
        self._redis: redis.Redis | None = None
        if redis_url:
            # Short timeouts: a dead Redis must cost ingest little before the fallback takes over.
            self._redis = redis.Redis.from_url(redis_url, socket_connect_timeout=0.5, socket_timeout=1.0)
            self._script = self._redis.register_script(_GCRA)
        self._skip_redis_until = 0.0
        self._on_fallback = False
        self._state_lock = threading.Lock()

    @property
    def shared(self) -> bool:
        """False while this limiter is on its in-process fallback."""
        return self._redis is not None and not self._on_fallback

    def acquire(self) -> float:
        """Wait for a slot; returns the seconds waited."""
        wait = self._reserve()
        if wait > 0:
            time.sleep(wait)
        return wait

    def _reserve(self) -> float:
        if self._redis is None or time.monotonic() < self._skip_redis_until:
            return self._local.reserve()
        try:
            wait_us = int(self._script(keys=[self.key], args=[int(self.interval_s * 1_000_000)]))
        except redis.RedisError as exc:
            with self._state_lock:
                self._skip_redis_until = time.monotonic() + REDIS_RETRY_S
                if not self._on_fallback:
                    self._on_fallback = True
                    log.warning("Redis unreachable for the shared NCBI rate limit (%s); limiting this "
                                "process alone to %.3g requests/s until it is back", exc, self.rate_per_s)
            return self._local.reserve()
        if self._on_fallback:
            with self._state_lock:
                if self._on_fallback:
                    self._on_fallback = False
                    log.info("Redis is back: the NCBI rate limit is shared again")
        return wait_us / 1_000_000


@functools.cache
def _limiter(rate_per_s: float, redis_url: str) -> RateLimiter:
    return RateLimiter(rate_per_s, redis_url=redis_url)


def ncbi_limiter(settings: Settings) -> RateLimiter:
    """The process's limiter for these settings (one per broker URL and rate)."""
    return _limiter(ncbi_rate(settings), settings.broker_url)
