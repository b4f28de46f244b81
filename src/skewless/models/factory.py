"""Models by name, with their parameters checked before any work starts."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from skewless.core.errors import ConfigError
from skewless.models.base import Forecaster
from skewless.models.hybrid import Hybrid
from skewless.models.naive import NaiveForecaster
from skewless.models.nlinear import NLinear
from skewless.models.tft import TemporalFusionTransformer
from skewless.models.xgboost import XGBoostForecaster

MODELS: dict[str, Callable[..., Forecaster]] = {
    "naive": NaiveForecaster,
    "nlinear": NLinear,
    "xgboost": XGBoostForecaster,
    "tft": TemporalFusionTransformer,
    "hybrid": Hybrid,
}


def create_model(name: str, horizon: int, params: dict[str, Any]) -> Forecaster:
    """An unfitted forecaster; unknown names and parameters are refused with what exists."""
    if name not in MODELS:
        raise ConfigError(f"training.model: unknown model '{name}'; available: {sorted(MODELS)}")
    factory = MODELS[name]
    allowed = [p for p in inspect.signature(factory).parameters if p != "horizon"]
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ConfigError(
            f"training.params: {unknown} are not parameters of '{name}'; allowed: {allowed}"
        )
    try:
        model = factory(horizon=horizon, **params)
        model.validate_params()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training.params for '{name}': {exc}") from exc
    return model
