"""Prometheus metrics of one server, in a registry of its own (never the process-wide
default registry, so two servers in one process, e.g. in tests, never share counters).

Request outcomes and batches are fed by the runtime's listeners (so they count every
request the runtime answered, whoever sent it); HTTP-level figures by the app.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from predlat.scheduling.outcome import RequestOutcome
from predlat.serving.triton_metrics import TritonMetrics
from predlat.traces.records import BatchRecord

OUTCOMES = ("met", "missed", "rejected", "failed")
# fmt: off
_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
                    10.0)
_OVERHEAD_BUCKETS = (0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0005, 0.00075, 0.001, 0.0015,
                     0.002, 0.003, 0.005, 0.01, 0.02, 0.05)
_REFUSAL_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_ERROR_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
# fmt: on
_EWMA_WEIGHT = 0.05  # the predictor-error gauge follows roughly the last 20 batches


class _ScrapeTime(Collector):
    """Figures computed when scraped: per-slot busy fraction since the server started,
    queue length per model, and every numeric field of the runtime's stats snapshot
    (`predlat_runtime_<field>`: queued, running, utilization, dispatch lag, ...)."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterable[GaugeMetricFamily]:
        util = GaugeMetricFamily(
            "predlat_slot_utilization",
            "Fraction of time each slot ran a batch since the server started",
            labels=["slot"],
        )
        elapsed = max(time.monotonic() - self.metrics.started, 1e-9)
        for slot, busy in sorted(self.metrics.busy_seconds().items()):
            util.add_metric([str(slot)], min(1.0, busy / elapsed))
        yield util
        queues = self.metrics.queue_lengths
        if queues is not None:
            family = GaugeMetricFamily(
                "predlat_queue_length", "Requests waiting in the scheduler", labels=["model"]
            )
            for model, length in sorted(_safe(queues, {}).items()):
                family.add_metric([model], length)
            yield family
        if self.metrics.runtime_stats is None:
            return
        values = _safe(self.metrics.runtime_stats, {})
        if dataclasses.is_dataclass(values):
            values = dataclasses.asdict(values)
        for key, value in sorted(values.items()):
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                yield GaugeMetricFamily(f"predlat_runtime_{key}", f"Runtime stat {key}", value)


def _safe(accessor: Callable[[], Any], default: Any) -> Any:
    try:
        return accessor()
    except Exception:  # a scrape must never fail because of a stats accessor
        return default


