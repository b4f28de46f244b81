"""One call for every consumer of features: ``FeatureStoreFacade(config, mode).load_features``.

The mode fixes what ``load_features`` returns, and the type checker knows it:
``FeatureStoreFacade(config, "online")`` is a ``FeatureStoreFacade[OnlineWindows]``,
``FeatureStoreFacade(config, "offline", ...)`` a ``FeatureStoreFacade[pd.DataFrame]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, overload

import pandas as pd

from skewless.core.config import SkewlessConfig, skewless_home
from skewless.core.time_points import TimePoint, parse_time_point
from skewless.features.repo import FeastRepo
from skewless.features.strategies import DataType, Mode, OnlineWindows, StrategyFactory

Features = TypeVar("Features", OnlineWindows, pd.DataFrame)


class FeatureStoreFacade(Generic[Features]):
    """Hides Feast, the offline table and the window view behind one method."""

    @overload
    def __init__(
        self: FeatureStoreFacade[OnlineWindows],
        config: SkewlessConfig,
        mode: Literal["online"] = ...,
        data_type: Literal["timeseries"] = ...,
        home: Path | None = ...,
    ) -> None: ...

    @overload
    def __init__(
        self: FeatureStoreFacade[pd.DataFrame],
        config: SkewlessConfig,
        mode: Literal["offline"],
        data_type: DataType = ...,
        home: Path | None = ...,
    ) -> None: ...

    def __init__(
        self,
        config: SkewlessConfig,
        mode: Mode = "online",
        data_type: DataType = "timeseries",
        home: Path | None = None,
    ) -> None:
        self.repo = FeastRepo(config, home or skewless_home())
        self.mode, self.data_type = mode, data_type
        self._factory = StrategyFactory(self.repo)

    def load_features(self, time_point: TimePoint, entities: Sequence[Any] | None) -> Features:
        """Features of ``entities`` as of ``time_point``: "now", ISO text or a datetime, or
        "latest" (or None) for the newest data.

        Online mode returns the windows and raises if any entity is unknown, or stale at a time
        point ("latest" takes each entity's newest window whatever its age); offline modes
        return DataFrames ("latest": every stored row; a tabular join needs a time point).
        """
        point = parse_time_point(time_point, self.repo.config.data.timezone)
        result: Features = self._factory.create(self.data_type, self.mode, point).retrieve(entities)
        if isinstance(result, OnlineWindows):
            result.raise_problems(self.repo.config.data.entity_key)
        return result
