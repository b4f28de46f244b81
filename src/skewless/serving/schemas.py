"""The HTTP contract, shared by the FastAPI and Ray Serve servers."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Entity = int | str


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EntityRequest(_Request):
    entity: Entity
    time_point: str = Field(default="now", description="'now' or an ISO 8601 timestamp")
    entity_key: str | None = Field(default=None, description="defaults to the config's")


class BatchRequest(_Request):
    entities: list[Entity] = Field(min_length=1)
    time_point: str = Field(default="now", description="'now' or an ISO 8601 timestamp")
    entity_key: str | None = Field(default=None, description="defaults to the config's")


class RowsRequest(_Request):
    rows: list[dict[str, Any]] = Field(
        min_length=1,
        description="raw rows as ingestion stores them: entity key, event_timestamp, variables",
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


class PredictionResponse(BaseModel):
    request_id: str = Field(description="the request's id in the request log")
    model: ModelInfo
    predictions: list[Prediction]


class ErrorResponse(BaseModel):
    detail: str
