"""Prometheus alerting rules that mirror a config's ``monitoring.rules``, and the operational
alerts of servers, the stream consumer and scheduled jobs.

``monitoring.rules`` are judged two ways: ``skewless monitor`` reads the request log, and these
rules read the live metrics. Latency and the entity error rate come straight from the servers'
metrics; drift, accuracy and coverage need the request log and the training reference, so their
rules watch the alerts gauge a scheduled monitor job sets (``skewless_monitor_alerts``). A rule
that is null in the config is left out. ``deploy/prometheus/alerts.yml`` is this module's output
for the shipped config::

    python -m skewless.operations.alert_rules configs/etth.yaml > deploy/prometheus/alerts.yml
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from skewless.core.config import SkewlessConfig, load_config

# How far back rates look, and how long a condition holds before it pages.
WINDOW = "15m"
HOLD = "10m"
_FORECASTS = 'endpoint=~"/predict.*"'


def _rule(
    name: str, expr: str, summary: str, severity: str = "warning", hold: str = HOLD
) -> dict[str, Any]:
    return {
        "alert": name,
        "expr": expr,
        "for": hold,
        "labels": {"severity": severity, "service": "skewless"},
        "annotations": {"summary": summary},
    }


def monitoring_rules(config: SkewlessConfig) -> list[dict[str, Any]]:
    """The rules of ``monitoring.rules`` over live metrics (silent below ``min_samples``)."""
    rules, least = config.monitoring.rules, config.monitoring.rules.min_samples
    made = []
    if rules.latency_p99_ms is not None:
        requests = f"sum(increase(skewless_request_seconds_count{{{_FORECASTS}}}[{WINDOW}]))"
        made.append(
            _rule(
                "SkewlessLatencyP99High",
                f"histogram_quantile(0.99, sum by (le) (rate(skewless_request_seconds_bucket"
                f"{{{_FORECASTS}}}[{WINDOW}]))) > {rules.latency_p99_ms / 1000:g} "
                f"and {requests} >= {least}",
                f"p99 forecast latency above {rules.latency_p99_ms:g} ms "
                "(monitoring.rules.latency_p99_ms)",
            )
        )
    if rules.error_rate is not None:
        entities = f"sum(increase(skewless_request_entities_sum[{WINDOW}]))"
        made.append(
            _rule(
                "SkewlessEntityErrorRateHigh",
                f'sum(increase(skewless_errors_total{{scope="entity"}}[{WINDOW}])) / {entities} '
                f"> {rules.error_rate:g} and {entities} >= {least}",
                f"over {rules.error_rate:.0%} of requested entities answered with an error "
                "(monitoring.rules.error_rate)",
            )
        )
    assessed = {
        "drift_psi": (rules.drift_psi, "input drift (PSI) above monitoring.rules.drift_psi"),
        "drift_ks": (rules.drift_ks, "input drift (KS) above monitoring.rules.drift_ks"),
        "accuracy": (
            rules.accuracy_factor,
            "live error above the backtest's times monitoring.rules.accuracy_factor",
        ),
        "coverage": (
            rules.coverage_margin,
            "interval coverage below nominal by more than monitoring.rules.coverage_margin",
        ),
    }
    for rule, (threshold, summary) in assessed.items():
        if threshold is not None:
            title = "".join(part.title() for part in rule.split("_"))
            made.append(
                _rule(
                    f"SkewlessMonitor{title}",
                    f'skewless_monitor_alerts{{rule="{rule}"}} > 0',
                    f"{summary} (the last scheduled monitor run)",
                    hold="0m",
                )
            )
    return made


def operational_rules() -> list[dict[str, Any]]:
    """Servers, stream consumer and scheduler: errors, outages, failing jobs."""
    return [
        _rule(
            "SkewlessServerErrors",
            f'sum(rate(skewless_requests_total{{status=~"5.."}}[{WINDOW}])) '
            f"/ sum(rate(skewless_requests_total[{WINDOW}])) > 0.01",
            "over 1% of requests answered 5xx (store down, overloaded, registry unreachable)",
            severity="critical",
        ),
        _rule(
            "SkewlessModelReloadFailing",
            f'increase(skewless_model_reloads_total{{outcome=~"failed|refused"}}[{WINDOW}]) > 0',
            "a server could not load the version its alias points at; the old one serves",
        ),
        _rule(
            "SkewlessRequestLogLosing",
            f'increase(skewless_request_log_records_total{{outcome=~"failed|dropped"}}[{WINDOW}])'
            " > 0",
            "the request log is losing records: monitoring misses those forecasts",
        ),
        _rule(
            "SkewlessPushRefused",
            f'increase(skewless_pushed_rows_total{{outcome="refused"}}[{WINDOW}]) > 0',
            "rows sent to POST /push were refused by validation",
            hold="0m",
        ),
        _rule(
            "SkewlessStreamDeadLetters",
            f"increase(skewless_stream_dead_letter_rows_total[{WINDOW}]) > 0",
            "the stream consumer sent rows to the dead-letter subject",
            hold="0m",
        ),
        _rule(
            "SkewlessStreamLagGrowing",
            f"skewless_stream_consumer_lag_messages > 1000 and "
            f"deriv(skewless_stream_consumer_lag_messages[{WINDOW}]) > 0",
            "the stream consumer falls behind the broker",
        ),
        _rule(
            "SkewlessStreamWritesFailing",
            f"increase(skewless_stream_write_failures_total[{WINDOW}]) > 0",
            "micro-batches fail to reach the stores and are being retried",
            severity="critical",
        ),
        _rule(
            "SkewlessJobFailed",
            'increase(skewless_job_runs_total{outcome="failed"}[1h]) > 0',
            "a scheduled job failed every attempt",
            severity="critical",
            hold="0m",
        ),
        _rule(
            "SkewlessJobSkippedOrMissed",
            'increase(skewless_job_runs_total{outcome=~"skipped|missed"}[6h]) > 0',
            "a scheduled job was skipped (its previous run still ran) or missed its grace",
            hold="0m",
        ),
        _rule(
            "SkewlessJobRunningLong",
            "max by (job_name) (skewless_job_running) > 0 and "
            "max by (job_name) (time() - skewless_job_next_run_timestamp_seconds) > 0",
            "a scheduled job is still running past its next cron time",
        ),
        _rule(
            "SkewlessTargetDown",
            'up{job=~"skewless.*"} == 0',
            "a skewless server, stream consumer or scheduler does not answer its /metrics",
            severity="critical",
            hold="2m",
        ),
    ]


def prometheus_rules(config: SkewlessConfig) -> dict[str, Any]:
    """The rule file: one group mirroring ``monitoring.rules``, one of operations."""
    return {
        "groups": [
            {"name": "skewless-monitoring-rules", "rules": monitoring_rules(config)},
            {"name": "skewless-operations", "rules": operational_rules()},
        ]
    }


def render(config: SkewlessConfig) -> str:
    header = (
        f"# Prometheus alerting rules generated from {config.name}'s monitoring.rules by\n"
        "# python -m skewless.operations.alert_rules CONFIG (docs/operations.md); regenerate\n"
        "# them when the rules change.\n"
    )
    return header + yaml.safe_dump(prometheus_rules(config), sort_keys=False, width=100)


if __name__ == "__main__":  # pragma: no cover - a command line
    sys.stdout.write(render(load_config(sys.argv[1])))
