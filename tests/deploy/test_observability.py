"""Prometheus configuration and alert rules, Grafana provisioning and the made-service dashboard.

`promtool` (Debian's `prometheus` package; not on PyPI) checks the configuration, the rules, and the
dashboard's queries as PromQL where it is installed; without it those tests skip and a structural check of
the same files runs instead. The metric names every dashboard query and alert rule uses are checked against
the /metrics of a live server, whatever is installed."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import yaml

from tests.deploy.support import (
    DASHBOARD,
    DOCKER,
    PROMETHEUS_CONFIG,
    dashboard_queries,
    duration_s,
    exposition_families,
    family_of,
    grafana_to_promql,
    promql_metric_names,
    run,
)

RULES = DOCKER / "prometheus" / "alerts.yml"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def rule_expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load(RULES.read_text())
    return [
        (f"rule {r.get('alert') or r.get('record')}", r["expr"]) for g in rules["groups"] for r in g["rules"]
    ]


# ---- Prometheus --------------------------------------------------------------------------------------------
@needs_promtool
def test_promtool_accepts_the_config_and_its_rules():
    result = run("promtool", "check", "config", str(PROMETHEUS_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rules found" in result.stdout, "the rule files were not checked"


@needs_promtool
def test_promtool_accepts_the_rules():
    result = run("promtool", "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_config_structure():
    """What promtool would refuse most often, checked without it: known top-level keys, unique job names,
    each job with a target source, durations, and rule files that exist."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    assert set(config) <= {
        "global",
        "rule_files",
        "scrape_configs",
        "alerting",
        "remote_write",
        "remote_read",
        "storage",
        "tracing",
        "scrape_config_files",
        "otlp",
        "runtime",
    }
    for key in ("scrape_interval", "scrape_timeout", "evaluation_interval"):
        duration_s(config["global"][key])
    assert duration_s(config["global"]["scrape_timeout"]) <= duration_s(config["global"]["scrape_interval"])
    jobs = [j["job_name"] for j in config["scrape_configs"]]
    assert len(jobs) == len(set(jobs)) and "made" in jobs
    for job in config["scrape_configs"]:
        assert any(k.endswith("_sd_configs") or k == "static_configs" for k in job), job["job_name"]
    for rule_file in config["rule_files"]:
        assert (PROMETHEUS_CONFIG.parent / rule_file).is_file(), rule_file


def test_rules_structure():
    rules = yaml.safe_load(RULES.read_text())
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert ("alert" in rule) != ("record" in rule)
            assert rule["expr"].count("(") == rule["expr"].count(")")
            if "for" in rule:
                duration_s(rule["for"])
            names.append(rule.get("alert") or rule.get("record"))
    assert len(names) == len(set(names))


