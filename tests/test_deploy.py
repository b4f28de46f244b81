"""deploy/: the Prometheus rules, scrape configs, Grafana dashboard, systemd units and compose
file parse, name only metrics the code exports, and the rules mirror monitoring.rules."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer
import yaml
from prometheus_client import CollectorRegistry

from skewless.cli import app
from skewless.features.stream import StreamMetrics
from skewless.operations.alert_rules import render
from skewless.operations.schedule import JobMetrics
from skewless.serving.metrics import ServingMetrics
from tests.conftest import ETTH_CONFIG, etth_config

DEPLOY = ETTH_CONFIG.parents[1] / "deploy"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
PROMETHEUS_OWN = {"up"}  # what Prometheus itself records about each scrape


def exported() -> set[str]:
    """Every series name skewless's servers, stream consumer and scheduler can export."""
    registries: list[CollectorRegistry] = [
        ServingMetrics().registry,
        StreamMetrics().registry,
        JobMetrics(["any"]).registry,
    ]
    return {
        family.name + suffix
        for registry in registries
        for family in registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def metric_names(expression: str) -> set[str]:
    names = set(re.findall(r"\b(skewless_[a-z0-9_]+)\b", expression))
    return names | {name for name in PROMETHEUS_OWN if re.search(rf"\b{name}\{{", expression)}


def test_the_alert_rules_are_generated_from_the_shipped_monitoring_rules() -> None:
    shipped = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    assert shipped == render(etth_config()), (
        "regenerate: python -m skewless.operations.alert_rules configs/etth.yaml "
        "> deploy/prometheus/alerts.yml"
    )
    rules = [rule for group in yaml.safe_load(shipped)["groups"] for rule in group["rules"]]
    assert len({rule["alert"] for rule in rules}) == len(rules)
    by_name = {rule["alert"]: rule["expr"] for rule in rules}
    assert "> 0.25 and" in by_name["SkewlessLatencyP99High"]  # latency_p99_ms: 250
    assert "> 0.05 and" in by_name["SkewlessEntityErrorRateHigh"]  # error_rate: 0.05
    for rule in ("drift_psi", "drift_ks", "accuracy", "coverage"):
        assert any(f'rule="{rule}"' in expr for expr in by_name.values()), rule


def test_a_rule_switched_off_in_the_config_has_no_alert() -> None:
    quiet = render(
        etth_config("monitoring.rules.drift_ks=null", "monitoring.rules.error_rate=null")
    )
    assert "SkewlessMonitorDriftKs" not in quiet and "SkewlessEntityErrorRate" not in quiet
    assert "SkewlessMonitorDriftPsi" in quiet


def test_rules_and_dashboard_name_only_metrics_the_code_exports() -> None:
    known = exported() | PROMETHEUS_OWN
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    expressions = [rule["expr"] for group in rules["groups"] for rule in group["rules"]]
    dashboard = json.loads((DEPLOY / "grafana" / "skewless.json").read_text())
    panels = [panel for panel in dashboard["panels"] if panel["type"] != "row"]
    expressions += [target["expr"] for panel in panels for target in panel["targets"]]
    for expression in expressions:
        names = metric_names(expression)
        assert names, expression
        assert names <= known, f"{sorted(names - known)} in {expression}"
    used = set().union(*(metric_names(e) for e in expressions))
    for family in ("skewless_requests_total", "skewless_stream_rows_in_total"):
        assert family in used
    assert any(name.startswith("skewless_job_") for name in used)


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads((DEPLOY / "grafana" / "skewless.json").read_text())
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 36
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for panel in dashboard["panels"]:
        position = panel["gridPos"]
        assert position["x"] + position["w"] <= 24, panel["title"]
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}" and target["refId"]


@pytest.mark.parametrize("path", ["prometheus/prometheus.yml", "prometheus/compose-prometheus.yml"])
def test_the_scrape_configs_load_the_rules_and_reach_every_service(path: str) -> None:
    scrape = yaml.safe_load((DEPLOY / path).read_text())
    assert scrape["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"] for job in scrape["scrape_configs"]}
    assert jobs == {"skewless-serve", "skewless-stream", "skewless-schedule"}


def test_the_services_run_skewless_commands_that_exist() -> None:
    commands = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert [unit.stem for unit in units] == [
        "skewless-schedule",
        "skewless-serve",
        "skewless-stream",
    ]
    for unit in units:
        parsed = configparser.ConfigParser(strict=False, interpolation=None)
        parsed.read_string(unit.read_text())
        service = parsed["Service"]
        argv = shlex.split(service["ExecStart"])
        assert Path(argv[0]).name == "skewless" and argv[1] in commands, unit
        assert service["EnvironmentFile"] == "/etc/skewless/skewless.env"
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    for name in ("serve", "stream", "schedule"):
        argv = shlex.split(compose["services"][name]["command"])
        assert argv[0] == "skewless" and argv[1] == name and name in commands
    environment = (DEPLOY / "systemd" / "skewless.env").read_text()
    assert "SKEWLESS_HOME=" in environment and "SKEWLESS_ADMIN_TOKEN=" in environment


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    """Prometheus's own checker on the rule file and scrape configs, and its rule unit tests
    (deploy/prometheus/alerts.test.yml): the alerts fire on the series the services export
    and stay silent on healthy ones."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    folder = DEPLOY / "prometheus"
    for command in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "prometheus.yml"],
        ["check", "config", "compose-prometheus.yml"],
        ["test", "rules", "alerts.test.yml"],
    ):
        checked = subprocess.run(
            [promtool, *command], cwd=folder, capture_output=True, text=True, timeout=120
        )
        assert checked.returncode == 0, checked.stdout + checked.stderr


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    """Each panel's PromQL, with Grafana's $__rate_interval filled in, as recording rules that
    promtool checks: a query Prometheus would refuse fails here."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus)")
    dashboard = json.loads((DEPLOY / "grafana" / "skewless.json").read_text())
    queries = [
        target["expr"].replace("$__rate_interval", "1m")
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
    ]
    rules = [{"record": f"dashboard:query_{i}", "expr": q} for i, q in enumerate(queries)]
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    checked = subprocess.run(
        [promtool, "check", "rules", "dashboard.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"{len(queries)} rules found" in checked.stdout
