"""Prometheus metrics for an app: HTTP requests by route template, method and status; tasks by name and
outcome; queue depth and running tasks. Needs the ``metrics`` extra (``prometheus-client``).

``instrument(app)`` adds a pure ASGI middleware that times every HTTP request and a ``GET /metrics`` route.
Task metrics cost nothing per task beyond the runner's own statistics (:class:`~tachyon_api.background.
TaskMetrics`): a collector reads them when Prometheus scrapes. Labels are bounded: the route label is the
route's template (``/items/{item_id}``), never the raw path, and ``"unmatched"`` for requests no route serves,
so a scan of random URLs cannot create a series per URL.
"""

from __future__ import annotations

import itertools
import time
from typing import Any, Iterator, Sequence

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .background import DURATION_BOUNDS, OUTCOMES
from .dependencies import Depends
from .responses import Response

__all__ = ["PrometheusMetrics", "instrument"]

# The runner keeps four buckets per doubling; Prometheus gets one per doubling (50 us, 100 us, ..., 14 min).
_EXPORTED = range(0, len(DURATION_BOUNDS), 4)
# Request latency buckets (seconds): from well under a millisecond, where this framework answers, to 10 s.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusMetrics:
    """The app's metrics in ``registry`` (a registry of their own by default, so two apps in one process, or
    a test, never collide in prometheus-client's global one)."""

    def __init__(self, app: Any, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry()
        self.requests = Counter(
            "tachyon_http_requests", "HTTP requests answered", ["method", "route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "tachyon_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_TaskCollector(app))

    def route_of(self, scope: dict) -> str:
        route, _, _ = self.app._tree.lookup(scope["method"], scope["path"])
        return route.path if route is not None else "unmatched"

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HTTPMetrics:
    """Pure ASGI: counts and times HTTP requests; other scope types pass through untouched."""

    def __init__(self, app: Any, metrics: PrometheusMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before answering, the server answers 500

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"]
            route = self.metrics.route_of(scope)
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - started)


class _TaskCollector(Collector):
    """Reads the runner's statistics at scrape time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        runner = self.app.background
        with runner._lock:
            rows = [
                (name, [getattr(m, outcome) for outcome in OUTCOMES], list(m.buckets), m.total)
                for name, m in runner.metrics.by_name.items()
            ]
            running, queued = runner._running, runner._queued
        tasks = CounterMetricFamily("tachyon_tasks", "Background task attempts by outcome", labels=["name", "outcome"])
        durations = HistogramMetricFamily(
            "tachyon_task_duration_seconds", "Duration of background task attempts", labels=["name"]
        )
        for name, counts, buckets, total in rows:
            for outcome, count in zip(OUTCOMES, counts):
                tasks.add_metric([name, outcome], count)
            upto = list(itertools.accumulate(buckets))  # upto[i]: attempts that took at most DURATION_BOUNDS[i]
            cumulative = [(floatToGoString(DURATION_BOUNDS[i]), upto[i]) for i in _EXPORTED]
            durations.add_metric([name], [*cumulative, ("+Inf", upto[-1])], total)
        yield tasks
        yield durations
        yield GaugeMetricFamily("tachyon_tasks_running", "Background tasks running now", value=running)
        yield GaugeMetricFamily("tachyon_tasks_queued", "Background tasks waiting for a free slot", value=queued)


def instrument(
    app: Any,
    *,
    path: str = "/metrics",
    dependencies: Sequence[Depends] | None = None,
    registry: CollectorRegistry | None = None,
) -> PrometheusMetrics:
    """Collect the app's metrics and serve them at ``path`` (``None``: do not serve them, for example to
    expose ``metrics.registry`` on a separate port with ``prometheus_client.start_http_server``).

    Call it before the app serves its first request: the middleware stack is built then.
    """
    metrics = PrometheusMetrics(app, registry)
    app.add_middleware(_HTTPMetrics, metrics=metrics)
    if path is not None:

        @app.get(path, dependencies=list(dependencies or ()), include_in_schema=False)
        async def prometheus_metrics() -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return metrics
