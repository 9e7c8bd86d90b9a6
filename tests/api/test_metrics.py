"""The cheap ways the hot path updates its metrics (metrics.observe_all, metrics.LiveCount) export exactly
what prometheus-client's own updates would."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Gauge, Histogram

from service.api import metrics

BUCKETS = (0.001, 0.01, 0.1, 1.0)
# below the first bound, on each bound (le: counted in it), between bounds, above the last (+Inf), repeats
VALUES = [0.0, 0.0005, 0.001, 0.001, 0.002, 0.01, 0.05, 0.1, 0.5, 1.0, 1.5, 30.0, 0.001]


def histogram_samples(observe) -> dict:
    registry = CollectorRegistry()
    histogram = Histogram("h", "test", ["model"], buckets=BUCKETS, registry=registry)
    series = histogram.labels(model="m")
    observe(series)
    return {
        (sample.name, sample.labels.get("le")): sample.value
        for metric in registry.collect()
        for sample in metric.samples
        if not sample.name.endswith("_created")
    }


def test_observe_all_exports_what_observing_one_by_one_does():
    one_by_one = histogram_samples(lambda series: [series.observe(v) for v in VALUES])
    at_once = histogram_samples(lambda series: metrics.observe_all(series, VALUES))
    assert one_by_one.pop(("h_sum", None)) == pytest.approx(at_once.pop(("h_sum", None)))
    assert at_once == one_by_one
    assert at_once[("h_bucket", "0.001")] == 5  # 0.0, 0.0005 and the three on the bound
    assert at_once[("h_count", None)] == len(VALUES)


def test_observe_all_of_nothing_changes_nothing():
    assert histogram_samples(lambda series: metrics.observe_all(series, [])) == histogram_samples(
        lambda series: None
    )


def gauge_value(registry: CollectorRegistry) -> float:
    return registry.get_sample_value("g", {"model": "m"})


def test_a_live_count_is_read_when_scraped_in_one_process(monkeypatch):
    monkeypatch.setattr(metrics, "MULTIPROCESS", False)
    registry = CollectorRegistry()
    count = metrics.LiveCount(Gauge("g", "test", ["model"], registry=registry).labels(model="m"))
    count.add(3)
    count.add(-1)
    assert count.value == 2 and gauge_value(registry) == 2
    count.add(-2)
    assert gauge_value(registry) == 0


def test_a_live_count_writes_every_change_in_multiprocess_mode(monkeypatch):
    """A multiprocess gauge cannot read a function: each change goes to the gauge (here an ordinary one,
    which shows what was written)."""
    monkeypatch.setattr(metrics, "MULTIPROCESS", True)
    registry = CollectorRegistry()
    gauge = Gauge("g", "test", ["model"], registry=registry).labels(model="m")
    count = metrics.LiveCount(gauge)
    count.add(5)
    count.add(-2)
    assert count.value == 3 and gauge_value(registry) == 3
    gauge.set(7)  # written, not read: the gauge keeps what was last written
    assert gauge_value(registry) == 7 and count.value == 3


def test_a_live_count_without_a_gauge_only_counts():
    count = metrics.LiveCount()
    count.add(4)
    assert count.value == 4
