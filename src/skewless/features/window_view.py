"""The online window view: the last W points of every variable, packed into one Bytes feature.

One Bytes value per entity keeps an online read to one value per entity, which STACK.md measured
as ninefold cheaper than one Array feature per variable. Layout, little-endian:

    b"SKW1" | uint32 rows | uint32 variables | int64[rows] UTC microseconds
           | float32[rows, variables]

With label columns (``data.categorical``) or static covariates (``data.static``) the magic is
b"SKW2" and a UTF-8 JSON object follows as uint32 length | text: ``labels`` maps each label
column to the distinct labels of this window (its float32 column holds each row's index into
them, NaN where missing), ``static`` holds the entity's static values (numbers, labels, null
where unknown) and ``plan`` its planned known-future covariates (``data.known``) after the
window's end: ``times_us`` and a list per known column. Serving gets them in the same single
read as the window.

Timestamps are stored, not derived from the end and the frequency, so a window that spans a
gap in the data is still exact.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from skewless.core.errors import FeatureStoreError
from skewless.core.schema import EVENT_TS

MAGIC = b"SKW1"
MAGIC_EXTRAS = b"SKW2"
_HEADER = struct.Struct("<4sII")
_LENGTH = struct.Struct("<I")
_TIMES = np.dtype("<i8")
_VALUES = np.dtype("<f4")


@dataclass(frozen=True)
class Window:
    """One entity's recent history, in the shape ingestion produced it.

    Times stay int64 UTC microseconds until asked for as timestamps: building a DatetimeIndex
    per entity would cost more than the whole online read.
    """

    entity: Any
    times_us: np.ndarray  # (rows,) int64 UTC microseconds
    values: np.ndarray  # (rows, columns) float32: the variables, then label codes
    variables: tuple[str, ...]  # the column names: the variables, then the label columns
    static: Mapping[str, Any] | None = None  # the entity's static covariates, if configured
    labels: Mapping[str, list[str]] | None = None  # per label column, what its codes index
    plan: Mapping[str, list[Any]] | None = None  # times_us and known columns ahead, if planned

    @cached_property
    def timestamps(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.times_us.astype("datetime64[us]")).tz_localize("UTC")

    @property
    def start(self) -> pd.Timestamp:
        return pd.Timestamp(int(self.times_us[0]), unit="us", tz="UTC")

    @property
    def end(self) -> pd.Timestamp:
        return pd.Timestamp(int(self.times_us[-1]), unit="us", tz="UTC")

    def __len__(self) -> int:
        return len(self.times_us)

    def until(self, time_point: datetime) -> Window:
        """The part of the window known at ``time_point`` (point-in-time correct; the plan is
        the one made for after the whole window, so it is left out)."""
        point = pd.Timestamp(time_point).value // 1000  # ns -> us
        keep = int(np.searchsorted(self.times_us, point, side="right"))
        cut = replace(self, times_us=self.times_us[:keep], values=self.values[:keep])
        return cut if self.plan is None else replace(cut, plan={"times_us": []})

    def last(self, rows: int) -> Window:
        """The window's last ``rows`` rows (all of them when it has fewer)."""
        if len(self) <= rows:
            return self
        return replace(self, times_us=self.times_us[-rows:], values=self.values[-rows:])

    def to_frame(self, entity_key: str) -> pd.DataFrame:
        """Rows as ingestion wrote them: entity, event_timestamp, variables."""
        return windows_frame([self], entity_key)


def windows_frame(windows: list[Window], entity_key: str) -> pd.DataFrame:
    """The rows of many windows (``Window.last`` cuts each to a lookback) as ONE frame in
    ingestion format: one frame built from concatenated arrays, not one per entity."""
    if not windows:
        raise ValueError("no windows to turn into rows")
    lengths = [len(w) for w in windows]
    frame = pd.DataFrame(
        np.concatenate([w.values for w in windows]), columns=list(windows[0].variables)
    )
    # In nanoseconds, pandas' own unit: every later step would otherwise convert, with checks.
    nanos = (np.concatenate([w.times_us for w in windows]) * 1000).view("datetime64[ns]")
    frame.insert(0, EVENT_TS, pd.DatetimeIndex(nanos).tz_localize("UTC"))
    frame.insert(0, entity_key, np.repeat(np.array([w.entity for w in windows]), lengths))
    for column in windows[0].labels or {}:
        frame[column] = _decoded(frame[column].to_numpy(), windows, column, lengths)
    if windows[0].static is not None:
        for column in windows[0].static:
            values = [(w.static or {}).get(column) for w in windows]
            if any(isinstance(v, str) for v in values):
                per_window = np.array(values, dtype=object)
                frame[column] = pd.array(np.repeat(per_window, lengths), dtype="string")
            else:
                numbers = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
                frame[column] = np.repeat(numbers, lengths)
    if any(w.plan for w in windows):
        frame = pd.concat([frame, _planned_rows(frame, windows, entity_key)], ignore_index=True)
    return frame


