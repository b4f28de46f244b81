"""The stateful preprocessor: fitted on training rows only, then applied unchanged everywhere.

Input is rows exactly as ingestion stores them (entity, event_timestamp, raw variables, optional
categorical columns, and the entity's static covariates when configured). Output is model-ready
float32 columns in a fixed order: targets, covariates, categorical codes, calendar features, then
the static channels (numbers, then label codes), last so a model can find them. The steps:

1. impute: forward fill within each entity (up to a limit), then the training mean or median;
2. scale: standard, robust or min-max, globally or per entity (entities unseen in training use
   the global statistics);
3. encode categoricals as integer codes (0 = unseen in training, or an error);
4. add the calendar features with the same function ingestion uses;
5. static numbers: a missing one is the training mean, then standardised over all training
   rows (never per entity: within an entity a static number does not vary).

It follows scikit-learn's contract: the constructor stores the config, ``fit`` learns attributes
ending in ``_``, ``transform`` never mutates. It pickles, which is how the bundle stores it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from skewless.compute.batches import Batches, InMemory
from skewless.core.calendar import engineer, engineered_columns
from skewless.core.config import SkewlessConfig
from skewless.core.errors import DataValidationError, NotFittedError
from skewless.core.schema import EVENT_TS
from skewless.preprocessing.running_stats import Moments, RowSample, batch_seed
from skewless.preprocessing.windows import FutureInputs

_UNSEEN = 0


@dataclass(frozen=True)
class ScaleStats:
    """Per column: scaled = (raw - center) / scale."""

    center: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray, method: str) -> ScaleStats:
        if method == "standard":
            center, scale = np.nanmean(values, axis=0), np.nanstd(values, axis=0)
        elif method == "robust":
            q25, center, q75 = np.nanpercentile(values, [25, 50, 75], axis=0)
            scale = q75 - q25
        elif method == "minmax":
            center = np.nanmin(values, axis=0)
            scale = np.nanmax(values, axis=0) - center
        else:  # "none"
            center, scale = np.zeros(values.shape[1]), np.ones(values.shape[1])
        return cls.of(center, scale)

    @classmethod
    def of(cls, center: np.ndarray, scale: np.ndarray) -> ScaleStats:
        """Usable statistics: a missing center is 0, a zero or missing scale is 1."""
        scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
        return cls(np.nan_to_num(center), scale)


@dataclass
class _BatchSummary:
    fills: Moments | RowSample  # for the fill values: mean, or median from a sample
    scales: _ScaleAccumulator | None  # None: the batch has missing values
    categories: dict[str, set[str]]
    statics: Moments  # of the static numbers

    def merge(self, other: _BatchSummary) -> _BatchSummary:
        self.fills.merge(other.fills)  # type: ignore[arg-type]  # both of one kind
        if self.scales is None or other.scales is None:
            self.scales = None
        else:
            self.scales.merge(other.scales)
        for column, seen in other.categories.items():
            self.categories[column] |= seen
        self.statics.merge(other.statics)
        return self


class _ScaleAccumulator:
    """Scaling statistics of imputed rows, batch by batch: global, and per entity."""

    def __init__(self, method: str, columns: int, entity_key: str) -> None:
        self.method, self.entity_key = method, entity_key
        self.moments = Moments(columns)
        self.sample = RowSample(columns) if method == "robust" else None
        self.entities: dict[Any, ScaleStats] = {}

    def add(self, rows: pd.DataFrame, filled: np.ndarray, per_entity: bool) -> None:
        self.moments.add(filled)
        if self.sample is not None:
            self.sample = RowSample(filled.shape[1], seed=batch_seed(rows[self.entity_key]))
            self.sample.add(filled)
        if per_entity:
            for entity, index in rows.groupby(self.entity_key, sort=False).indices.items():
                self.entities[entity] = ScaleStats.fit(filled[index], self.method)

    def merge(self, other: _ScaleAccumulator) -> _ScaleAccumulator:
        self.moments.merge(other.moments)
        if self.sample is not None and other.sample is not None:
            self.sample.merge(other.sample)
        self.entities |= other.entities
        return self

    def result(self) -> tuple[ScaleStats, dict[Any, ScaleStats]]:
        moments = self.moments
        if self.sample is not None:
            overall = ScaleStats.fit(self.sample.rows, self.method)
        elif self.method == "standard":
            overall = ScaleStats.of(moments.means(), moments.stds())
        elif self.method == "minmax":
            low = moments.minima()
            overall = ScaleStats.of(low, moments.maxima() - low)
        else:
            overall = ScaleStats.fit(np.empty((0, len(moments.count))), self.method)
        return overall, self.entities


class Preprocessor:
    """Imputation, scaling, encoding and calendar features, learned from training rows."""

    def __init__(self, config: SkewlessConfig) -> None:
        self.config = config

    @property
    def entity_key(self) -> str:
        return self.config.data.entity_key

    @property
    def numeric_columns(self) -> list[str]:
        return self.config.data.variables

    @property
    def categorical_columns(self) -> list[str]:
        return self.config.data.categorical

    @property
    def static_numeric_columns(self) -> list[str]:
        static = self.config.data.static
        return static.numeric if static else []

    @property
    def static_categorical_columns(self) -> list[str]:
        static = self.config.data.static
        return static.categorical if static else []

    @property
    def static_channels(self) -> int:
        """How many of the last output columns are static covariates."""
        return len(self.static_numeric_columns) + len(self.static_categorical_columns)

    @property
    def output_columns(self) -> list[str]:
        """Model inputs in order; the first ``len(targets)`` are the targets, the last
        ``static_channels`` the static covariates."""
        return [
            *self.numeric_columns,
            *self.categorical_columns,
            *engineered_columns(self.config),
            *self.static_numeric_columns,
            *self.static_categorical_columns,
        ]

    def future_channels(self, reads: FutureInputs) -> tuple[int, ...]:
        """The output channels a model that ``reads`` them sees over the forecast steps: the
        known-future covariates, then (for "known+calendar") the calendar features."""
        if reads == "none":
            return ()
        names = list(self.config.data.known_columns)
        if reads == "known+calendar":
            names += engineered_columns(self.config)
        columns = self.output_columns
        return tuple(columns.index(name) for name in names)

    @property
    def expected_columns(self) -> list[str]:
        """The raw columns ``transform`` needs."""
        return [
            self.entity_key,
            EVENT_TS,
            *self.numeric_columns,
            *self.categorical_columns,
            *self.static_numeric_columns,
            *self.static_categorical_columns,
        ]

    def fit(self, rows: pd.DataFrame) -> Preprocessor:
        return self.fit_batches(InMemory(rows))

    def fit_batches(self, batches: Batches[pd.DataFrame]) -> Preprocessor:
        """Fit on rows in batches of whole entities, equal to fitting on all at once: each
        batch is summarised where it is read, the summaries merge here.

        One walk over the batches, and a second only when values are missing: scaling
        statistics are taken after imputation, whose fill values need every batch first.
        """
        summary = None
        for part in batches.map(self._summarise):
            summary = part if summary is None else summary.merge(part)
        if summary is None:
            raise DataValidationError("cannot fit the preprocessor", ["no training rows"])
        fills = summary.fills
        self.fill_values_ = (
            np.nanmedian(fills.rows, axis=0) if isinstance(fills, RowSample) else fills.means()
        )
        scales = summary.scales
        if scales is None:  # values were missing somewhere: scale the imputed rows
            for part_scales in batches.map(lambda rows: self._scales(rows, self._impute(rows))):
                scales = part_scales if scales is None else scales.merge(part_scales)
        assert scales is not None
        self.global_stats_, self.entity_stats_ = scales.result()
        self.categories_ = {column: sorted(seen) for column, seen in summary.categories.items()}
        statics = summary.statics
        self.static_stats_ = ScaleStats.of(statics.means(), statics.stds())
        self._table = self._build_lookup()
        return self

    def _summarise(self, rows: pd.DataFrame) -> _BatchSummary:
        """What fitting needs of one batch: fill statistics, categories, and scaling
        statistics of the raw values when none is missing (imputation then changes nothing)."""
        self._check_columns(rows)
        values = rows[self.numeric_columns].to_numpy(np.float64)
        fills: Moments | RowSample
        if self.config.preprocessing.imputation.method == "median":
            fills = RowSample(values.shape[1], seed=batch_seed(rows[self.entity_key]))
            fills.add(values)
        else:
            fills = Moments.of(values)
        missing = bool(np.isnan(values).any())
        return _BatchSummary(
            fills=fills,
            scales=None if missing else self._scales(rows, values),
            categories={
                column: set(rows[column].dropna().astype(str).unique())
                for column in [*self.categorical_columns, *self.static_categorical_columns]
            },
            statics=Moments.of(self._static_numbers(rows)),
        )

    def _scales(self, rows: pd.DataFrame, filled: np.ndarray) -> _ScaleAccumulator:
        scaling = self.config.preprocessing.scaling
        scales = _ScaleAccumulator(scaling.method, filled.shape[1], self.entity_key)
        scales.add(rows, filled, scaling.per_entity)
        return scales

    def transform(self, rows: pd.DataFrame) -> pd.DataFrame:
        """Model-ready float32 columns (``output_columns``), index aligned with ``rows``."""
        self._check_fitted()
        self._check_columns(rows)
        center, scale = self._stats_per_row(rows[self.entity_key])
        parts = [((self._impute(rows) - center) / scale).astype(np.float32)]
        parts += [
            self._encode(rows[column], column)[:, None] for column in self.categorical_columns
        ]
        parts.append(engineer(pd.DatetimeIndex(rows[EVENT_TS]), self.config).to_numpy(np.float32))
        if self.static_numeric_columns:
            stats, numbers = self.static_stats_, self._static_numbers(rows)
            filled = np.where(np.isnan(numbers), stats.center, numbers)
            parts.append(((filled - stats.center) / stats.scale).astype(np.float32))
        parts += [
            self._encode(rows[column], column)[:, None]
            for column in self.static_categorical_columns
        ]
        # One block, not a column at a time: serving transforms thousands of rows per request.
        return pd.DataFrame(np.hstack(parts), columns=self.output_columns, index=rows.index)

    def _static_numbers(self, rows: pd.DataFrame) -> np.ndarray:
        return rows[self.static_numeric_columns].to_numpy(np.float64, na_value=np.nan)

    def inverse_transform_targets(self, entities: np.ndarray, scaled: np.ndarray) -> np.ndarray:
        """Targets back in original units; ``scaled`` is (windows, horizon, targets)."""
        self._check_fitted()
        count = len(self.config.data.targets)
        center, scale = self._stats_per_row(pd.Series(entities))
        return scaled * scale[:, None, :count] + center[:, None, :count]

    def _impute(self, rows: pd.DataFrame) -> np.ndarray:
        """The numeric columns as float64, gaps filled; served windows rarely have any."""
        values = rows[self.numeric_columns]
        matrix = values.to_numpy(np.float64)
        if not np.isnan(matrix).any():
            return matrix
        imputation = self.config.preprocessing.imputation
        if imputation.method == "ffill":
            values = values.groupby(rows[self.entity_key].to_numpy(), sort=False).ffill(
                limit=imputation.limit
            )
        fills = dict(zip(self.numeric_columns, self.fill_values_, strict=True))
        return values.fillna(fills).to_numpy(np.float64)

    def _stats_per_row(self, entities: pd.Series) -> tuple[np.ndarray, np.ndarray]:
        """Center and scale for every row: its entity's, or the global ones (the last row)."""
        known, centers, scales = self._table
        codes, distinct = pd.factorize(entities)  # look up each entity once, not each row
        index = known.get_indexer(distinct)[codes] if len(known) else np.full(len(codes), -1)
        return centers[index], scales[index]  # -1 picks the global statistics

    def _build_lookup(self) -> tuple[pd.Index, np.ndarray, np.ndarray]:
        """Entities and their statistics as arrays (a fleet has thousands of entities, and every
        transform and request looks them up).

        Built whole before anyone uses it: a pandas Index fills its hash table on first lookup,
        and two server threads doing that at once see a half-filled table ("Reindexing only
        valid with uniquely valued Index objects" on the first requests after a model swap).
        """
        entities = pd.Index(list(self.entity_stats_))
        entities.get_indexer(entities[:1])  # fills the hash table and its uniqueness flag now
        table = [*self.entity_stats_.values(), self.global_stats_]
        return (
            entities,
            np.stack([s.center for s in table]),
            np.stack([s.scale for s in table]),
        )

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the lookup table: it is rebuilt from the statistics when loaded."""
        return {k: v for k, v in self.__dict__.items() if k != "_table"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        # A config pickled by an older skewless lacks the keys added since (its bundle would
        # fail on the first one read): read again, they take their defaults.
        self.config = SkewlessConfig.model_validate(self.config.model_dump(mode="json"))
        if hasattr(self, "global_stats_"):
            self._table = self._build_lookup()

    def _encode(self, values: pd.Series, column: str) -> np.ndarray:
        known = self.categories_[column]
        codes = pd.Categorical(values.astype("string"), categories=known).codes.astype(np.int64) + 1
        unseen = (codes == _UNSEEN) & values.notna().to_numpy()
        if unseen.any() and self.config.preprocessing.categoricals.unseen == "error":
            raise DataValidationError(
                f"'{column}' has values never seen in training",
                [f"{sorted(set(values[unseen].astype(str)))[:10]}; known: {known[:20]}"],
            )
        return codes.astype(np.float32)

    def _check_fitted(self) -> None:
        if not hasattr(self, "global_stats_"):
            raise NotFittedError("the preprocessor is not fitted yet; call fit on training rows")

    def _check_columns(self, rows: pd.DataFrame) -> None:
        missing = [c for c in self.expected_columns if c not in rows.columns]
        if missing:
            raise DataValidationError(
                "rows cannot be preprocessed:",
                [f"missing column(s) {missing}; expected {self.expected_columns}"],
            )
