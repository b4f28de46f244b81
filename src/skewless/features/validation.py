"""Validation of raw rows before anything is written.

Two stages: :func:`parse_rows` turns raw columns into typed ones (entity, UTC timestamp,
float32 variables) and :func:`check_against_history` compares the batch with what the offline
store already holds (duplicates, conflicts, gaps). Both collect every finding instead of stopping
at the first, so one run tells the user everything that is wrong. Row numbers count from 1 at the
first data row of the source.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from skewless.core.config import SkewlessConfig
from skewless.core.errors import DataValidationError
from skewless.core.schema import EVENT_TS

ENTITY_ROW = "row"  # source row number, kept beside the parsed columns for messages
SOURCE_ROW = "__source_row"  # a raw column with each row's number in its source, if read in parts
VALUE_DTYPE = np.float32
_SHOWN_ROWS = 10


@dataclass
class Findings:
    """Everything validation noticed: errors block the write, warnings are reported."""

    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def raise_if_errors(self, what: str) -> None:
        if self.errors:
            raise DataValidationError(f"{what} was refused; nothing was written:", self.errors)


def rows_text(rows: pd.Series | np.ndarray | list[int]) -> str:
    """'rows 3, 8, 9' with a count of the rest, for error messages; a row named twice (a wide
    row melted into several entities) is shown once."""
    values = list(dict.fromkeys(int(r) for r in rows))
    shown = ", ".join(str(r) for r in values[:_SHOWN_ROWS])
    rest = f" and {len(values) - _SHOWN_ROWS} more" if len(values) > _SHOWN_ROWS else ""
    return f"row{'s' if len(values) > 1 else ''} {shown}{rest}"


def parse_rows(raw: pd.DataFrame, config: SkewlessConfig, findings: Findings) -> pd.DataFrame:
    """Typed columns [row, entity, event_timestamp, *variables, *labels]; problems go into
    ``findings``."""
    data = config.data
    required = [data.entity_key, data.timestamp_column, *data.window_columns]
    advice = ". Fix the source or the column names under 'data' in the config"
    rows = source_rows(raw, required, findings, advice)
    if rows is None:
        return pd.DataFrame()
    parsed = pd.DataFrame({ENTITY_ROW: rows})
    parsed[data.entity_key] = parse_entities(raw[data.entity_key], rows, config, findings)
    parsed[EVENT_TS] = parse_timestamps(raw[data.timestamp_column], rows, config, findings)
    for column in data.variables:
        parsed[column] = parse_numbers(raw[column], rows, column, config, findings)
    for column in data.categorical:  # labels as given; a missing one encodes as unseen
        parsed[column] = raw[column].reset_index(drop=True).astype("string")
    return parsed


def source_rows(
    raw: pd.DataFrame, required: list[str], findings: Findings, advice: str = ""
) -> np.ndarray | None:
    """Each row's number in its source (given by a reader that hands out part of it, else its
    position), or None with the reason in ``findings`` when a ``required`` column is missing or
    there is no row."""
    missing = [c for c in required if c not in raw.columns]
    if missing:
        findings.errors.append(
            f"missing column(s) {missing}; the source has "
            f"{[c for c in raw.columns if c != SOURCE_ROW]}{advice}"
        )
        return None
    if raw.empty:
        findings.errors.append("the source has no rows")
        return None
    if SOURCE_ROW in raw.columns:
        return raw[SOURCE_ROW].to_numpy(np.int64)
    return np.arange(1, len(raw) + 1)


def parse_entities(
    values: pd.Series, row_numbers: np.ndarray, config: SkewlessConfig, findings: Findings
) -> pd.Series:
    key = config.data.entity_key
    values = values.reset_index(drop=True)
    null = values.isna()
    if null.any():
        findings.errors.append(
            f"'{key}' is empty at {rows_text(row_numbers[np.flatnonzero(null)])}"
        )
    if config.data.entity_type == "string":
        return values.astype("string")
    numbers = pd.to_numeric(values, errors="coerce")
    whole = numbers.astype("float64")
    flags = values.map(lambda value: isinstance(value, bool | np.bool_)).astype(bool)
    bad = (
        (numbers.isna() & ~null)
        | (numbers.notna() & ((whole % 1 != 0) | (whole.abs() >= 2.0**63)))
        | flags  # true is not entity 1
    )
    if bad.any():
        first = values[bad].iloc[0]
        first = first.item() if isinstance(first, np.generic) else first
        findings.errors.append(
            f"'{key}' must hold 64-bit integers (data.entity_type is int64) but has "
            f"{first!r} at {rows_text(row_numbers[np.flatnonzero(bad)])}"
        )
    return numbers.where(~bad).astype("Int64")


# A time of day followed by a UTC offset or Z: the timestamp carries its own time zone.
_ZONED = r"\d\d:\d\d(?::\d\d(?:[.,]\d+)?)?\s*(?:Z|[+-]\d\d(?::?\d\d)?)$"


def parse_timestamps(
    values: pd.Series, row_numbers: np.ndarray, config: SkewlessConfig, findings: Findings
) -> pd.Series:
    column, zone = config.data.timestamp_column, config.data.timezone
    values = values.reset_index(drop=True)
    parsed = _to_datetime(values)
    if not isinstance(parsed.dtype, pd.DatetimeTZDtype | np.dtypes.DateTime64DType):
        # Offsets differ between rows: fine if every row has one, read as UTC.
        zoned = values.astype("string").str.contains(_ZONED, regex=True, na=False)
        naive = np.flatnonzero(~zoned & values.notna())
        if zoned.any() and len(naive):
            findings.errors.append(
                f"'{column}' mixes timestamps with and without a time zone (without one at "
                f"{rows_text(row_numbers[naive])}, first: {values.iloc[naive[0]]!r}); give "
                "every timestamp a UTC offset, or none and set data.timezone"
            )
            return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        parsed = _to_datetime(values, utc=True)
    unparseable = parsed.isna()
    if unparseable.any():
        first = values[unparseable].iloc[0]
        findings.errors.append(
            f"'{column}' is empty or not a timestamp at "
            f"{rows_text(row_numbers[np.flatnonzero(unparseable)])} "
            f"(first: {first!r}); use ISO 8601 such as 2024-01-31T13:00:00+00:00"
        )
    if parsed.dt.tz is not None:
        return parsed.dt.tz_convert("UTC")
    if zone is None:
        findings.errors.append(
            f"'{column}' has no time zone; add offsets to the timestamps or set "
            "data.timezone (for example 'UTC') so they can be read unambiguously"
        )
        return parsed.dt.tz_localize("UTC")
    localized = parsed.dt.tz_localize(zone, ambiguous="NaT", nonexistent="NaT")
    impossible = localized.isna() & ~unparseable
    if impossible.any():
        findings.errors.append(
            f"'{column}' has times that are ambiguous or do not exist in {zone} "
            f"(daylight-saving changes) at {rows_text(row_numbers[np.flatnonzero(impossible)])}; "
            "store such data with UTC offsets"
        )
    return localized.dt.tz_convert("UTC")


def _to_datetime(values: pd.Series, utc: bool = False) -> pd.Series:
    """Timestamps of any ISO 8601 shape; object dtype when their time zones differ (pandas
    warns of a future error there, and older versions raise: both mean the same)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return pd.to_datetime(values, errors="coerce", utc=utc, format="mixed")
        except (ValueError, TypeError):
            return values.astype(object)


