"""Prometheus metrics of one broker, served at `GET /metrics` (text exposition format 0.0.4).

- `cscore_broker_requests_total{route, method, status}`: HTTP answers, by route *template*
  (`/admin/v0/keys/{key_id}`, never the key id itself; `unmatched` for paths no route serves);
- `cscore_broker_request_duration_seconds{route, method}`: latency histogram, same labels;
- `cscore_broker_decisions_total{operation, outcome, clause}`: every decision-log entry, by operation
  (`unwrap`, `release`, `attest`, `admin.create_key`, ...), outcome (`allow`/`deny`) and the policy
  clause that decided (`config-granted`, `root-allowed`, `custom`, `default`, ...);
- `cscore_broker_info{name, store}`: 1, with the broker's name and key-store backend.

Labels are names fixed in code: never a key id, batch id, measurement, token or claim value (the decision
log holds those, behind the admin token). Each app has its own registry, so two brokers in one process
(tests) keep their own counts.
"""

from __future__ import annotations

import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Broker calls are milliseconds (a database write, a signature); attestation verification can take ~100 ms.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
METRICS_MEDIA_TYPE = CONTENT_TYPE_LATEST


class BrokerMetrics:
    """The broker's counters and histograms in a registry of their own."""

    def __init__(self, name: str, store: str) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("cscore_broker_requests", "HTTP requests answered, by route template, method and "
                                "status code", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("cscore_broker_request_duration_seconds", "Time from request to the last byte "
                                 "of the answer, by route template and method", ["route", "method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.decisions = Counter("cscore_broker_decisions", "Decision-log entries, by operation, outcome and "
                                 "deciding clause", ["operation", "outcome", "clause"], registry=self.registry)
        info = Gauge("cscore_broker_info", "This broker's name and key-store backend", ["name", "store"],
                     registry=self.registry)
        info.labels(name=name, store=store).set(1)

    def decision(self, operation: str, outcome: str, clause: str) -> None:
        """Count one decision-log entry."""
        self.decisions.labels(operation=operation, outcome=outcome, clause=clause or "none").inc()

    def render(self) -> bytes:
        """The registry in Prometheus' text format."""
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every answer (429 and 413 from the limits too: it wraps them) and times it."""

    def __init__(self, app: ASGIApp, metrics: BrokerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception that escapes every handler is answered 500 by the server

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route=route, method=scope["method"], status=str(status)).inc()
            self.metrics.latency.labels(route=route, method=scope["method"]).observe(time.perf_counter() - started)
