"""``skewless monitor``: assess the recent period, raise alerts, and optionally retrain.

``assess`` only reads (the report uses it too); ``monitor`` adds the side effects: the alert
log, the webhook, and with ``retrain`` a new registered version, staged when the config allows
and its backtest beats production's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd

from skewless.bundle.bundle import ForecastBundle
from skewless.core.config import SkewlessConfig
from skewless.core.errors import RegistryError
from skewless.core.monitoring_db import monitoring_engine
from skewless.core.stores import request_log_url, tracking_uri
from skewless.monitoring.accuracy import accuracy_by, daily_error, versus_backtest
from skewless.monitoring.alerts import Alert, AlertLog, evaluate, post_webhook
from skewless.monitoring.drift import drift_table, entity_drift_table
from skewless.monitoring.observations import VERSION, Observations, observe, training_rows
from skewless.registry.registry import PROMOTABLE, ModelRegistry, VersionInfo
from skewless.training.pipeline import open_history
from skewless.training.release import train_and_register

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Assessment:
    version: int  # the version whose reference statistics the drift is measured against
    observations: Observations
    drift: pd.DataFrame  # per variable, against the version's pooled reference
    entity_drift: pd.DataFrame  # per served entity and variable, against its own training rows
    accuracy: pd.DataFrame  # per version, live against backtest
    daily: pd.DataFrame  # per day, version and entity
    versions: list[VersionInfo]
    alias_history: dict[str, list[int]]  # staging / production: the versions each pointed at
    alerts: list[Alert]


@dataclass(frozen=True)
class Retraining:
    version: int
    metric: str
    score: float | None
    production_score: float | None
    staged: bool


@dataclass(frozen=True)
class MonitorResult:
    assessment: Assessment
    webhook_error: str | None = None
    retraining: Retraining | None = None


def assess(config: SkewlessConfig, home: Path, until: datetime | None = None) -> Assessment:
    """Drift, accuracy and the alert rules over ``monitoring.period`` up to ``until``."""
    registry = ModelRegistry(tracking_uri(config, home))
    name = config.model_name
    version = registry.version_of(name, config.serving.alias)
    bundle = registry.load_bundle(name, version)
    observations = observe(config, home, bundle.spec.lookback, until)
    served_versions = observations.forecasts[VERSION]
    if not served_versions.empty and int(served_versions.iloc[-1]) != version:
        version = int(served_versions.iloc[-1])  # judge inputs by the version that read them
        bundle = registry.load_bundle(name, version)
    versions = registry.versions(name)
    backtest = {v.version: v.metrics for v in versions}
    drift = drift_table(bundle.reference, observations.inputs)
    entity_drift = _entity_drift(config, home, bundle, observations.inputs)
    accuracy = versus_backtest(
        accuracy_by(observations.outcomes, observations.levels, [VERSION]), backtest
    )
    alerts = evaluate(config.monitoring.rules, drift, entity_drift, accuracy, observations.served)
    daily = daily_error(observations.outcomes, observations.levels)
    history = {alias: registry.history(name, alias) for alias in PROMOTABLE}
    return Assessment(
        version, observations, drift, entity_drift, accuracy, daily, versions, history, alerts
    )


def _entity_drift(
    config: SkewlessConfig, home: Path, bundle: ForecastBundle, inputs: pd.DataFrame
) -> pd.DataFrame:
    """Each served entity's drift against its own training rows, taken as the version took its
    pooled reference (each entity's last ``monitoring.reference_periods`` rows of the version's
    config, up to its ``trained_until``): the bundle keeps only the pooled percentiles, and
    entities that differ from each other would all look drifted against those."""
    key = config.data.entity_key
    entities = inputs[key].unique().tolist() if len(inputs) else []
    trained = bundle.metadata.get("config", {}).get("monitoring", {})
    periods = trained.get("reference_periods", config.monitoring.reference_periods)
    until = bundle.metadata.get("trained_until")
    cutoff = None if until is None else pd.Timestamp(until).to_pydatetime()
    rows = training_rows(config, home, entities, cutoff, periods)
    return entity_drift_table(rows, inputs, key, list(bundle.reference))


def monitor(
    config: SkewlessConfig, home: Path, retrain: bool = False, until: datetime | None = None
) -> MonitorResult:
    """Assess, log and send the alerts; on an alert with ``retrain``, train a new version."""
    assessment = assess(config, home, until)
    alerts = assessment.alerts
    if not alerts:
        return MonitorResult(assessment)
    AlertLog(monitoring_engine(request_log_url(config, home))).append(config.name, alerts)
    webhook = config.monitoring.webhook
    webhook_error = post_webhook(webhook, config.name, alerts) if webhook else None
    retraining = _retrain(config, home) if retrain else None
    return MonitorResult(assessment, webhook_error, retraining)


def _retrain(config: SkewlessConfig, home: Path) -> Retraining:
    """Train on all history now in the offline store and register the version (``latest``);
    stage it when ``monitoring.retrain.promote_staging`` and it beats production's backtest."""
    release = train_and_register(config, open_history(config, home), home)
    registry = ModelRegistry(tracking_uri(config, home))
    metric = config.tuning.metric
    score = release.report.overall.overall.get(metric)
    production = _score(registry, config.model_name, "production", metric)
    better = score is not None and (production is None or score < production)
    staged = config.monitoring.retrain.promote_staging and better
    if staged:
        registry.promote(config.model_name, release.version, "staging", metric, force=True)
    logger.info(
        "retrained: version %d, %s %s (production %s)", release.version, metric, score, production
    )
    return Retraining(release.version, metric, score, production, staged)


def _score(registry: ModelRegistry, name: str, alias: str, metric: str) -> float | None:
    try:
        version = registry.version_of(name, alias)
    except RegistryError:
        return None
    info = {v.version: v.metrics for v in registry.versions(name)}
    value = info.get(version, {}).get(metric)
    return None if value is None else float(value)
