"""Writes predlat.json, the Grafana dashboard of a predlat server's /metrics (Triton's
per-model names beside predlat's own). Run: python3 deploy/grafana/make_dashboard.py"""

from __future__ import annotations

import json
from pathlib import Path

RATE = "[$__rate_interval]"
PANELS = [  # (title, unit, [(legend, expr)])
    ("Requests per second", "reqps", [
        ("{{model}} success", f"sum by (model) (rate(nv_inference_request_success{RATE}))"),
        ("{{model}} failure {{reason}}",
         f"sum by (model, reason) (rate(nv_inference_request_failure{RATE}))"),
    ]),
    ("Average queue time per request", "µs", [
        ("{{model}}", f"rate(nv_inference_queue_duration_us{RATE}) / "
                      f"clamp_min(rate(nv_inference_request_success{RATE}), 1e-9)"),
    ]),
    ("Compute time per request: input / infer / output", "µs", [
        (f"{{{{model}}}} {part}", f"rate(nv_inference_compute_{part}_duration_us{RATE}) / "
                                  f"clamp_min(rate(nv_inference_request_success{RATE}), 1e-9)")
        for part in ("input", "infer", "output")
    ]),
    ("Pending requests", "short", [
        ("{{model}}", "nv_inference_pending_request_count"),
    ]),
    ("Latency p99 (arrival to answer)", "s", [
        ("{{model}} {{priority}}", "histogram_quantile(0.99, sum by (le, model, priority) "
                                   f"(rate(predlat_request_latency_seconds_bucket{RATE})))"),
    ]),
    ("Predicted vs actual batch latency (relative error, EWMA)", "percentunit", [
        ("{{model}}", "predlat_predictor_relative_error_ewma"),
    ]),
    ("Refusals by reason", "reqps", [
        ("{{model}} {{reason}}", f"sum by (model, reason) (rate(predlat_refusals_total{RATE}))"),
        ("{{model}} scheduler", 'sum by (model) (rate(predlat_requests_total{outcome="rejected"}'
                                f"{RATE}))"),
    ]),
    ("Late answers (after their deadline)", "reqps", [
        ("{{model}} late", f"sum by (model) (rate(predlat_late_answers_total{RATE}))"),
        ("{{model}} delayed", f"sum by (model) (rate(predlat_delayed_requests_total{RATE}))"),
    ]),
    ("Server overhead p99", "s", [
        ("p99", "histogram_quantile(0.99, sum by (le) "
                f"(rate(predlat_server_overhead_seconds_bucket{RATE})))"),
    ]),
    ("Slot utilization", "percentunit", [
        ("slot {{slot}}", "predlat_slot_utilization"),
    ]),
]  # fmt: skip


def panel(index: int, title: str, unit: str, targets: list[tuple[str, str]]) -> dict:
    return {
        "id": index + 1,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": 12 * (index % 2), "y": 8 * (index // 2)},
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(targets)
        ],
    }


def dashboard() -> dict:
    return {
        "title": "predlat serving",
        "uid": "predlat-serving",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "time": {"from": "now-30m", "to": "now"},
        "refresh": "10s",
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "type": "datasource",
                    "query": "prometheus",
                    "label": "Prometheus",
                }
            ]
        },
        "panels": [panel(i, *p) for i, p in enumerate(PANELS)],
    }


if __name__ == "__main__":
    out = Path(__file__).with_name("predlat.json")
    out.write_text(json.dumps(dashboard(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