# ---- Grafana provisioning ----------------------------------------------------------------------------------
def test_datasource_is_the_compose_prometheus_and_the_dashboard_default(dashboard):
    (source,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
    assert variable["type"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == source["uid"]
    scrape = yaml.safe_load(PROMETHEUS_CONFIG.read_text())["global"]["scrape_interval"]
    assert source["jsonData"]["timeInterval"] == scrape


# ---- the dashboard -----------------------------------------------------------------------------------------
def panels(dashboard):
    def walk(items):
        for p in items:
            yield p
            yield from walk(p.get("panels", []))

    return list(walk(dashboard["panels"]))


def test_dashboard_is_well_formed(dashboard):
    assert dashboard["uid"] == "made-service" and dashboard["schemaVersion"] >= 36
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids))
    for p in panels(dashboard):
        grid = p["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        if p["type"] == "row":
            continue
        assert p["description"], f"panel {p['title']!r} has no description"
        assert p["targets"] and all(t["expr"] and t["refId"] for t in p["targets"])
        assert p["datasource"]["uid"] == "${datasource}"
        assert len({t["refId"] for t in p["targets"]}) == len(p["targets"])


def test_every_query_has_balanced_brackets(dashboard):
    for where, expr in dashboard_queries(dashboard):
        for left, right in ("()", "{}", "[]"):
            assert expr.count(left) == expr.count(right), where


def families_in(exprs) -> set[str]:
    return {name for _, e in exprs for name in promql_metric_names(e)}


def test_dashboard_shows_what_the_issue_asks_for(dashboard):
    queries = dashboard_queries(dashboard)
    used = families_in(queries)
    for series in (
        "made_http_request_duration_seconds_count",
        "made_http_request_duration_seconds_bucket",
        "made_queue_wait_seconds_bucket",
        "made_batch_rows_sum",
        "made_batch_rows_count",
        "made_queue_depth",
        "made_rejections_total",
        "made_errors_total",
        "made_device_memory_bytes",
    ):
        assert series in used, series
    latency = next(p for p in panels(dashboard) if p["title"].startswith("Latency"))
    exprs = [t["expr"] for t in latency["targets"]]
    for q in ("0.5", "0.95", "0.99"):
        assert any(e.startswith(f"histogram_quantile({q}, sum by (le, route, model)") for e in exprs), q
    by_reason = [p for p in panels(dashboard) if "by reason" in p["title"]]
    assert {"made_rejections_total", "made_errors_total"} <= families_in(
        [("", t["expr"]) for p in by_reason for t in p["targets"]]
    )
    assert all("sum by (reason" in t["expr"] for p in by_reason for t in p["targets"])


# ---- metric names against a live server --------------------------------------------------------------------
def test_metric_name_extraction():
    cases = {
        "histogram_quantile(0.99, sum by (le, route, model) (rate(made_http_request_duration_seconds_bucket"
        '{job=~"$job", route=~"/v1/.*|/v2/.*"}[$__rate_interval]))) > 5': {
            "made_http_request_duration_seconds_bucket"
        },
        'sum by (model) (rate(made_batch_rows_sum{model=~"$model"}[5m])) / sum by (model) '
        "(rate(made_batch_rows_count[5m]))": {
            "made_batch_rows_sum",
            "made_batch_rows_count",
        },
        'count by (model, version) (made_model_info{model="a"} == 1) and on(instance) up offset 1h': {
            "made_model_info",
            "up",
        },
        "max(made_device_memory_bytes) without (kind) * 1e3 + sum(x:recorded:rate5m)": {
            "made_device_memory_bytes",
            "x:recorded:rate5m",
        },
        'label_values(made_model_info{job=~"$job"}, instance)': {"made_model_info"},
        "label_values(job)": set(),
        'increase(made_model_loads_total{result="failed"}[15m]) > 0': {"made_model_loads_total"},
        'sum(rate(by_name_total{le="0.5", by="x"}[1m]))': {"by_name_total"},
    }
    for expr, expected in cases.items():
        assert promql_metric_names(expr) == expected, expr


def test_suffixes_are_stripped_only_where_the_family_has_them():
    families = {
        "a_seconds": "histogram",
        "b_total": "counter",
        "c": "counter",
        "d_count": "gauge",
        "e": "summary",
    }
    assert family_of("a_seconds_bucket", families) == ("a_seconds", "histogram")
    assert family_of("a_seconds_sum", families) == ("a_seconds", "histogram")
    assert family_of("a_seconds_count", families) == ("a_seconds", "histogram")
    assert family_of("a_seconds", families) is None  # a histogram has no plain series
    assert family_of("b_total", families) == ("b_total", "counter")
    assert family_of("c_total", families) == ("c", "counter")
    assert family_of("d_count", families) == ("d_count", "gauge")
    assert family_of("d", families) is None
    assert family_of("e_count", families) == ("e", "summary")
    assert family_of("e_bucket", families) is None
    assert family_of("unknown_bucket", families) is None


def test_device_memory_is_declared_even_without_a_gpu(live_metrics):
    """made_device_memory_bytes has samples only where CUDA is available, but prometheus-client prints its
    HELP and TYPE lines regardless, so the dashboard's GPU panel queries an exported metric."""
    assert "# TYPE made_device_memory_bytes gauge" in live_metrics
    assert "# HELP made_device_memory_bytes " in live_metrics


@pytest.mark.parametrize("source", ["dashboard", "alert rules"])
def test_every_queried_metric_is_exported(source, dashboard, live_metrics):
    families = exposition_families(live_metrics)
    assert "made_http_request_duration_seconds" in families, "not a made-service exposition"
    queries = dashboard_queries(dashboard) if source == "dashboard" else rule_expressions()
    assert queries
    unknown = []
    for where, expr in queries:
        names = promql_metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        unknown += [f"{where}: {name}" for name in sorted(names) if family_of(name, families) is None]
    assert not unknown, "not exported by the service:\n" + "\n".join(unknown)


def test_dashboard_covers_every_exported_made_metric(dashboard, live_metrics):
    """The other direction: a metric added to the service without a panel fails here."""
    exported = {name for name in exposition_families(live_metrics) if name.startswith("made_")}
    exported = {n for n in exported if not n.endswith("_created")}
    families = exposition_families(live_metrics)
    shown = {family_of(name, families)[0] for name in families_in(dashboard_queries(dashboard))}
    assert exported <= shown, f"no panel for: {sorted(exported - shown)}"


@needs_promtool
def test_dashboard_queries_are_valid_promql(dashboard, tmp_path):
    """promtool parses every dashboard query (as a recording rule), with Grafana's variables filled in."""
    rules = [
        {"record": f"dashboard:query_{k}", "expr": grafana_to_promql(expr)}
        for k, (where, expr) in enumerate(dashboard_queries(dashboard))
        if not expr.startswith("label_values(")
    ]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run("promtool", "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(rf"SUCCESS: {len(rules)} rules found", result.stdout)
