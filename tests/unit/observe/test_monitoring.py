"""The monitoring assets (monitoring/ and the compose profile) against the metrics the programs expose.

Reads files only: no network, no Docker. The dashboard and the alert rules may use only
the series that consumer.py and producer.py expose (SERIES), each the way its type
allows; every panel queries the provisioned data source; every alert says how bad it
is and what it means; and the files Prometheus and Grafana read in the compose
profile exist where the configuration expects them. Where promtool (Prometheus's own
checker) is installed, it also checks the Prometheus files, the dashboard's queries,
and runs the alert rules' tests in monitoring/alerts_test.yml; elsewhere those skip.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
MONITORING = ROOT / "monitoring"
COMPOSE = ROOT / "docker-compose.yml"
PROMETHEUS_CONFIG = MONITORING / "prometheus.yml"
ALERTS = MONITORING / "alerts.yml"
ALERTS_TEST = MONITORING / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "orderpipe.json"
DATASOURCES = MONITORING / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = MONITORING / "grafana" / "provisioning" / "dashboards" / "orderpipe.yml"

# Every orderpipe_* series the programs expose with --metrics-port, and its type. The
# dashboard and the alerts may use no other; a histogram is read through its _bucket,
# _sum and _count series.
SERIES: dict[str, str] = {
    # consumer.py
    "orderpipe_orders_processed_total": "counter",
    "orderpipe_orders_retried_total": "counter",
    "orderpipe_orders_dead_lettered_total": "counter",  # label reason
    "orderpipe_running_average_price_dollars": "gauge",
    "orderpipe_consumer_lag_records": "gauge",  # labels topic, partition
    "orderpipe_transaction_commit_seconds": "histogram",
    "orderpipe_batch_records": "histogram",
    # producer.py
    "orderpipe_orders_produced_total": "counter",
    "orderpipe_orders_failed_total": "counter",
    "orderpipe_produce_latency_seconds": "histogram",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
DEAD_LETTER_REASONS = frozenset({"deserialization", "validation", "retries-exhausted"})
SEVERITIES = frozenset({"critical", "warning"})
SCRAPE_PORTS = {"orderpipe-consumer": 9401, "orderpipe-producer": 9402}

_SERIES_NAME = re.compile(r"\borderpipe_[A-Za-z0-9_]*")
_RATE_BEFORE = re.compile(r"\b(?:rate|increase)\(\s*$")
_REASON_MATCHER = re.compile(r'\breason\s*(=~|!~|!=|=)\s*"([^"]*)"')
_JOB_MATCHER = re.compile(r'\bjob\s*(=~|!~|!=|=)\s*"([^"]*)"')
_DURATION = re.compile(r"^(?:[0-9]+(?:ms|s|m|h|d|w|y))+$")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return document


def _panels() -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows too."""
    panels: list[dict[str, Any]] = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _query_panels() -> list[dict[str, Any]]:
    return [panel for panel in _panels() if panel["type"] != "row"]


def _dashboard_exprs() -> list[str]:
    return [target["expr"] for panel in _query_panels() for target in panel["targets"]]


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _yaml(ALERTS)["groups"] for rule in group["rules"]]


def _alert_exprs() -> list[str]:
    return [rule["expr"] for rule in _rules()]


def _all_exprs() -> list[Any]:
    """Every query of the dashboard and the alerts, as test parameters (source, expr)."""
    sources = [("dashboard", _dashboard_exprs()), ("alerts", _alert_exprs())]
    return [
        pytest.param(source, expr, id=f"{source}-{number}")
        for source, exprs in sources
        for number, expr in enumerate(exprs)
    ]


def _kind(name: str) -> tuple[str, str] | None:
    """(base name, type) of a series name the programs expose, or None."""
    if SERIES.get(name) in ("counter", "gauge"):
        return name, SERIES[name]
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and SERIES.get(base) == "histogram":
            return base, "histogram"
    return None


def _compose_monitoring_services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _yaml(COMPOSE)["services"]
    return {name: spec for name, spec in services.items() if "monitoring" in spec.get("profiles", [])}


def _mounts(service: str) -> dict[PurePosixPath, tuple[Path, str]]:
    """A monitoring service's bind mounts: container path -> (host path, mode)."""
    mounts: dict[PurePosixPath, tuple[Path, str]] = {}
    for volume in _compose_monitoring_services()[service].get("volumes", []):
        source, target, *mode = volume.split(":")
        mounts[PurePosixPath(target)] = ((COMPOSE.parent / source).resolve(), mode[0] if mode else "rw")
    return mounts


