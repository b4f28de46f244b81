"""Alert rules from ``monitoring.rules``, the alert log, and the webhook.

Every rule reads the monitoring period's observations and stays silent below
``rules.min_samples`` observations, so a quiet hour never pages anyone. Raised alerts are
appended to the ``alerts`` table beside the request log (``monitoring_engine`` creates both)
and POSTed as JSON to ``monitoring.webhook``.

A drift alert fires on a variable's pooled drift and names the entities whose own drift of it
crosses the same threshold. An entity crossing alone does not fire: each entity's reference is
its recent past, which a single series leaves with its own seasons, so in a fleet of thousands
some entity always would.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import numpy as np
import pandas as pd
from sqlalchemy import insert
from sqlalchemy.engine import Engine

from skewless.core.config import AlertRules
from skewless.core.monitoring_db import ALERTS
from skewless.monitoring.observations import ENTITY, VERSION
from skewless.monitoring.store import read_since

logger = logging.getLogger(__name__)

ENTITIES_NAMED = 10  # a drift alert names at most this many entities, and counts the rest


@dataclass(frozen=True)
class Alert:
    rule: str  # drift_psi | drift_ks | accuracy | coverage | latency_p99 | error_rate
    subject: str  # the variable, the model version, or "server"
    value: float
    threshold: float
    message: str
    entities: tuple[str, ...] = ()  # drift: the entities that moved most


def evaluate(
    rules: AlertRules,
    drift: pd.DataFrame,
    entity_drift: pd.DataFrame,
    accuracy: pd.DataFrame,
    served: pd.DataFrame,
) -> list[Alert]:
    """Every rule that fires on the period's drift tables (per variable, per entity and
    variable), accuracy-versus-backtest table and request log rows."""
    return [
        *_drift_alerts(rules, drift, entity_drift),
        *_accuracy_alerts(rules, accuracy),
        *_coverage_alerts(rules, accuracy),
        *_serving_alerts(rules, served),
    ]


def _drift_alerts(
    rules: AlertRules, drift: pd.DataFrame, entity_drift: pd.DataFrame
) -> list[Alert]:
    alerts = []
    for row in drift[drift["count"] >= rules.min_samples].to_dict("records"):
        for statistic, threshold in (("psi", rules.drift_psi), ("ks", rules.drift_ks)):
            if threshold is not None and row[statistic] > threshold:
                moved = _moved(entity_drift, row["variable"], statistic, threshold, rules)
                alerts.append(
                    Alert(
                        f"drift_{statistic}",
                        row["variable"],
                        row[statistic],
                        threshold,
                        f"'{row['variable']}' drifted: {statistic.upper()} {row[statistic]:.3f} "
                        f"over {row['count']} served rows (threshold {threshold}); served mean "
                        f"{row['mean']:.4g}, training mean {row['training_mean']:.4g}"
                        + _naming(moved),
                        tuple(moved[:ENTITIES_NAMED]),
                    )
                )
    return alerts


def _moved(
    entity_drift: pd.DataFrame,
    variable: str,
    statistic: str,
    threshold: float,
    rules: AlertRules,
) -> list[str]:
    """The entities whose own ``statistic`` of ``variable`` crosses ``threshold``, on enough
    rows to judge, most moved first."""
    crossing = entity_drift[
        (entity_drift["variable"] == variable)
        & (entity_drift["count"] >= rules.min_samples)
        & (entity_drift[statistic] > threshold)
    ]
    return [str(e) for e in crossing.sort_values(statistic, ascending=False)[ENTITY]]


def _naming(moved: list[str]) -> str:
    if not moved:
        return "; no entity crosses the threshold on its own"
    more = len(moved) - ENTITIES_NAMED
    return f"; entities that moved: {', '.join(moved[:ENTITIES_NAMED])}" + (
        f" and {more} more" if more > 0 else ""
    )


def _accuracy_alerts(rules: AlertRules, accuracy: pd.DataFrame) -> list[Alert]:
    if rules.accuracy_factor is None:
        return []
    metric, factor, alerts = rules.accuracy_metric, rules.accuracy_factor, []
    judged = accuracy[
        (accuracy["steps"] >= rules.min_samples) & accuracy[f"backtest_{metric}"].notna()
    ]
    for row in judged.to_dict("records"):
        if row[f"{metric}_ratio"] > factor:
            alerts.append(
                Alert(
                    "accuracy",
                    f"version {row[VERSION]}",
                    row[f"{metric}_ratio"],
                    factor,
                    f"version {row[VERSION]}: live {metric.upper()} {row[metric]:.4g} over "
                    f"{row['steps']} forecast steps is {row[f'{metric}_ratio']:.2f}x its backtest "
                    f"{metric.upper()} {row[f'backtest_{metric}']:.4g} (threshold {factor}x)",
                )
            )
    return alerts


def _coverage_alerts(rules: AlertRules, accuracy: pd.DataFrame) -> list[Alert]:
    """Per version and interval level (``coverage_<percent>`` columns), live coverage more than
    ``coverage_margin`` below the level: the intervals no longer mean what they say."""
    levels = [c.removeprefix("coverage_") for c in accuracy.columns if c.startswith("coverage_")]
    if rules.coverage_margin is None or not levels:
        return []
    alerts = []
    for row in accuracy[accuracy["steps"] >= rules.min_samples].to_dict("records"):
        for level in levels:
            floor = float(level) / 100 - rules.coverage_margin
            covered = row[f"coverage_{level}"]
            if covered < floor:
                alerts.append(
                    Alert(
                        "coverage",
                        f"version {row[VERSION]}",
                        covered,
                        floor,
                        f"version {row[VERSION]}: its {level}% intervals held {covered:.1%} of "
                        f"{row['steps']} forecast steps, more than {rules.coverage_margin:.0%} "
                        f"below nominal (threshold {floor:.1%})",
                    )
                )
    return alerts


def _serving_alerts(rules: AlertRules, served: pd.DataFrame) -> list[Alert]:
    alerts = []
    requests = served.drop_duplicates("request_id")
    if rules.latency_p99_ms is not None and len(requests) >= rules.min_samples:
        p99 = float(np.percentile(requests["latency_ms"], 99))
        if p99 > rules.latency_p99_ms:
            alerts.append(
                Alert(
                    "latency_p99",
                    "server",
                    p99,
                    rules.latency_p99_ms,
                    f"p99 latency {p99:.1f} ms over {len(requests)} requests "
                    f"(threshold {rules.latency_p99_ms} ms)",
                )
            )
    if rules.error_rate is not None and len(served) >= rules.min_samples:
        rate = float(served["error"].notna().mean())
        if rate > rules.error_rate:
            alerts.append(
                Alert(
                    "error_rate",
                    "server",
                    rate,
                    rules.error_rate,
                    f"{rate:.1%} of {len(served)} requested entities got an error instead of a "
                    f"forecast (threshold {rules.error_rate:.1%})",
                )
            )
    return alerts


class AlertLog:
    """The ``alerts`` table in the monitoring database."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, config_name: str, alerts: list[Alert]) -> None:
        if not alerts:
            return
        raised_at = datetime.now(UTC).replace(tzinfo=None)
        rows = [{"raised_at": raised_at, "config": config_name, **_stored(a)} for a in alerts]
        with self.engine.begin() as connection:
            connection.execute(insert(ALERTS), rows)

    def read(self, since: datetime | None = None) -> pd.DataFrame:
        return read_since(self.engine, ALERTS, ALERTS.c.raised_at, since)


def _stored(alert: Alert) -> dict[str, Any]:
    """The alert's columns of the table; the entities it names are in its message."""
    fields = asdict(alert)
    del fields["entities"]
    return fields


def post_webhook(url: str, config_name: str, alerts: list[Alert]) -> str | None:
    """POST the alerts as JSON; the problem, if the receiver could not be reached or refused."""
    payload = {"config": config_name, "alerts": [asdict(a) for a in alerts]}
    try:
        httpx.post(url, json=payload, timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        logger.error("alert webhook %s failed: %s", url, exc)
        return f"{type(exc).__name__}: {exc}"
    return None
