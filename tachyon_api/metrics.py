"""Prometheus metrics for an app: HTTP requests by route template, method and status; tasks by name and
outcome; queue depth and running tasks. Needs the ``metrics`` extra (``prometheus-client``).

``instrument(app)`` adds a pure ASGI middleware that times every HTTP request and a ``GET /metrics`` route.
Task metrics cost nothing per task beyond the runner's own statistics (:class:`~tachyon_api.tasks.
TaskMetrics`): a collector reads them when Prometheus scrapes. Labels are bounded: the route label is the
route's template (``/items/{item_id}``), never the raw path, and ``"unmatched"`` for requests no route serves,
so a scan of random URLs cannot create a series per URL.
"""

from __future__ import annotations

import bisect
import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from .dependencies import Depends
from .responses import Response
from .tasks.stats import DURATION_BOUNDS, OUTCOMES

if TYPE_CHECKING:
    from .applications import Tachyon

# Prometheus' own formatting of bucket bounds ("+Inf", "0.005"); the function has no annotations there.
_go_float: Callable[[float], str] = floatToGoString

__all__ = ["PrometheusMetrics", "instrument"]

# The runner keeps four buckets per doubling; Prometheus gets one per doubling (50 us, 100 us, ..., 14 min).
_EXPORTED = range(0, len(DURATION_BOUNDS), 4)
# Request latency buckets (seconds): from well under a millisecond, where this framework answers, to 10 s.
HTTP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class PrometheusMetrics:
    """The app's metrics in ``registry`` (a registry of their own by default, so two apps in one process, or
    a test, never collide in prometheus-client's global one).

    HTTP requests are counted in plain lists, one per method, route and status, updated on the event loop
    (one thread: no lock) and turned into metric families when Prometheus scrapes. A request then pays a route
    lookup, a bisect and two additions, where prometheus-client's labelled ``Counter`` and ``Histogram`` take
    a lock and build label tuples on every call.
    """

    def __init__(self, app: Any, registry: CollectorRegistry | None = None) -> None:
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry()
        # (method, route, status) -> [total seconds, requests per HTTP_BUCKETS bucket..., requests above them]
        self.requests: dict[tuple[str, str, int], list[float]] = {}
        self.registry.register(_HTTPCollector(self))
        self.registry.register(_TaskCollector(app))

    def observe(self, method: str, route: str, status: int, duration: float) -> None:
        """Count one answered request (on the event loop); ``route`` is the route's template."""
        key = (method, route, status)
        row = self.requests.get(key)
        if row is None:
            row = self.requests[key] = [0.0] * (len(HTTP_BUCKETS) + 2)
        row[0] += duration
        row[1 + bisect.bisect_left(HTTP_BUCKETS, duration)] += 1

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _HTTPMetrics:
    """Pure ASGI: counts and times HTTP requests; other scope types pass through untouched.

    The route template comes from ``scope["route"]``, which the app sets when a route matches, so a request
    is not routed twice (only when it is absent: no route, or an inner middleware copied the scope). ``send``
    is wrapped by a plain function that returns the server's awaitable, not by a coroutine of its own, so the
    wrapper costs a call per message and no frame."""

    def __init__(self, app: Any, metrics: PrometheusMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # if the app fails before answering, the server answers 500

        def send_status(message: dict[str, Any]) -> Any:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            return send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            if route is None:  # not matched, or an inner middleware passed the app a copy of the scope
                route = self.metrics.app.route_for(scope["method"], scope["path"])
            self.metrics.observe(
                scope["method"], "unmatched" if route is None else route.path, status, time.perf_counter() - started
            )


class _HTTPCollector(Collector):
    """The HTTP counts as Prometheus families, built at scrape time."""

    def __init__(self, metrics: PrometheusMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        rows = [(key, list(row)) for key, row in list(self.metrics.requests.items())]  # a copy: the loop goes on
        requests = CounterMetricFamily(
            "tachyon_http_requests", "HTTP requests answered", labels=["method", "route", "status"]
        )
        latency = HistogramMetricFamily(
            "tachyon_http_request_duration_seconds",
            "Time from the request's arrival to the end of its response",
            labels=["method", "route"],
        )
        by_route: dict[tuple[str, str], list[float]] = {}
        for (method, route, status), row in rows:
            requests.add_metric([method, route, str(status)], sum(row[1:]))
            merged = by_route.setdefault((method, route), [0.0] * len(row))
            for index, value in enumerate(row):
                merged[index] += value
        for (method, route), row in by_route.items():
            upto = list(itertools.accumulate(row[1:]))
            buckets = [(_go_float(bound), upto[i]) for i, bound in enumerate(HTTP_BUCKETS)]
            latency.add_metric([method, route], [*buckets, ("+Inf", upto[-1])], row[0])
        yield requests
        yield latency


class _TaskCollector(Collector):
    """Reads the runner's statistics at scrape time."""

    def __init__(self, app: Any) -> None:
        self.app = app

    def collect(self) -> Iterator[Any]:
        runner = self.app.background
        rows = runner.metric_rows()
        stats = runner.stats()
        running, queued = stats.running, stats.queued
        tasks = CounterMetricFamily("tachyon_tasks", "Background task attempts by outcome", labels=["name", "outcome"])
        durations = HistogramMetricFamily(
            "tachyon_task_duration_seconds", "Duration of background task attempts", labels=["name"]
        )
        for name, counts, buckets, total in rows:
            for outcome, count in zip(OUTCOMES, counts, strict=True):
                tasks.add_metric([name, outcome], count)
            upto = list(itertools.accumulate(buckets))  # upto[i]: attempts that took at most DURATION_BOUNDS[i]
            cumulative = [(_go_float(DURATION_BOUNDS[i]), upto[i]) for i in _EXPORTED]
            durations.add_metric([name], [*cumulative, ("+Inf", upto[-1])], total)
        yield tasks
        yield durations
        yield GaugeMetricFamily("tachyon_tasks_running", "Background tasks running now", value=running)
        yield GaugeMetricFamily("tachyon_tasks_queued", "Background tasks waiting for a free slot", value=queued)


def instrument(
    app: Tachyon,
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