def parse_numbers(
    values: pd.Series,
    row_numbers: np.ndarray,
    column: str,
    config: SkewlessConfig,
    findings: Findings,
) -> pd.Series:
    values = values.reset_index(drop=True)
    numbers = pd.to_numeric(values, errors="coerce")
    not_numeric = numbers.isna() & values.notna()
    if not_numeric.any():
        findings.errors.append(
            f"'{column}' must be numeric but has {values[not_numeric].iloc[0]!r} at "
            f"{rows_text(row_numbers[np.flatnonzero(not_numeric)])}"
        )
    wide = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    infinite = np.isinf(wide)
    if infinite.any():
        findings.errors.append(
            f"'{column}' is infinite at {rows_text(row_numbers[np.flatnonzero(infinite)])}"
        )
    beyond = np.isfinite(wide) & (np.abs(wide) > np.finfo(VALUE_DTYPE).max)
    if beyond.any():  # it would be stored as infinity
        findings.errors.append(
            f"'{column}' has {wide[beyond][0]:g}, beyond what float32 holds, at "
            f"{rows_text(row_numbers[np.flatnonzero(beyond)])}"
        )
    empty = values.isna()
    if empty.any():
        message = (
            f"'{column}' is missing at {rows_text(row_numbers[np.flatnonzero(empty)])} "
            f"({int(empty.sum())} values)"
        )
        if config.validation.on_missing == "error":
            findings.errors.append(message + "; validation.on_missing is 'error'")
        else:
            findings.warnings.append(message + "; they are kept as NaN for the imputer")
    return numbers.mask(beyond).astype(VALUE_DTYPE)  # refused anyway; no overflow


