"""The skew check: the same (entity, time) forecast from offline and from online inputs.

For each sampled pair, the serving input is built twice, from the offline store (point-in-time
history) and from the online store's window cut at that time, and both go through the registered
bundle. Any difference means training and serving see different data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig
from skewless.core.schema import EVENT_TS
from skewless.core.stores import tracking_uri
from skewless.features.facade import FeatureStoreFacade
from skewless.registry.registry import ModelRegistry


@dataclass(frozen=True)
class PairResult:
    entity: Any
    time: pd.Timestamp
    max_abs_difference: float


@dataclass(frozen=True)
class SkewReport:
    pairs: list[PairResult]

    @property
    def largest(self) -> float:
        return max((p.max_abs_difference for p in self.pairs), default=0.0)

    @property
    def differing(self) -> list[PairResult]:
        return [p for p in self.pairs if p.max_abs_difference != 0]


def verify_skew(
    config: SkewlessConfig, home: Path, alias: str, samples: int, seed: int = 0
) -> SkewReport:
    """Forecast ``samples`` random (entity, time) pairs both ways and compare every number."""
    bundle = ModelRegistry(tracking_uri(config, home)).load_bundle(config.model_name, alias)
    online = FeatureStoreFacade(config, "online", home=home)
    offline = FeatureStoreFacade(config, "offline", home=home)
    key, lookback = config.data.entity_key, config.training.lookback
    columns = [key, EVENT_TS, *config.data.window_columns, *config.data.static_columns]
    windows = online.load_features(None, offline.repo.offline.entities()).windows
    # Every time at which an online window holds a full lookback is a candidate (with known
    # covariates, one whose next horizon rows are stored too: they are its plan).
    ahead = config.training.horizon if config.data.known_columns else 0
    candidates = [
        (entity, time)
        for entity, window in windows.items()
        for time in window.timestamps[lookback - 1 : len(window) - ahead]
    ]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(candidates), size=min(samples, len(candidates)), replace=False)
    results = []
    for index in sorted(chosen):
        entity, time = candidates[index]
        served = windows[entity].until(time).to_frame(key).tail(lookback)
        history = offline.load_features(time, [entity])[columns].tail(lookback)
        plan = _known_after(config, offline, entity, time)
        both = [
            bundle.predict(pd.concat([rows, plan], ignore_index=True)) for rows in (served, history)
        ]
        numbers = [frame.select_dtypes("number").to_numpy(np.float64) for frame in both]
        same_steps = both[0][EVENT_TS].equals(both[1][EVENT_TS])
        difference = float(np.max(np.abs(numbers[0] - numbers[1]))) if same_steps else np.inf
        results.append(PairResult(entity, pd.Timestamp(time), difference))
    return SkewReport(results)


def _known_after(
    config: SkewlessConfig, offline: FeatureStoreFacade, entity: Any, time: pd.Timestamp
) -> pd.DataFrame:
    """The plan both inputs get with known-future covariates: the stored values of the next
    ``horizon`` rows (what was known ahead at ``time``), every other variable missing."""
    data = config.data
    if not data.known_columns:
        return pd.DataFrame()
    horizon = config.training.horizon
    end = data.parsed_frequency.shift(pd.DatetimeIndex([time]), horizon)[0]
    later = offline.repo.offline.history([entity], time + pd.Timedelta(1, "ns"), end)
    columns = [data.entity_key, EVENT_TS, *data.window_columns, *data.static_columns]
    unknown = [c for c in data.variables if c not in data.known_columns]
    return later.reindex(columns=columns).assign(**{c: np.nan for c in unknown})
