"""Whether an online store can feed a model version: its windows are long enough and hold the
variables, static covariates, frequency, time zone and entity key the version was trained on.

Checked when a server loads a version (it keeps the old one otherwise), when a version is
promoted (``--force`` does not override it: such a version would fail every request) and, as
a warning, when a model is trained.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from skewless.core.config import SkewlessConfig


@dataclass(frozen=True)
class Feed:
    """What an online store holds per entity, or what a model version needs of one."""

    entity_key: str
    entity_type: str
    frequency: str
    variables: tuple[str, ...]
    points: int  # the store's window size, or the version's lookback
    # Where naive timestamps and the calendar are read; None: recorded before it was kept.
    timezone: str | None = None
    statics: tuple[str, ...] = ()  # static covariates packed with each window

    @classmethod
    def of_store(cls, config: SkewlessConfig) -> Feed:
        data = config.data
        return cls(
            data.entity_key,
            data.entity_type,
            data.frequency,
            tuple(data.window_columns),
            config.feature_store.window_size,
            data.timezone or "UTC",
            tuple(data.static_columns),
        )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Feed:
        fields = json.loads(text)
        lists = {name: tuple(fields.get(name, ())) for name in ("variables", "statics")}
        return cls(**{**fields, **lists})


def feeding_problems(needed: Feed, store: Feed) -> list[str]:
    """Why ``store`` cannot feed a version that needs ``needed`` (empty: it can)."""
    problems = []
    if needed.points > store.points:
        problems.append(
            f"its lookback of {needed.points} points exceeds the online window of {store.points} "
            f"(feature_store.window_size); raise the window to at least {needed.points} and "
            "materialize again"
        )
    missing = [v for v in needed.variables if v not in store.variables]
    if missing:
        problems.append(f"it reads variable(s) {missing} that the store does not hold")
    missing_statics = [c for c in needed.statics if c not in store.statics]
    if missing_statics:
        problems.append(
            f"it reads static covariate(s) {missing_statics} that the store does not hold "
            "(data.static)"
        )
    if needed.frequency != store.frequency:
        problems.append(
            f"it was trained at frequency {needed.frequency!r}, the store holds {store.frequency!r}"
        )
    if None not in (needed.timezone, store.timezone) and needed.timezone != store.timezone:
        problems.append(
            f"it was trained on the calendar of {needed.timezone}, the store reads its data in "
            f"{store.timezone} (data.timezone): its grid and calendar features would differ"
        )
    if (needed.entity_key, needed.entity_type) != (store.entity_key, store.entity_type):
        problems.append(
            f"its entity key is {needed.entity_key} ({needed.entity_type}), the store's is "
            f"{store.entity_key} ({store.entity_type})"
        )
    return problems