class ServingMetrics:
    """Every metric `/metrics` exposes. Thread-safe: listeners run on runtime threads."""

    def __init__(
        self,
        runtime_stats: Callable[[], Any] | None = None,
        queue_lengths: Callable[[], Mapping[str, int]] | None = None,
    ) -> None:
        """`runtime_stats`: a mapping or dataclass of numbers (Runtime.stats);
        `queue_lengths`: model -> queued requests (Runtime.queue_lengths)."""
        self.registry = CollectorRegistry()
        self.runtime_stats = runtime_stats
        self.queue_lengths = queue_lengths
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self._busy: dict[int, float] = {}
        self._error_ewma: dict[str, float] = {}
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self.requests = self._counter(
            "predlat_requests",
            "Requests answered by the runtime, by outcome",
            ["model", "priority", "outcome"],
        )
        self.latency = self._histogram(
            "predlat_request_latency_seconds",
            "Arrival to end of the request's batch",
            ["model", "priority"],
            buckets=_LATENCY_BUCKETS,
        )
        self.queue_time = self._histogram(
            "predlat_queue_time_seconds",
            "Arrival to start of the request's batch",
            ["model", "priority"],
            buckets=_LATENCY_BUCKETS,
        )
        self.batch_size = self._histogram(
            "predlat_batch_size",
            "Rows per executed batch",
            ["model"],
            buckets=_BATCH_BUCKETS,
        )
        self.batch_latency = self._histogram(
            "predlat_batch_latency_seconds",
            "Execution time of each batch",
            ["model"],
            buckets=_LATENCY_BUCKETS,
        )
        self.slot_busy = self._counter(
            "predlat_slot_busy_seconds",
            "Time each slot spent running batches",
            ["slot"],
        )
        self.predictor_error = self._histogram(
            "predlat_predictor_relative_error",
            "|predicted - actual| / actual batch latency, predicted at dispatch",
            ["model"],
            buckets=_ERROR_BUCKETS,
        )
        self.predictor_error_ewma = self._gauge(
            "predlat_predictor_relative_error_ewma",
            "Exponentially weighted mean of the predictor's relative error (recent batches)",
            ["model"],
        )
        self.http_responses = self._counter(
            "predlat_http_responses",
            "HTTP responses by endpoint and status code",
            ["endpoint", "code"],
        )
        self.http_duration = self._histogram(
            "predlat_http_request_duration_seconds",
            "Time in the HTTP handler",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
        )
        self.server_overhead = self._histogram(
            "predlat_server_overhead_seconds",
            "Handler time not spent in the runtime (decode, submit, wake-up, encode)",
            buckets=_OVERHEAD_BUCKETS,
        )
        self.refusal_latency = self._histogram(
            "predlat_refusal_latency_seconds",
            "From a refused infer request's first byte (gRPC: its handler) to the answer",
            buckets=_REFUSAL_BUCKETS,
        )
        self.inflight = self._gauge(
            "predlat_inflight_requests", "Infer requests waiting for the runtime"
        )
        self.refusals = self._counter(
            "predlat_refusals",
            "Infer requests refused by the server before the scheduler, by reason",
            ["model", "reason"],
        )
        self.late_answers = self._counter(
            "predlat_late_answers",
            "Infer requests answered after their deadline",
            ["model"],
        )
        self.delayed = self._counter(
            "predlat_delayed_requests",
            "Requests refused on time by the scheduler but run anyway (timeout_action DELAY)",
            ["model"],
        )
        self.door_scale = self._gauge(
            "predlat_door_forecast_scale",
            "The door's calibration: p99 of (time to answer / raw forecast) of requests let in",
        )
        self.loop_lag = self._gauge(
            "predlat_event_loop_lag_seconds",
            "p99 lateness of the serving event loop's timers (added to the door's forecasts)",
        )
        r = self.registry
        r.register(_ScrapeTime(self))
        self.triton = TritonMetrics()
        r.register(self.triton)

    # One helper a metric type: every metric lives in this server's own registry.
    def _counter(self, name: str, doc: str, labels: Sequence[str] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def _gauge(self, name: str, doc: str, labels: Sequence[str] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def _histogram(
        self, name: str, doc: str, labels: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(*labels)`, cached: the lookup costs more than the update, and
        the batch listener runs on the runtime's control thread, ahead of the answers."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- fed by the runtime's listeners (any thread) -----------------------------------
    def observe_outcome(self, outcome: RequestOutcome) -> None:
        """One request outcome, whoever submitted the request."""
        model, priority = outcome.model, _priority_label(outcome.priority)
        self._child(self.requests, model, priority, outcome.status).inc()
        if outcome.end is not None:
            self._child(self.latency, model, priority).observe(outcome.end - outcome.arrival)
        queue_s = infer_s = None
        if outcome.start is not None:
            queue_s = outcome.start - outcome.arrival
            self._child(self.queue_time, model, priority).observe(queue_s)
            if outcome.end is not None:
                infer_s = outcome.end - outcome.start
        rows = _rows(outcome.outputs)
        self.triton.observe_outcome(model, outcome.status, rows, queue_s, infer_s)

    def observe_batch(self, record: BatchRecord, predicted: float | None) -> None:
        """One finished batch and the latency predicted for it at dispatch (seconds)."""
        model, latency = record.model, record.latency
        self._child(self.batch_size, model).observe(record.batch_size)
        self._child(self.batch_latency, model).observe(latency)
        self._child(self.slot_busy, str(record.slot)).inc(max(0.0, latency))
        self.triton.add("nv_inference_exec_count", model)
        error = None
        if latency > 0 and predicted is not None:
            error = abs(predicted - latency) / latency
            self._child(self.predictor_error, model).observe(error)
        with self._lock:
            self._busy[record.slot] = self._busy.get(record.slot, 0.0) + max(0.0, latency)
            if error is None:
                return
            previous = self._error_ewma.get(model)
            value = error if previous is None else previous + _EWMA_WEIGHT * (error - previous)
            self._error_ewma[model] = value
        self._child(self.predictor_error_ewma, model).set(value)

    # -- fed by the app --------------------------------------------------------------
    def watch_door(self, scale: Callable[[], float], loop_lag: Callable[[], float]) -> None:
        """Read the door's calibration and the loop's lag at every scrape."""
        self.door_scale.set_function(scale)
        self.loop_lag.set_function(loop_lag)

    def observe_http(self, endpoint: str, code: int, seconds: float) -> None:
        """`seconds`: from the request's first byte at the server to its answer."""
        self._child(self.http_responses, endpoint, str(code)).inc()
        self._child(self.http_duration, endpoint).observe(seconds)
        if endpoint == "infer" and code in (429, 503):
            self.refusal_latency.observe(seconds)

    def observe_refusal(self, model: str, reason: str) -> None:
        self._child(self.refusals, model, reason).inc()
        self.triton.observe_refusal(model)

    def observe_request(self, model: str, total_s: float, input_s: float, output_s: float) -> None:
        """Server-side times of one answered request: arrival to answer, decoding the
        inputs, encoding the outputs (Triton's compute input / output)."""
        t = self.triton
        t.add("nv_inference_request_duration_us", model, total_s * 1e6)
        t.add("nv_inference_compute_input_duration_us", model, input_s * 1e6)
        t.add("nv_inference_compute_output_duration_us", model, output_s * 1e6)

    def observe_late(self, model: str) -> None:
        self._child(self.late_answers, model).inc()

    def observe_delayed(self, model: str) -> None:
        self._child(self.delayed, model).inc()

    def busy_seconds(self) -> dict[int, float]:
        with self._lock:
            return dict(self._busy)

    def render(self) -> tuple[bytes, str]:
        """The Prometheus text exposition and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def _rows(outputs: Mapping[str, Any] | None) -> int:
    if not outputs:
        return 1
    first = next(iter(outputs.values()))
    shape = getattr(first, "shape", ())
    return int(shape[0]) if shape else 1


def _priority_label(priority: object) -> str:
    name = getattr(priority, "name", None)
    return name.lower() if isinstance(name, str) else str(priority)
