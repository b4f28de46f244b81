"""Where each store lives: the URL the config gives, else a SQLite file under SKEWLESS_HOME.

One place for the rule, so that servers, monitoring and training find the same stores without
importing each other.
"""

from __future__ import annotations

from pathlib import Path

from skewless.core.config import SkewlessConfig


def embedded_sqlite(home: Path, file: str) -> str:
    """The embedded store ``file`` under the home (which is created)."""
    home.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{home / file}"


def tracking_uri(config: SkewlessConfig, home: Path) -> str:
    """``tracking.uri`` (settable as SKEWLESS__TRACKING__URI), else SQLite under the home.

    MLFLOW_TRACKING_URI is deliberately not read: mlflow.set_tracking_uri rewrites it, so within
    one process it would point at whichever store was used last.
    """
    return config.tracking.uri or embedded_sqlite(home, "mlflow.db")


def tuning_storage(config: SkewlessConfig, home: Path) -> str:
    """``tuning.storage``, else SQLite under the home: Optuna's studies."""
    return config.tuning.storage or embedded_sqlite(home, "optuna.db")


def request_log_url(config: SkewlessConfig, home: Path) -> str:
    """``monitoring.request_log.url``, else SQLite under the home: the request and alert logs."""
    return config.monitoring.request_log.url or embedded_sqlite(home, "monitoring.db")