def _planned_rows(frame: pd.DataFrame, windows: list[Window], entity_key: str) -> pd.DataFrame:
    """Each window's plan after its last row, as rows with no target values (what the bundle
    reads as an entity's plan), in ``frame``'s columns."""
    parts = []
    for window in windows:
        plan = window.plan or {}
        times = np.asarray(plan.get("times_us", []), dtype=np.int64)
        ahead = times > window.times_us[-1] if len(window) else times >= 0
        if not ahead.any():
            continue
        part = pd.DataFrame({entity_key: np.repeat(window.entity, ahead.sum())})
        part[EVENT_TS] = pd.to_datetime(times[ahead], unit="us", utc=True).as_unit("ns")
        for column, values in plan.items():
            if column != "times_us":
                part[column] = np.array(values, dtype=np.float64)[ahead].astype(np.float32)
        for column, value in (window.static or {}).items():
            part[column] = value
        parts.append(part)
    planned = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]
    return planned.reindex(columns=frame.columns).astype(frame.dtypes.to_dict())


def _decoded(
    codes: np.ndarray, windows: list[Window], column: str, lengths: list[int]
) -> pd.api.extensions.ExtensionArray:
    """A label column's codes (one window after another) back to its labels."""
    labels = np.empty(len(codes), dtype=object)
    at = 0
    for window, length in zip(windows, lengths, strict=True):
        known = np.array([*(window.labels or {}).get(column, []), None], dtype=object)
        part = codes[at : at + length]
        labels[at : at + length] = known[np.where(np.isnan(part), -1, part).astype(np.int64)]
        at += length
    return pd.array(labels, dtype="string")


def pack_window(
    timestamps: pd.Series | pd.DatetimeIndex,
    values: np.ndarray,
    static: Mapping[str, Any] | None = None,
    labels: Mapping[str, list[str]] | None = None,
    plan: Mapping[str, list[Any]] | None = None,
) -> bytes:
    """Pack one entity's rows (UTC timestamps, float32 matrix with label codes last), its
    static covariates, its labels and its plan into the window blob."""
    times = pd.DatetimeIndex(timestamps).as_unit("us").asi8.astype(_TIMES, copy=False)
    matrix = np.ascontiguousarray(values, dtype=_VALUES)
    if matrix.ndim != 2 or matrix.shape[0] != len(times):
        raise ValueError(f"values of shape {matrix.shape} do not match {len(times)} timestamps")
    body = times.tobytes() + matrix.tobytes()
    if static is None and labels is None and plan is None:
        return _HEADER.pack(MAGIC, *matrix.shape) + body
    extras = {"static": static, "labels": labels, "plan": plan}
    text = json.dumps({k: v for k, v in extras.items() if v is not None}, allow_nan=False)
    encoded = text.encode()
    return _HEADER.pack(MAGIC_EXTRAS, *matrix.shape) + body + _LENGTH.pack(len(encoded)) + encoded


def unpack_window(blob: bytes, entity: Any, variables: tuple[str, ...]) -> Window:
    """Inverse of :func:`pack_window`; refuses blobs written for other variables."""
    magic, rows, width = _HEADER.unpack_from(blob)
    if magic not in (MAGIC, MAGIC_EXTRAS):
        raise FeatureStoreError(
            f"the online window of {entity!r} is not in skewless format; re-run materialize"
        )
    if width != len(variables):
        raise FeatureStoreError(
            f"the online window of {entity!r} holds {width} variables but the config declares "
            f"{len(variables)}; re-run 'skewless materialize' after changing variables"
        )
    offset = _HEADER.size
    times = np.frombuffer(blob, dtype=_TIMES, count=rows, offset=offset)
    offset += times.nbytes
    values = np.frombuffer(blob, dtype=_VALUES, count=rows * width, offset=offset)
    extras: dict[str, Any] = {}
    if magic == MAGIC_EXTRAS:
        offset += values.nbytes
        (length,) = _LENGTH.unpack_from(blob, offset)
        extras = json.loads(blob[offset + _LENGTH.size : offset + _LENGTH.size + length])
    return Window(
        entity,
        times,
        values.reshape(rows, width),
        variables,
        extras.get("static"),
        extras.get("labels"),
        extras.get("plan"),
    )


