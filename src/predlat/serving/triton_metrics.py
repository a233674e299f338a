"""Per-model metrics under Triton's names, so dashboards and alerts written for Triton
work unchanged: success and failure counts, cumulative request, queue and compute time
(input, infer, output) in microseconds, inference and execution counts, and the pending
request count.

Triton exposes its cumulative figures without the `_total` suffix prometheus_client adds
to counters; they are emitted at scrape time under their exact names (as gauges: the
values only grow, so `rate()` works the same).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

VERSION = "1"
_HELP = {
    "nv_inference_request_success": "Number of successful inference requests, all batch sizes",
    "nv_inference_request_failure": "Number of failed inference requests, all batch sizes",
    "nv_inference_count": "Number of inferences performed (rows of successful requests)",
    "nv_inference_exec_count": "Number of model executions performed (batches)",
    "nv_inference_request_duration_us": "Cumulative inference request duration in us",
    "nv_inference_queue_duration_us": "Cumulative inference queuing duration in us",
    "nv_inference_compute_input_duration_us": "Cumulative compute input duration in us",
    "nv_inference_compute_infer_duration_us": "Cumulative compute inference duration in us",
    "nv_inference_compute_output_duration_us": "Cumulative inference compute output duration in us",
}
_FAILURE_REASONS = {"rejected": "REJECTED", "failed": "BACKEND", "refused": "REJECTED"}


class TritonMetrics(Collector):
    """Thread-safe accumulators, exposed under Triton's names at scrape time."""

    def __init__(self, pending: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.pending = pending
        self._lock = threading.Lock()
        self._values: dict[tuple[str, str, str], float] = defaultdict(float)

    def add(self, name: str, model: str, value: float = 1.0, reason: str = "") -> None:
        with self._lock:
            self._values[(name, model, reason)] += value

    def observe_outcome(self, model: str, status: str, rows: int, queue_s: float | None,
                        infer_s: float | None) -> None:  # fmt: skip
        if status in ("met", "missed"):
            self.add("nv_inference_request_success", model)
            self.add("nv_inference_count", model, rows)
        else:
            reason = _FAILURE_REASONS.get(status, "OTHER")
            self.add("nv_inference_request_failure", model, reason=reason)
        if queue_s is not None:
            self.add("nv_inference_queue_duration_us", model, queue_s * 1e6)
        if infer_s is not None:
            self.add("nv_inference_compute_infer_duration_us", model, infer_s * 1e6)

    def observe_refusal(self, model: str) -> None:
        """Refused at the door: a failure the runtime never saw."""
        self.add("nv_inference_request_failure", model, reason="REJECTED")

    def collect(self) -> Iterable[GaugeMetricFamily]:
        with self._lock:
            values = dict(self._values)
        for name, text in _HELP.items():
            labels = ["model", "version", "reason"] if name.endswith("failure") else None
            family = GaugeMetricFamily(name, text, labels=labels or ["model", "version"])
            for (metric, model, reason), value in sorted(values.items()):
                if metric == name:
                    family.add_metric([model, VERSION, reason] if labels else [model, VERSION],
                                      value)  # fmt: skip
            yield family
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model",
            labels=["model", "version"],
        )
        if self.pending is not None:
            for model, count in sorted(self.pending().items()):
                pending.add_metric([model, VERSION], count)
        yield pending
