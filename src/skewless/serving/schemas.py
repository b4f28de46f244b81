"""The HTTP contract, shared by the FastAPI and Ray Serve servers: requests, responses, and the
status each error answers with."""

from __future__ import annotations

import math
from typing import Annotated, Any

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
)

from skewless.core.errors import (
    BundleError,
    RegistryError,
    SkewlessError,
    StaleFeaturesError,
    StoreUnavailableError,
    UnknownEntityError,
)
from skewless.core.time_points import MAX_TIME_POINT_CHARS

# Strict: true and 1.0 are not entity 1. Ids beyond 64 bits are refused by the service.
Entity = StrictInt | StrictStr
TimePoint = Annotated[
    str,
    Field(
        default="now",
        max_length=MAX_TIME_POINT_CHARS,
        description=(
            "'now' or an ISO 8601 timestamp (a window that does not reach it is stale: 409), or "
            "'latest': each entity's newest window, whatever its age; the forecast timestamps "
            "say where each forecast starts"
        ),
    ),
]
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = (-(2**63), 2**63 - 1)
_STATUS: tuple[tuple[type[SkewlessError], int], ...] = (
    (StoreUnavailableError, 503),
    (UnknownEntityError, 404),
    (StaleFeaturesError, 409),
    (RegistryError, 503),
    (BundleError, 503),
    (SkewlessError, 422),
)


def status_of(error: SkewlessError) -> int:
    """The HTTP status of a skewless error: the first matching class wins."""
    return next(status for kind, status in _STATUS if isinstance(error, kind))


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _representable(rows: list[dict[str, Any]] | None) -> list[dict[str, Any]] | None:
    """Numbers the model can hold: finite float32 values and 64-bit integers (JSON allows
    Infinity and 1e400, and Python ints have no bound)."""
    for number, row in enumerate(rows or []):
        for column, value in row.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, float) and (not math.isfinite(value) or abs(value) > _FLOAT32_MAX):
                raise ValueError(
                    f"rows[{number}].{column}: {value} is not a finite number within float32"
                )
            if isinstance(value, int) and not _INT64[0] <= value <= _INT64[1]:
                raise ValueError(f"rows[{number}].{column}: {value} does not fit a 64-bit integer")
    return rows


Rows = Annotated[list[dict[str, Any]], AfterValidator(_representable)]
PLAN = (
    "the plan of known-future covariates (data.known) for the forecast steps, instead of the "
    "stored one: rows of the entity key, event_timestamp and every known column"
)


class EntityRequest(_Request):
    entity: Entity
    time_point: TimePoint = "now"
    entity_key: str | None = Field(default=None, description="defaults to the config's")
    known: Rows | None = Field(default=None, description=PLAN)


class BatchRequest(_Request):
    entities: list[Entity] = Field(min_length=1)
    time_point: TimePoint = "now"
    entity_key: str | None = Field(default=None, description="defaults to the config's")
    known: Rows | None = Field(default=None, description=PLAN)


class RowsRequest(_Request):
    rows: Rows = Field(
        min_length=1,
        description="raw rows as ingestion stores them: entity key, event_timestamp, variables",
    )


class PushRequest(RowsRequest):
    rows: Rows = Field(
        min_length=1,
        description="new raw rows in the source's column names (entity key, the timestamp "
        "column, every variable), one object per row; all are stored or none",
    )


class PushResponse(BaseModel):
    rows_read: int
    rows_written: int = Field(description="new rows, now in the offline store and online")
    rows_already_stored: int = Field(description="rows sent before, unchanged: not written again")
    entities: list[Entity] = Field(description="entities whose online windows were rewritten")
    warnings: list[str] = Field(description="what validation noticed and let through (gaps)")


class RowProblems(BaseModel):
    row: int = Field(description="the row's number, from 1 in the order sent")
    reasons: list[str]


class PushRefusal(BaseModel):
    detail: str
    problems: list[str] = Field(
        description="every reason, each naming the rows it concerns (numbered from 1 in the "
        "order sent)"
    )
    rows: list[RowProblems] = Field(
        default_factory=list,
        description="each row refused for its own values (not a number, not a timestamp, an "
        "id of the wrong type), with its reasons; the first 50 such rows. Reasons that come "
        "from rows together or from stored rows (duplicates, conflicts, gaps) are in problems",
    )


class ModelInfo(BaseModel):
    name: str
    version: int
    alias: str


class Prediction(BaseModel):
    """A forecast (timestamps, and values keyed by target, bounds by target and level) or the
    entity's own error."""

    entity: Entity
    timestamps: list[str] | None = None
    forecast: dict[str, list[float]] | None = None
    lower: dict[str, dict[str, list[float]]] | None = None
    upper: dict[str, dict[str, list[float]]] | None = None
    error: str | None = None


class FailedPrediction(Prediction):
    """An entity's own error as the service answers it: the message, which is all a response
    shows, and for the server the error's class (metrics, the request log) and HTTP status (the
    answer to a one-entity request). Responses list Predictions, and pydantic serializes a field
    by its declared class, so ``kind`` and ``status`` never reach the JSON."""

    error: str
    kind: str
    status: int

    @classmethod
    def of(cls, entity: Any, error: SkewlessError) -> FailedPrediction:
        return cls(
            entity=entity, error=str(error), kind=type(error).__name__, status=status_of(error)
        )


class PredictionResponse(BaseModel):
    request_id: str = Field(description="the request's id in the request log")
    model: ModelInfo
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    detail: str
