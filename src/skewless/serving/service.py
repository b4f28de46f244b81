"""``ForecastService``: online windows → bundle → response items, with no web framework inside.

``ServiceCore`` holds what every server shares: request checks, per-entity error isolation, the
response items, and model versions. ``ForecastService`` runs the stages in-process (the FastAPI
server); the Ray Serve server runs the same core with the stages in separate deployments.

It holds one loaded model version at a time, as one immutable object:
a request takes the current one when it starts and finishes on it, and a reload swaps the
reference only after the new version loaded, so a failed load leaves the old one serving.
"""

from __future__ import annotations

import logging
import threading
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.bundle.bundle import FORECAST, TARGET, ForecastBundle
from skewless.core.config import SkewlessConfig
from skewless.core.errors import DataValidationError, RequestError, SkewlessError
from skewless.core.frequency import parse_frequency
from skewless.features.facade import parse_time_point
from skewless.features.online import WindowReader, window_reader
from skewless.features.repo import FeastRepo
from skewless.features.strategies import OnlineRetrievalStrategy
from skewless.features.validation import EVENT_TS
from skewless.registry.registry import ModelRegistry
from skewless.training.tracking import tracking_uri

logger = logging.getLogger(__name__)

Item = dict[str, Any]
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class LoadedModel:
    name: str
    alias: str
    version: int
    bundle: ForecastBundle
    metrics: dict[str, float] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "alias": self.alias}


class ServiceCore(ABC):
    """Everything but where the stages run: fetching windows and predicting are abstract."""

    def __init__(self, config: SkewlessConfig, home: Path, alias: str | None = None) -> None:
        self.config = config
        self.home = home
        self.alias = alias or config.serving.alias
        self.registry = ModelRegistry(tracking_uri(config, home))
        self.last_reload_error: str | None = None
        self._reload_lock = threading.Lock()
        self.current = self._load(self.registry.version_of(config.model_name, self.alias))

    @abstractmethod
    def feature_store_ready(self) -> bool:
        """Raise if the online store does not answer."""

    @abstractmethod
    def _fetch(
        self, entities: list[Any], point: datetime | None, lookback: int
    ) -> tuple[dict[Any, pd.DataFrame], dict[Any, SkewlessError]]:
        """Each entity's last ``lookback`` online rows at the time point, or its problem."""

    @abstractmethod
    def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> pd.DataFrame:
        """``model.bundle.predict(rows)``, wherever its stages run."""

    # -- model versions ------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Load the version the alias points at now, if it moved; True when it swapped."""
        with self._reload_lock:
            try:
                version = self.registry.version_of(self.config.model_name, self.alias)
                if version == self.current.version:
                    self.last_reload_error = None
                    return False
                loaded = self._load(version)
            except Exception as exc:  # whatever failed, the old version keeps serving
                self.last_reload_error = f"{type(exc).__name__}: {exc}"
                logger.error("reload of %s@%s failed: %s", self.config.model_name, self.alias, exc)
                raise
            self.current, self.last_reload_error = loaded, None
            logger.info("now serving %s version %d", loaded.name, loaded.version)
            return True

    def _load(self, version: int) -> LoadedModel:
        return load_model(self.registry, self.config.model_name, self.alias, version)

    # -- forecasts -----------------------------------------------------------------------------

    def predict_rows(self, rows: pd.DataFrame) -> tuple[LoadedModel, list[Item]]:
        """Forecasts after each entity's last row; bad rows raise for the whole request."""
        model = self.current
        frame = self._predict(model, rows)
        return model, [
            _item(entity, part) for entity, part in frame.groupby(_key(model), sort=False)
        ]

    def predict_entities(
        self, entities: Sequence[Any], time_point: str = "now"
    ) -> tuple[LoadedModel, list[Item]]:
        """One item per requested entity, in order: a forecast, or that entity's own error (the
        exception itself, under "error")."""
        model = self.current
        entities = check_entities(self.config, entities)
        point = check_time_point(self.config, time_point)
        frames, problems = self._fetch(
            list(dict.fromkeys(entities)), point, model.bundle.spec.lookback
        )
        results: dict[Any, Item] = {e: {"entity": e, "error": p} for e, p in problems.items()}
        results.update(self._forecast_each(model, frames))
        return model, [results[entity] for entity in entities]

    def _forecast_each(
        self, model: LoadedModel, frames: dict[Any, pd.DataFrame]
    ) -> dict[Any, Item]:
        """All entities in one bundle call; if that is refused, each alone to name who failed."""
        if not frames:
            return {}
        try:
            forecast = self._predict(model, pd.concat(frames.values(), ignore_index=True))
        except DataValidationError:
            items = {}
            for entity, rows in frames.items():
                try:
                    items.update(self._forecast_each(model, {entity: rows}))
                except DataValidationError as exc:
                    items[entity] = {"entity": entity, "error": exc}
            return items
        return {e: _item(e, part) for e, part in forecast.groupby(_key(model), sort=False)}