def check_duplicates(parsed: pd.DataFrame, config: SkewlessConfig, findings: Findings) -> None:
    """Two rows of one batch for the same (entity, timestamp) cannot both be right."""
    key = [config.data.entity_key, EVENT_TS]
    duplicated = parsed.duplicated(key, keep=False)
    if duplicated.any():
        findings.errors.append(
            f"{int(duplicated.sum())} rows share an ({config.data.entity_key}, timestamp) pair "
            f"with another row: {rows_text(parsed.loc[duplicated, ENTITY_ROW])}; "
            "keep one row per pair"
        )


def check_against_history(
    parsed: pd.DataFrame,
    stored: pd.DataFrame,
    previous: pd.DataFrame,
    config: SkewlessConfig,
    findings: Findings,
) -> pd.DataFrame:
    """Drop rows already stored unchanged, refuse changed ones, report gaps; return new rows.

    ``stored`` holds the stored rows inside the batch's time range, ``previous`` the last stored
    timestamp before it per entity, so gaps at the seam with old data are found too.
    """
    key = [config.data.entity_key, EVENT_TS]
    columns = config.data.window_columns
    merged = parsed.merge(
        stored[key + columns], on=key, how="left", suffixes=("", "__stored"), indicator=True
    )
    seen = (merged["_merge"] == "both").to_numpy()
    same = np.ones(len(merged), dtype=bool)
    for column in config.data.variables:
        new, old = merged[column].to_numpy(), merged[f"{column}__stored"].to_numpy()
        same &= (new == old) | (np.isnan(new) & np.isnan(old))
    for column in config.data.categorical:
        label, stored_label = merged[column].astype(object), merged[f"{column}__stored"]
        equal = (label == stored_label.astype(object)).fillna(False).astype(bool)
        same &= (equal | (label.isna() & stored_label.isna())).to_numpy()
    changed = seen & ~same
    if changed.any():
        findings.errors.append(
            f"{int(changed.sum())} rows were ingested before with different values: "
            f"{rows_text(merged.loc[changed, ENTITY_ROW])}; corrections of stored rows are not "
            "supported, so remove those rows from the source"
        )
    fresh = parsed.loc[~seen].copy()
    _check_spacing(fresh, stored, previous, config, findings)
    return fresh


def _check_spacing(
    fresh: pd.DataFrame,
    stored: pd.DataFrame,
    previous: pd.DataFrame,
    config: SkewlessConfig,
    findings: Findings,
) -> None:
    entity, grid = config.data.entity_key, config.data.parsed_frequency
    timeline = pd.concat(
        [
            fresh[[entity, EVENT_TS, ENTITY_ROW]],
            stored[[entity, EVENT_TS]].assign(**{ENTITY_ROW: 0}),
            previous[[entity, EVENT_TS]].assign(**{ENTITY_ROW: 0}),
        ],
        ignore_index=True,
    ).sort_values([entity, EVENT_TS], kind="stable")
    series = timeline.groupby(entity, sort=False)
    # A step is new when either of its two ends came in this batch.
    involves_new = (timeline[ENTITY_ROW] > 0) | (series[ENTITY_ROW].shift(1).fillna(0) > 0)
    times = pd.DatetimeIndex(timeline[EVENT_TS])
    anchors = pd.DatetimeIndex(series[EVENT_TS].transform("min"))
    off_grid = ~grid.on_grid(times, anchors) & (timeline[ENTITY_ROW] > 0).to_numpy()
    if off_grid.any():
        findings.errors.append(
            f"timestamps off the '{config.data.frequency}' grid of their {entity} at "
            f"{rows_text(timeline.loc[off_grid, ENTITY_ROW])}; resample the source to "
            "the declared frequency or change data.frequency"
        )
        return
    positions = timeline.assign(position=grid.positions(times)).groupby(entity, sort=False)
    steps = positions["position"].diff()
    gaps = steps.notna() & (steps > 1) & involves_new
    if gaps.any():
        missing_points = int((steps[gaps] - 1).sum())
        ends = timeline.loc[gaps, [entity, EVENT_TS]]
        starts = series[EVENT_TS].shift(1)[gaps]
        shown = "; ".join(
            f"{entity} {e} after {s.isoformat()} until {t.isoformat()}"
            for e, s, t in list(zip(ends[entity], starts, ends[EVENT_TS], strict=True))[:5]
        )
        message = (
            f"{int(gaps.sum())} gap(s) against frequency '{config.data.frequency}' "
            f"({missing_points} missing points): {shown}"
        )
        if config.validation.on_gap == "error":
            findings.errors.append(message + "; validation.on_gap is 'error'")
        else:
            findings.warnings.append(message + "; the rows are kept")
