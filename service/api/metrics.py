"""Every Prometheus metric the service exports, declared once.

Histograms, not summaries, so replicas aggregate. Base units (seconds, bytes) and the `made_` prefix.
With more than one worker process, prometheus-client's multiprocess mode is used (PROMETHEUS_MULTIPROC_DIR,
set by `made serve --workers N`), and /metrics aggregates across the processes; each gauge says how.
"""

from __future__ import annotations

import bisect
import collections
import os
from collections.abc import Sequence

from prometheus_client import CONTENT_TYPE_LATEST as CONTENT_TYPE  # noqa: F401  (re-exported for the route)
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)

MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))  # as prometheus-client decides, at import


class LiveCount:
    """A count the event loop keeps (requests in flight, requests queued), exported as a gauge. In one
    process the gauge reads the count when it is scraped (Gauge.set_function), so a request costs an
    integer add; in multiprocess mode, where a gauge cannot read a function, every change is written to it.
    Only the event loop's thread may change it."""

    def __init__(self, gauge=None):
        """`gauge`: a labelled series, or None for a count exported nowhere."""
        self.value = 0
        self._gauge = gauge if MULTIPROCESS else None
        if gauge is not None and not MULTIPROCESS:
            gauge.set_function(lambda: self.value)

    def add(self, n: int) -> None:
        self.value += n
        if self._gauge is not None:
            self._gauge.inc(n)


def observe_all(histogram, values: Sequence[float]) -> None:
    """histogram.observe(v) for each of `values` (one labelled series), with one update per bucket touched
    rather than per value: the batcher observes each request of a batch at once. It writes the series'
    buckets and sum as Histogram.observe does (the same for multiprocess values); test_metrics.py checks
    that the exposition is the same as observing one by one (the sum to rounding)."""
    if not values:
        return
    bounds = histogram._upper_bounds
    counts = collections.Counter(bisect.bisect_left(bounds, v) for v in values)
    histogram._sum.inc(sum(values))
    for index, count in counts.items():
        histogram._buckets[index].inc(count)


REQUEST_DURATION = Histogram(
    "made_http_request_duration_seconds",
    "HTTP request latency, by route template, model and status",
    ["route", "method", "model", "status"],
    buckets=SECONDS,
)
HTTP_IN_FLIGHT = LiveCount(
    Gauge("made_http_requests_in_flight", "HTTP requests being handled now", multiprocess_mode="livesum")
)
QUEUE_WAIT = Histogram(
    "made_queue_wait_seconds",
    "time a request waited in the batch queue before its batch ran",
    ["model", "operation"],
    buckets=SECONDS,
)
COMPUTE = Histogram(
    "made_model_compute_seconds",
    "time one merged batch spent in the model",
    ["model", "operation"],
    buckets=SECONDS,
)
BATCH_ROWS = Histogram(
    "made_batch_rows", "rows in one merged batch sent to the model", ["model", "operation"], buckets=ROWS
)
REQUEST_ROWS = Histogram(
    "made_request_rows", "rows (or samples) asked for by one request", ["model", "operation"], buckets=ROWS
)
QUEUE_DEPTH = Gauge(
    "made_queue_depth",
    "requests waiting in the batch queue",
    ["model", "operation"],
    multiprocess_mode="livesum",
)
REJECTIONS = Counter(
    "made_rejections_total", "requests refused before reaching the model, by reason", ["model", "reason"]
)
ERRORS = Counter("made_errors_total", "requests that failed inside the model, by reason", ["model", "reason"])
MODEL_STATE = Gauge(
    "made_model_state",
    "1 for the model's current state (loading, ready, failed)",
    ["model", "state"],
    multiprocess_mode="livemax",
)
DRIFT_CHECKS = Counter(
    "made_drift_checks_total",
    "drift checks of a batch against the calibration, by outcome",
    ["model", "result"],
)
DRIFT_P_VALUE = Gauge(
    "made_drift_p_value",
    "p-value of the model's latest drift check (with several workers: the smallest of their latest)",
    ["model"],
    multiprocess_mode="min",
)
MODEL_LOADS = Counter("made_model_loads_total", "model version loads, by result", ["model", "result"])
MODEL_LOAD_DURATION = Gauge(
    "made_model_load_duration_seconds",
    "how long the last load (and warm-up) of the model took",
    ["model"],
    multiprocess_mode="livemax",
)
MODEL_INFO = Gauge(
    "made_model_info",
    "1 for the version being served",
    ["model", "version", "likelihood", "device"],
    multiprocess_mode="livemax",
)
DEVICE_MEMORY = Gauge(
    "made_device_memory_bytes",
    "GPU memory held by PyTorch (allocated, reserved)",
    ["device", "kind"],
    multiprocess_mode="livemax",
)

STATES = ("loading", "ready", "failed")
REJECTION_REASONS = (
    "invalid_input",
    "malformed_request",
    "payload_too_large",
    "unsupported_media_type",
    "not_acceptable",
    "queue_full",
    "deadline_exceeded",
    "model_not_ready",
    "not_calibrated",
    "shutting_down",
)
ERROR_REASONS = ("compute_failed", "out_of_memory", "internal_error")


def initialise_model(model: str) -> None:
    """Create every per-model series at zero, so dashboards and alerts see 0 rather than nothing."""
    for reason in REJECTION_REASONS:
        REJECTIONS.labels(model=model, reason=reason)
    for reason in ERROR_REASONS:
        ERRORS.labels(model=model, reason=reason)
    for operation in ("log_prob", "sample"):
        QUEUE_DEPTH.labels(model=model, operation=operation)
    for result in ("drift", "no_drift"):
        DRIFT_CHECKS.labels(model=model, result=result)


def set_model_state(model: str, state: str) -> None:
    for s in STATES:
        MODEL_STATE.labels(model=model, state=s).set(1 if s == state else 0)


def update_device_memory() -> None:
    import torch

    if not torch.cuda.is_available():
        return
    for index in range(torch.cuda.device_count()):
        device = f"cuda:{index}"
        DEVICE_MEMORY.labels(device=device, kind="allocated").set(torch.cuda.memory_allocated(index))
        DEVICE_MEMORY.labels(device=device, kind="reserved").set(torch.cuda.memory_reserved(index))


def render() -> bytes:
    update_device_memory()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)