class ForecastService(ServiceCore):
    """Every stage in this process: the FastAPI server."""

    def __init__(self, config: SkewlessConfig, home: Path, alias: str | None = None) -> None:
        super().__init__(config, home, alias)
        self.windows = OnlineWindowFetcher(config, home)

    def feature_store_ready(self) -> bool:
        return self.windows.ready()

    def _fetch(
        self, entities: list[Any], point: datetime | None, lookback: int
    ) -> tuple[dict[Any, pd.DataFrame], dict[Any, SkewlessError]]:
        return self.windows.fetch(entities, point, lookback)

    def _predict(self, model: LoadedModel, rows: pd.DataFrame) -> pd.DataFrame:
        return model.bundle.predict(rows)


class OnlineWindowFetcher:
    """Online windows of many entities with one call, as raw rows; keeps its reader warm."""

    def __init__(self, config: SkewlessConfig, home: Path) -> None:
        self.repo = FeastRepo(config, home)
        self._reader: WindowReader = window_reader(self.repo)
        self.ready()  # the first online call is slow: pay it before traffic

    def ready(self) -> bool:
        """One online read of an id no entity has: proves the online store answers."""
        string_ids = self.repo.config.data.entity_type == "string"
        self._reader.read(["__readiness_probe__" if string_ids else -1])
        return True

    def fetch(
        self, entities: list[Any], point: datetime | None, lookback: int
    ) -> tuple[dict[Any, pd.DataFrame], dict[Any, SkewlessError]]:
        strategy = OnlineRetrievalStrategy(self.repo, point, reader=self._reader)
        windows = strategy.retrieve(entities)
        key = self.repo.config.data.entity_key
        frames = {e: w.to_frame(key).tail(lookback) for e, w in windows.windows.items()}
        return frames, windows.problems


def load_model(registry: ModelRegistry, name: str, alias: str, version: int) -> LoadedModel:
    """One registered version, loaded whole, with its backtest metrics."""
    model = registry.load_version(name, version)
    metrics = next(v.metrics for v in registry.versions(name) if v.version == version)
    return LoadedModel(name, alias, version, model.unwrap_python_model().bundle, metrics)


def check_entities(config: SkewlessConfig, entities: Sequence[Any]) -> list[Any]:
    """The requested ids, or a RequestError: none, too many, or of the wrong type."""
    cap = config.serving.max_entities
    if not entities:
        raise RequestError("name at least one entity")
    if len(entities) > cap:
        raise RequestError(
            f"{len(entities)} entities requested; at most {cap} per request (serving.max_entities)"
        )
    if config.data.entity_type == "int64":
        wrong = [
            e
            for e in entities
            if isinstance(e, bool) or not isinstance(e, int) or not _INT64_MIN <= e <= _INT64_MAX
        ]
        if wrong:
            raise RequestError(
                f"entity ids must be 64-bit integers (data.entity_type is int64); got {wrong[:5]}"
            )
    return list(entities)


def check_time_point(config: SkewlessConfig, time_point: str) -> datetime | None:
    """The UTC time point, or a RequestError: not a timestamp, or in the future."""
    try:
        point = parse_time_point(time_point, config.data.timezone)
    except SkewlessError as exc:
        raise RequestError(str(exc)) from None
    if point is not None and point > datetime.now(UTC) + parse_frequency(config.data.frequency):
        raise RequestError(
            f"time_point {point.isoformat()} is in the future; forecasts start from data "
            "that exists, so use 'now' or a past timestamp"
        )
    return point


def _key(model: LoadedModel) -> str:
    return model.bundle.spec.entity_key


def _item(entity: Any, forecast: pd.DataFrame) -> Item:
    """One entity's forecast frame as the response item: values keyed by target (and level)."""
    entity = entity.item() if isinstance(entity, np.generic) else entity
    by_target = {t: part for t, part in forecast.groupby(TARGET, sort=False)}
    first = next(iter(by_target.values()))
    levels = [c.removeprefix("lower_") for c in forecast.columns if c.startswith("lower_")]
    return {
        "entity": entity,
        "timestamps": [t.isoformat() for t in pd.DatetimeIndex(first[EVENT_TS])],
        FORECAST: {t: part[FORECAST].tolist() for t, part in by_target.items()},
        "lower": {
            t: {lv: part[f"lower_{lv}"].tolist() for lv in levels} for t, part in by_target.items()
        },
        "upper": {
            t: {lv: part[f"upper_{lv}"].tolist() for lv in levels} for t, part in by_target.items()
        },
    }
