"""Prometheus metrics of one app, in a registry of its own (not the process-global one), so several
apps in one process (tests, the bench) never collide on metric names."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Seconds: the tiny test model answers in milliseconds, SmolLM2 on a CPU in seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class ApiMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("medqa_api_requests", "HTTP requests by endpoint (route template) and status.",
                                ["endpoint", "method", "status"], registry=r)
        self.latency = Histogram("medqa_api_request_seconds", "Request latency by endpoint.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.model_version = Gauge("medqa_api_model_version",
                                   "Model version being served (0: the bare base model, before any champion).",
                                   registry=r)
        self.retrieval_hits = Counter("medqa_api_retrieval_hits", "Abstracts retrieved and cited in answers.",
                                      registry=r)
        self.batch_size = Histogram("medqa_api_batch_size", "Questions per generate call.",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.index_size = Gauge("medqa_api_index_abstracts", "Abstracts in the retrieval index.", registry=r)
        self.swaps = Counter("medqa_api_model_swaps", "Hot swaps to a new champion.", registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
