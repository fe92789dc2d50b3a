"""Prometheus metrics: per-route requests and latency (plain ASGI), predictions, feedback."""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from flywheel.serving.access import AccessLog, record

__all__ = ["Metrics", "MetricsMiddleware"]

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    """One registry per app (no process-global state: two apps in a process do not mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "flywheel_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "flywheel_http_request_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "flywheel_predictions",
            "Predictions served, by model version and predicted label (regression: 'value').",
            ["model_version", "label"],
            registry=self.registry,
        )
        self.prediction_seconds = Histogram(
            "flywheel_prediction_seconds",
            "Time from a request's input reaching the batcher to its answer (queue, decode, "
            "model), by model version.",
            ["model_version"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.feedback = Counter(
            "flywheel_feedback",
            "Feedback recorded, by whether it agreed with the prediction.",
            ["agreed"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "flywheel_batch_size",
            "Requests per model forward pass (micro-batching).",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "flywheel_queue_depth",
            "Items waiting: 'batch' (requests for the model), 'log' (predictions to commit).",
            ["queue"],
            registry=self.registry,
        )
        self.log_written = Counter(
            "flywheel_prediction_log_rows",
            "Prediction rows the background writer committed.",
            registry=self.registry,
        )
        self.production_version = Gauge(
            "flywheel_production_version",
            "The model version in production as this process serves it.",
            registry=self.registry,
        )
        self.drift_test = Gauge(
            "flywheel_drift_score",
            "The newest monitoring window's drift test statistics, by test (input_mmd, "
            "label_tv, confidence_ks, value_ks).",
            ["test"],
            registry=self.registry,
        )
        self.drift_threshold = Gauge(
            "flywheel_drift_threshold",
            "Each drift test's calibrated alarm threshold for the newest window.",
            ["test"],
            registry=self.registry,
        )
        self.drift_alarm = Gauge(
            "flywheel_drift_alarm",
            "1 when the newest monitoring window alarmed, else 0.",
            registry=self.registry,
        )
        self.accuracy = Gauge(
            "flywheel_window_accuracy",
            "The newest window's accuracy: 'estimated' (label-free, calibrated confidence) "
            "and 'observed' (from the answers its calls got so far).",
            ["kind"],
            registry=self.registry,
        )

    def windows(self, monitoring: dict[str, Any]) -> None:
        """Show the newest monitoring window (``Project.monitoring``)."""
        windows = monitoring["windows"]
        if not windows:
            return
        w = windows[-1]
        for test, score in (w["scores"] or {}).items():
            self.drift_test.labels(test).set(score)
            self.drift_threshold.labels(test).set(w["thresholds"][test])
        self.drift_alarm.set(1.0 if w["alarm"] else 0.0)
        for kind in ("estimated", "observed"):
            value = w[f"{kind}_accuracy"]
            if value is not None:
                self.accuracy.labels(kind).set(value)


class MetricsMiddleware:
    """Counts and times every HTTP request by its route template (not its raw path), and
    writes its line of the access log."""

    def __init__(self, app: ASGIApp, metrics: Metrics, access: AccessLog) -> None:
        self.app = app
        self.metrics = metrics
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: dict[str, Any] = {"code": 500}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(template, method, str(status["code"])).inc()
            seconds = time.perf_counter() - started
            self.metrics.latency.labels(template, method).observe(seconds)
            if self.access.on:
                self.access.write(record(scope, status["code"], seconds))