def window_end_us(blob: bytes, width: int) -> int | None:
    """The last timestamp (UTC microseconds) of a packed window of ``width`` columns; None
    when the blob is no such window (another format or width, or no rows): rebuild it."""
    magic, rows, columns = _HEADER.unpack_from(blob)
    if magic not in (MAGIC, MAGIC_EXTRAS) or columns != width or rows == 0:
        return None
    return int(np.frombuffer(blob, _TIMES, count=1, offset=_HEADER.size + (rows - 1) * 8)[0])


def append_to_window(blob: bytes, times_us: np.ndarray, values: np.ndarray, size: int) -> bytes:
    """``blob`` with rows appended (each later than its end) and cut to its last ``size``
    rows: the bytes :func:`pack_window` makes of the same rows. The extras part is kept byte
    for byte, unread: it is the entity's, not its rows'."""
    magic, rows, width = _HEADER.unpack_from(blob)
    matrix = np.ascontiguousarray(values, dtype=_VALUES)
    if matrix.ndim != 2 or matrix.shape != (len(times_us), width):
        raise ValueError(f"values of shape {matrix.shape} do not fit {width} columns")
    offset = _HEADER.size
    old_times = np.frombuffer(blob, _TIMES, count=rows, offset=offset)
    offset += old_times.nbytes
    old_values = np.frombuffer(blob, _VALUES, count=rows * width, offset=offset)
    extras = blob[offset + old_values.nbytes :]
    times = np.concatenate([old_times, np.asarray(times_us, dtype=_TIMES)])[-size:]
    kept = np.concatenate([old_values.reshape(rows, width), matrix])[-size:]
    return _HEADER.pack(magic, *kept.shape) + times.tobytes() + kept.tobytes() + extras


def window_records(
    entity_key: str, entities: Sequence[Any], blobs: Sequence[bytes], ends: Sequence[Any]
) -> pd.DataFrame:
    """One row per entity with its packed window and its end (the features of the window view)."""
    return pd.DataFrame(
        {entity_key: entities, "window": blobs, "window_end": ends},
        columns=[entity_key, "window", "window_end"],
    )


def pack_windows(
    tails: pd.DataFrame,
    entity_key: str,
    variables: list[str],
    statics: pd.DataFrame | None = None,
    label_columns: Sequence[str] = (),
    plans: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per entity with its packed window and its end.

    ``tails`` holds the last W rows of each entity, sorted by entity and time; ``statics``
    (when static covariates are configured) one row per entity, and an entity without one
    gets nulls; ``label_columns`` are packed as codes into the window's own labels; ``plans``
    (when known-future plans are configured) rows of entity, time and known columns, of which
    each window keeps those after its end.
    """
    table = None if statics is None else statics.set_index(entity_key)
    planned = None if plans is None else dict(list(plans.groupby(entity_key, sort=False)))
    known = [] if plans is None else [c for c in plans.columns if c not in (entity_key, EVENT_TS)]
    entities, blobs, ends = [], [], []
    for entity, rows in tails.groupby(entity_key, sort=False):
        static = None if table is None else _static_values(table, entity)
        plan = (
            None
            if planned is None
            else _plan_values(planned.get(entity), rows[EVENT_TS].iloc[-1], known)
        )
        values, labels = rows[variables].to_numpy(np.float32), None
        if label_columns:
            labels, codes = {}, []
            for column in label_columns:
                code, distinct = pd.factorize(rows[column])
                labels[column] = [str(label) for label in distinct]
                codes.append(np.where(code < 0, np.nan, code).astype(np.float32))
            values = np.column_stack([values, *codes])
        entities.append(entity)
        blobs.append(pack_window(rows[EVENT_TS], values, static, labels, plan))
        ends.append(rows[EVENT_TS].iloc[-1])
    return window_records(entity_key, entities, blobs, ends)


def _plan_values(
    plan: pd.DataFrame | None, end: pd.Timestamp, known: list[str]
) -> dict[str, list[Any]]:
    """An entity's plan after ``end`` as JSON values: times, and per ``known`` column numbers
    or None where a value is not planned yet."""
    ahead = plan[plan[EVENT_TS] > end] if plan is not None else pd.DataFrame(columns=[EVENT_TS])
    values = {
        column: [None if np.isnan(v) else float(v) for v in ahead[column].to_numpy(np.float64)]
        for column in known
        if column in ahead
    }
    return {"times_us": pd.DatetimeIndex(ahead[EVENT_TS]).as_unit("us").asi8.tolist(), **values}


def _static_values(table: pd.DataFrame, entity: Any) -> dict[str, Any]:
    """One entity's static covariates as JSON values: floats, labels, None where unknown."""
    if entity not in table.index:
        return dict.fromkeys(table.columns)
    row = table.loc[entity]
    return {
        column: None if pd.isna(value) else (str(value) if isinstance(value, str) else float(value))
        for column, value in row.items()
    }
