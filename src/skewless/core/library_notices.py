"""Library notices that tell a skewless user nothing they can act on, kept off the terminal:
MLflow's SQLAlchemy deprecation warnings (SADeprecationWarning), its CloudPickle version note and
"Creating initial MLflow database tables", and database-migration INFO lines (alembic).

Used by the CLI for every verb and by the Ray Serve replicas that load models (their output
reaches the terminal of ``skewless serve --engine ray`` too).
"""

from __future__ import annotations

import logging
import os
import warnings

# MLflow configures its own loggers when it is imported, at this level.
_MLFLOW_LEVEL_ENV = "MLFLOW_LOGGING_LEVEL"


def quiet_library_notices() -> None:
    """Silence those notices: before MLflow is imported (through MLflow's own setting, which a
    local Ray cluster's workers inherit) and after (through its loggers). After importing
    Feast, call ``quiet_feast_deprecations`` too."""
    level = os.environ.setdefault(_MLFLOW_LEVEL_ENV, "ERROR")  # unless the user chose one
    logging.getLogger("mlflow").setLevel(level.upper())
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # SADeprecationWarning is a DeprecationWarning raised on MLflow's lines.
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"mlflow(\..*)?")


def quiet_feast_deprecations() -> None:
    """Call after importing Feast, which puts DeprecationWarnings back on ("once", ahead of the
    filters above); the ones that then surface are noise from its dependencies and from MLflow's
    SQLAlchemy calls (STACK.md)."""
    warnings.filterwarnings("ignore", category=DeprecationWarning)