def _datasource_uid() -> str:
    (datasource,) = _yaml(DATASOURCES)["datasources"]
    uid: str = datasource["uid"]
    return uid


# --- Series -----------------------------------------------------------------------------


def test_the_dashboard_and_alerts_query_something():
    assert len(_dashboard_exprs()) >= 10
    assert len(_alert_exprs()) >= 5


@pytest.mark.parametrize(("source", "expr"), _all_exprs())
def test_only_series_the_programs_expose(source, expr):
    unknown = [name for name in _SERIES_NAME.findall(expr) if _kind(name) is None]
    assert not unknown, f"{source}: {unknown} in {expr!r} are not series of consumer.py or producer.py"


@pytest.mark.parametrize(("source", "expr"), _all_exprs())
def test_each_series_is_read_as_its_type_allows(source, expr):
    """Counters and histogram series only through rate() or increase(); gauges never so."""
    for match in _SERIES_NAME.finditer(expr):
        kind = _kind(match.group())
        if kind is None:
            continue
        in_rate = _RATE_BEFORE.search(expr[: match.start()]) is not None
        if kind[1] == "gauge":
            assert not in_rate, f"{source}: gauge {match.group()} taken as a rate in {expr!r}"
        else:
            assert in_rate, f"{source}: {kind[1]} {match.group()} read without rate() or increase() in {expr!r}"


@pytest.mark.parametrize(("source", "expr"), _all_exprs())
def test_dead_letter_reasons_are_real(source, expr):
    for operator, value in _REASON_MATCHER.findall(expr):
        values = value.split("|") if operator in ("=~", "!~") else [value]
        assert set(values) <= DEAD_LETTER_REASONS, f"{source}: unknown reason {value!r} in {expr!r}"


@pytest.mark.parametrize(("source", "expr"), _all_exprs())
def test_jobs_are_the_scrape_jobs(source, expr):
    jobs = {job["job_name"] for job in _yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    for operator, value in _JOB_MATCHER.findall(expr):
        values = value.split("|") if operator in ("=~", "!~") else [value]
        assert set(values) <= jobs, f"{source}: job {value!r} in {expr!r} is not scraped"


def test_the_dashboard_shows_every_series():
    used = {kind[0] for expr in _dashboard_exprs() for name in _SERIES_NAME.findall(expr) if (kind := _kind(name))}
    assert used == set(SERIES)


# --- Dashboard ----------------------------------------------------------------------------


def test_dashboard_identity():
    dashboard = _dashboard()
    assert dashboard["uid"] == "orderpipe"
    assert dashboard["title"] == "Order pipeline"
    assert isinstance(dashboard["schemaVersion"], int)
    assert dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in _panels()]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_panels_fit_the_grid():
    for panel in _panels():
        grid = panel["gridPos"]
        assert grid["x"] >= 0, panel["title"]
        assert grid["w"] > 0, panel["title"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]


def test_every_panel_uses_the_provisioned_datasource():
    uid = _datasource_uid()
    for panel in _query_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], f"{panel['title']}: no query"
        for target in panel["targets"]:
            assert target["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
            assert target["expr"].strip(), panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"{panel['title']}: refIds must be unique"


def test_the_datasource_is_the_compose_prometheus():
    (datasource,) = _yaml(DATASOURCES)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in _compose_monitoring_services()
    # $__rate_interval spans four of Grafana's idea of the scrape interval: keep it Prometheus's.
    assert datasource["jsonData"]["timeInterval"] == _yaml(PROMETHEUS_CONFIG)["global"]["scrape_interval"]


# --- Alerts -------------------------------------------------------------------------------


def test_alerts_are_in_the_orderpipe_group():
    assert [group["name"] for group in _yaml(ALERTS)["groups"]] == ["orderpipe"]


def test_every_alert_says_how_bad_and_what_it_means():
    names = [rule["alert"] for rule in _rules()]
    assert len(names) == len(set(names)), "alert names must be unique"
    for rule in _rules():
        name = rule["alert"]
        assert _DURATION.match(str(rule["for"])), f"{name}: for must be a duration"
        assert rule["labels"]["severity"] in SEVERITIES, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name


def test_the_alerts_asked_for_are_there():
    """Lag growing, dead letters, retries exhausted, no commits, targets down."""
    exprs = {rule["alert"]: rule["expr"] for rule in _rules()}
    assert "deriv(orderpipe_consumer_lag_records" in exprs["OrderpipeConsumerLagGrowing"]
    assert 'reason!="retries-exhausted"' in exprs["OrderpipeDeadLettersHigh"]
    assert 'reason="retries-exhausted"' in exprs["OrderpipeRetriesExhausted"]
    assert "orderpipe_transaction_commit_seconds_count" in exprs["OrderpipeNoCommits"]
    assert "orderpipe_consumer_lag_records" in exprs["OrderpipeNoCommits"]
    assert 'up{job="orderpipe-consumer"} == 0' in exprs["OrderpipeConsumerDown"]
    assert 'up{job="orderpipe-producer"} == 0' in exprs["OrderpipeProducerDown"]


# --- Prometheus configuration and the compose profile ------------------------------------


def test_scrape_jobs_follow_the_port_convention():
    jobs = {job["job_name"]: job for job in _yaml(PROMETHEUS_CONFIG)["scrape_configs"]}
    assert set(jobs) == set(SCRAPE_PORTS)
    for name, port in SCRAPE_PORTS.items():
        targets = [target for config in jobs[name]["static_configs"] for target in config["targets"]]
        assert targets == [f"host.docker.internal:{port}"], name


def test_rule_files_are_mounted_beside_the_config():
    """Prometheus reads rule_files relative to its config file: in the repository and in the container."""
    mounts = _mounts("prometheus")
    config_target = next(target for target, (source, _) in mounts.items() if source == PROMETHEUS_CONFIG)
    assert config_target == PurePosixPath("/etc/prometheus/prometheus.yml")  # the image's default --config.file
    rule_files = _yaml(PROMETHEUS_CONFIG)["rule_files"]
    assert rule_files
    for rule_file in rule_files:
        host = (PROMETHEUS_CONFIG.parent / rule_file).resolve()
        assert host.is_file(), rule_file
        assert mounts.get(config_target.parent / rule_file, (None, ""))[0] == host, f"{rule_file} is not mounted"
    assert ALERTS in {source for source, _ in mounts.values()}


def test_the_monitoring_profile_mounts_files_of_the_repository_read_only():
    services = _compose_monitoring_services()
    assert set(services) == {"prometheus", "grafana"}
    for name, spec in services.items():
        image = spec["image"]
        assert re.fullmatch(r"[a-z0-9./-]+:v?[0-9]+\.[0-9]+\.[0-9]+", image), f"{name}: pin an exact version"
        for target, (source, mode) in _mounts(name).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is not in the repository"
            assert source.is_relative_to(MONITORING), f"{name}: {source}"
            assert mode == "ro", f"{name}: {target} should be read-only"
    assert services["prometheus"]["extra_hosts"] == ["host.docker.internal:host-gateway"]


def test_grafana_is_provisioned_from_the_mounts():
    mounts = _mounts("grafana")
    provisioning = mounts[PurePosixPath("/etc/grafana/provisioning")][0]
    assert provisioning == DATASOURCES.parent.parent
    (provider,) = _yaml(DASHBOARD_PROVIDERS)["providers"]
    assert provider["type"] == "file"
    dashboards = mounts[PurePosixPath(provider["options"]["path"])][0]
    assert dashboards == DASHBOARD.parent
    home = _compose_monitoring_services()["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert PurePosixPath(home) == PurePosixPath(provider["options"]["path"]) / DASHBOARD.name


# --- promtool, where installed -------------------------------------------------------------

needs_promtool = pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")


def _promtool(*args: str | Path) -> None:
    promtool = shutil.which("promtool")
    assert promtool is not None
    result = subprocess.run(
        [promtool, *map(str, args)], capture_output=True, text=True, timeout=60, check=False, cwd=ROOT
    )
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_accepts_the_config_and_rules():
    _promtool("check", "config", PROMETHEUS_CONFIG)


@needs_promtool
def test_promtool_alert_tests_pass():
    _promtool("test", "rules", ALERTS_TEST)


@needs_promtool
def test_promtool_parses_the_dashboard_queries(tmp_path):
    """Each dashboard query as a recording rule, Grafana's variables replaced, for promtool to parse."""
    rules = [
        {"record": f"dashboard:query_{number}", "expr": expr.replace("$__rate_interval", "1m")}
        for number, expr in enumerate(_dashboard_exprs())
    ]
    path = tmp_path / "dashboard_rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    _promtool("check", "rules", path)
