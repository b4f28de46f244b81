"""The experiment config: one YAML file, validated by pydantic, overridable from env and CLI.

Precedence, lowest first: the YAML file, ``SKEWLESS__A__B=value`` environment variables,
``--set a.b=value`` on the command line. Every error names the key, the bad value and what is
allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlparse
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)

from skewless.core.errors import ConfigError
from skewless.core.frequency import Frequency, frequency
from skewless.core.holidays import check_country

ENV_PREFIX = "SKEWLESS__"
HOME_ENV = "SKEWLESS_HOME"
DEFAULT_HOME = "./skewless_home"

CalendarFeature = Literal["hour", "day_of_week", "day_of_month", "day_of_year", "month"]

# The frequency that duration strings ("30D", "52W") are counted in while a config validates.
_COUNTING: ContextVar[Frequency | None] = ContextVar("counting", default=None)


def _count(value: Any) -> Any:
    """A count as it is, or a duration string as the whole periods of ``data.frequency`` it
    spans (so every layer below sees ints)."""
    if not isinstance(value, str) or value.strip().isdigit():
        return value
    counting = _COUNTING.get()
    if counting is None:
        raise ValueError(f"'{value}' is a duration, but data.frequency is not valid; give a count")
    return counting.periods(value)


Periods = Annotated[int, BeforeValidator(_count)]


def _known_zone(value: str) -> str:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone '{value}' (use an IANA name such as 'UTC')") from exc
    return value


TimeZone = Annotated[str, AfterValidator(_known_zone)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PostgresQuery(_Strict):
    """A PostgreSQL table or query to ingest from."""

    dsn: str = Field(description="libpq connection string or URL")
    table: str | None = Field(default=None, description="schema-qualified table name")
    query: str | None = Field(default=None, description="a SELECT returning the raw columns")

    @model_validator(mode="after")
    def _one_of_table_or_query(self) -> PostgresQuery:
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of 'table' or 'query'")
        return self


class MeltConfig(_Strict):
    """A wide table whose columns are series: each named column becomes an entity.

    The column's name becomes a value of the entity key and its numbers go to the variable
    ``value``; columns not melted (shared covariates) are kept on every entity's rows.
    """

    columns: list[str] | Literal["all"] = Field(
        description="the series columns, or 'all': every column but the timestamp and the "
        "declared variables"
    )
    value: str = Field(description="the declared target or covariate the numbers go to")

    @field_validator("columns")
    @classmethod
    def _some_columns(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, list):
            if not value:
                raise ValueError("list at least one column, or write 'all'")
            repeated = sorted({c for c in value if value.count(c) > 1})
            if repeated:
                raise ValueError(f"column(s) {repeated} are listed more than once")
        return value


class SourceConfig(_Strict):
    """One raw source: a CSV or Parquet file, or a PostgreSQL table or query."""

    path: Path | None = None
    postgres: PostgresQuery | None = None
    entity: int | str | None = Field(
        default=None,
        description="constant entity id for every row, for sources without an entity column",
    )
    melt: MeltConfig | None = Field(
        default=None, description="a wide table: its columns are series, melted into entities"
    )

    @model_validator(mode="after")
    def _one_location(self) -> SourceConfig:
        if (self.path is None) == (self.postgres is None):
            raise ValueError("give exactly one of 'path' or 'postgres'")
        if self.melt is not None and self.entity is not None:
            raise ValueError("a melted source takes its entities from its columns: drop 'entity'")
        if self.path is not None and self.path.suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise ValueError(f"'{self.path}' must end in .csv or .parquet")
        return self


class StaticConfig(_Strict):
    """Covariates that describe an entity rather than a moment (type, region, capacity): one
    row per entity in their own table, joined to every window of that entity."""

    sources: list[SourceConfig] = Field(
        min_length=1, description="files or PostgreSQL tables with one row per entity"
    )
    numeric: list[str] = Field(default_factory=list, description="numeric columns")
    categorical: list[str] = Field(
        default_factory=list, description="columns of labels, encoded as integer codes"
    )

    @model_validator(mode="after")
    def _some_columns(self) -> StaticConfig:
        if not self.numeric and not self.categorical:
            raise ValueError("name at least one 'numeric' or 'categorical' column")
        if any(source.melt is not None or source.entity is not None for source in self.sources):
            raise ValueError("static sources take their entities from the entity key column")
        return self

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categorical]


class KnownConfig(_Strict):
    """Covariates whose values are known ahead of time (planned prices, promotions, a weather
    forecast): their history arrives with the series, and models that can read them see their
    values over the forecast steps too. Values for times after the series ends (the plan) come
    from ``sources`` (their own table, the newest row per entity and time wins) or from the
    request at serving time."""

    columns: list[str] = Field(min_length=1, description="covariates (data.covariates) known ahead")
    sources: list[SourceConfig] = Field(
        default_factory=list,
        description="files or PostgreSQL tables of planned values: the entity key, the "
        "timestamp column and the known columns (a missing value is not planned yet)",
    )

    @model_validator(mode="after")
    def _read_as_they_are(self) -> KnownConfig:
        if any(source.melt is not None for source in self.sources):
            raise ValueError("known-future sources are read as they are (no melt)")
        return self


class DataConfig(_Strict):
    """What the raw data looks like."""

    sources: list[SourceConfig] = Field(default_factory=list)
    entity_key: str = "entity_id"
    entity_type: Literal["int64", "string"] = "int64"
    timestamp_column: str = "timestamp"
    timezone: TimeZone | None = Field(
        default=None,
        description="zone of naive timestamps; aware ones are converted to UTC",
    )
    frequency: str = "h"
    targets: list[str] = Field(min_length=1)
    covariates: list[str] = Field(default_factory=list)
    categorical: list[str] = Field(
        default_factory=list,
        description="columns of labels per row (a promotion type, a weather condition), stored "
        "as text and encoded as integer codes",
    )
    static: StaticConfig | None = Field(
        default=None, description="per-entity covariates in their own table"
    )
    known: KnownConfig | None = Field(
        default=None, description="covariates whose values are known over the horizon"
    )

    @field_validator("frequency")
    @classmethod
    def _known_frequency(cls, value: str) -> str:
        frequency(value)
        return value

    @model_validator(mode="after")
    def _distinct_columns(self) -> DataConfig:
        statics = self.static.columns if self.static else []
        names = [
            self.entity_key,
            self.timestamp_column,
            *self.targets,
            *self.covariates,
            *self.categorical,
            *statics,
        ]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"column(s) {repeated} are declared more than once")
        unknown = [
            c for c in (self.known.columns if self.known else []) if c not in self.covariates
        ]
        if unknown:
            raise ValueError(
                f"data.known names {unknown}, which are not among data.covariates "
                f"{self.covariates}: a known-future covariate is a covariate whose values are "
                "also known ahead"
            )
        for source in self.sources:
            if source.melt is not None and source.melt.value not in self.variables:
                raise ValueError(
                    f"melt.value '{source.melt.value}' must be one of the declared targets or "
                    f"covariates {self.variables}"
                )
        return self

    @property
    def variables(self) -> list[str]:
        """Targets then covariates: the raw numeric columns, in window order."""
        return [*self.targets, *self.covariates]

    @property
    def window_columns(self) -> list[str]:
        """The columns of an online window: the variables, then the label columns."""
        return [*self.variables, *self.categorical]

    @property
    def known_columns(self) -> list[str]:
        """The covariates known ahead, none when not configured."""
        return self.known.columns if self.known else []

    @property
    def static_columns(self) -> list[str]:
        """The static covariates' columns (numbers, then labels), none when not configured."""
        return self.static.columns if self.static else []

    @property
    def parsed_frequency(self) -> Frequency:
        """``frequency`` parsed, its calendar read in ``timezone``."""
        return frequency(self.frequency, self.timezone)


class HolidayCalendar(_Strict):
    """Public holidays of one country (and subdivision), from the ``holidays`` package."""

    country: str = Field(description="ISO 3166-1 alpha-2 code, such as US, DE or GB")
    subdivision: str | None = Field(default=None, description="a state or province, such as CA")

    @model_validator(mode="after")
    def _known_calendar(self) -> HolidayCalendar:
        check_country(self.country, self.subdivision)
        return self


class FeaturesConfig(_Strict):
    """Engineered features, computed by one function at ingest and at serving."""

    calendar: list[CalendarFeature] | None = Field(
        default=None,
        description="null: the features that fit data.frequency (hourly: hour, day_of_week, month)",
    )
    holidays: HolidayCalendar | None = Field(
        default=None, description="a 'holidays' column: public holidays in each row's period"
    )


class SqliteOnlineStore(_Strict):
    type: Literal["sqlite"] = "sqlite"
    path: Path | None = Field(default=None, description="defaults to a file under SKEWLESS_HOME")


class RedisOnlineStore(_Strict):
    type: Literal["redis"] = "redis"
    url: str = "redis://127.0.0.1:6379/0"
    timeout_seconds: float = Field(
        default=1.0,
        gt=0,
        description="longest a server waits for Redis to connect or answer before a 503",
    )

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
            raise ValueError(f"'{value}' is not a redis:// URL such as redis://127.0.0.1:6379/0")
        return value


OnlineStoreConfig = Annotated[SqliteOnlineStore | RedisOnlineStore, Field(discriminator="type")]


class FileOfflineStore(_Strict):
    type: Literal["file"] = "file"


class PostgresOfflineStore(_Strict):
    type: Literal["postgres"] = "postgres"
    dsn: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        description="postgresql:// URL; leave the password out and use PGPASSWORD or ~/.pgpass",
    )
    db_schema: str = "public"
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] = "prefer"

    @field_validator("dsn")
    @classmethod
    def _postgres_url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("postgresql", "postgres"):
            raise ValueError(f"'{value}' is not a postgresql:// URL")
        return value


OfflineStoreConfig = Annotated[FileOfflineStore | PostgresOfflineStore, Field(discriminator="type")]
_STORE_KEYS = ("online_store", "offline_store")


class FeatureStoreConfig(_Strict):
    """Where features live: Feast project, stores and the online window view."""

    project: str | None = Field(
        default=None, max_length=63, description="Feast project; defaults to 'name'"
    )
    online_store: OnlineStoreConfig = Field(default_factory=SqliteOnlineStore)
    offline_store: OfflineStoreConfig = Field(default_factory=FileOfflineStore)
    window_size: int = Field(default=512, ge=1, le=100_000)
    max_staleness_periods: int = Field(
        default=1,
        ge=0,
        description="how many periods a window may end before a requested time point",
    )
    materialize_batch_entities: int = Field(default=1000, ge=1)
    ingest_batch_entities: int = Field(
        default=100, ge=1, description="entities read, validated and written at a time"
    )
    compact_after_parts: int = Field(
        default=200, ge=1, description="a push merges the offline parts once there are more"
    )

    @field_validator("project")
    @classmethod
    def _project_name(cls, value: str | None) -> str | None:
        if value is not None and not value.replace("_", "").isalnum():
            raise ValueError(f"'{value}' must contain only letters, digits and underscores")
        return value


class ValidationConfig(_Strict):
    """What ingestion does with problems it can work around."""

    on_gap: Literal["warn", "error"] = "warn"
    on_missing: Literal["warn", "error"] = "warn"


class ImputationConfig(_Strict):
    """How missing values are filled, with statistics of the training rows only."""

    method: Literal["ffill", "mean", "median"] = "ffill"
    limit: int | None = Field(
        default=3, ge=1, description="ffill: longest run of missing values filled forward"
    )


class ScalingConfig(_Strict):
    method: Literal["standard", "robust", "minmax", "none"] = "standard"
    per_entity: bool = Field(
        default=False, description="one set of statistics per entity (unseen ones use global)"
    )


class CategoricalConfig(_Strict):
    columns: list[str] = Field(
        default_factory=list, description="replaced by data.categorical; must stay empty"
    )
    unseen: Literal["unknown", "error"] = Field(
        default="unknown", description="a value not seen in training: code 0, or an error"
    )

    @field_validator("columns")
    @classmethod
    def _declared_under_data(cls, value: list[str]) -> list[str]:
        if value:
            raise ValueError(
                f"label columns are declared as data.categorical: {value} (they are stored, "
                "served and encoded from there); leave preprocessing.categoricals.columns out"
            )
        return value


class PreprocessingConfig(_Strict):
    """The stateful preprocessor, fitted on training rows only."""

    imputation: ImputationConfig = Field(default_factory=ImputationConfig)
    scaling: ScalingConfig = Field(default_factory=ScalingConfig)
    categoricals: CategoricalConfig = Field(default_factory=CategoricalConfig)


class TrainingConfig(_Strict):
    """What to fit: the model, its parameters, the window shape."""

    model: str = "nlinear"
    params: dict[str, Any] = Field(default_factory=dict, description="model constructor arguments")
    lookback: Periods = Field(default=336, ge=1, description="a count or a duration")
    horizon: Periods = Field(default=24, ge=1, description="a count or a duration")
    validation_fraction: float = Field(
        default=0.2, gt=0, lt=1, description="last share of each training period used to validate"
    )
    batch_entities: int = Field(
        default=100,
        ge=1,
        description="entities read and windowed at a time: memory follows this, not the fleet",
    )


class BacktestConfig(_Strict):
    """Rolling-origin evaluation: ``folds`` test periods at the end of the data."""

    folds: int = Field(default=3, ge=1)
    test_periods: Periods = Field(
        default=168, ge=1, description="length of each fold's test period"
    )
    window: Literal["expanding", "sliding"] = "expanding"
    train_periods: Periods | None = Field(default=None, ge=1, description="sliding window length")
    gap: Periods = Field(
        default=0, ge=0, description="periods between training end and first target"
    )

    @model_validator(mode="after")
    def _sliding_needs_length(self) -> BacktestConfig:
        if self.window == "sliding" and self.train_periods is None:
            raise ValueError("a sliding window needs train_periods")
        return self


class SearchDimension(_Strict):
    """One tuned value: an int or float range, or a list of choices."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> SearchDimension:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs a non-empty 'choices' list")
        elif self.low is None or self.high is None or self.low > self.high:
            raise ValueError(f"an {self.type} dimension needs low <= high")
        return self


class TuningConfig(_Strict):
    """Optuna search over ``training`` keys; every trial is a full rolling-origin backtest."""

    trials: int = Field(default=20, ge=1)
    metric: Literal["mse", "mae", "rmse", "smape", "mase"] = "mse"
    space: dict[str, SearchDimension] = Field(
        default_factory=dict, description="dotted keys under training, e.g. lookback, params.lags"
    )
    storage: str | None = Field(
        default=None, description="Optuna storage URL; default sqlite under SKEWLESS_HOME"
    )
    study_name: str | None = None
    seed: int = 0


_TRACKING_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks")


class TrackingConfig(_Strict):
    """Where runs are logged: an MLflow tracking URI (default: SQLite under SKEWLESS_HOME)."""

    uri: str | None = None
    experiment: str | None = Field(default=None, description="defaults to 'name'")

    @field_validator("uri")
    @classmethod
    def _tracking_uri(cls, value: str | None) -> str | None:
        """A database or a tracking server: the model registry needs one of them."""
        scheme = urlparse(value).scheme.split("+")[0] if value else None
        if value is not None and scheme not in _TRACKING_SCHEMES:
            raise ValueError(
                f"{value[:80]!r} is not an MLflow tracking URI with a model registry: use "
                "sqlite:///path/mlflow.db, postgresql://user@host/db, or http(s)://host:port "
                "of a tracking server"
            )
        return value


class RegistryConfig(_Strict):
    """The MLflow registered model that training adds versions to, and its interval levels."""

    model_name: str | None = Field(default=None, description="defaults to '<name>_forecaster'")
    interval_levels: list[float] = Field(default_factory=lambda: [0.8, 0.95])

    @field_validator("interval_levels")
    @classmethod
    def _levels_are_probabilities(cls, levels: list[float]) -> list[float]:
        if any(not 0 < level < 1 for level in levels):
            raise ValueError(f"interval levels must lie strictly between 0 and 1, got {levels}")
        return sorted(set(levels))


class DeploymentScaling(_Strict):
    """Replicas, CPU share and autoscaling of one Ray Serve deployment."""

    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=2, ge=1)
    num_cpus: float = Field(default=0.25, gt=0)
    target_ongoing_requests: float = Field(default=4, gt=0)

    @model_validator(mode="after")
    def _min_below_max(self) -> DeploymentScaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}"
            )
        return self


class RayServingConfig(_Strict):
    """The Ray Serve application: one ingress and the three stages, in deployments that scale
    on their own or fused into one (``topology``)."""

    topology: Literal["staged", "fused"] = Field(
        default="staged",
        description="staged: features, preprocessing and model in deployments of their own, "
        "each scaling on its own (clusters); fused: the three in one deployment, one hop from "
        "the ingress (small clusters), sized by `model`",
    )
    ingress: DeploymentScaling = Field(default_factory=DeploymentScaling)
    features: DeploymentScaling = Field(default_factory=DeploymentScaling)
    preprocessing: DeploymentScaling = Field(default_factory=DeploymentScaling)
    model: DeploymentScaling = Field(default_factory=DeploymentScaling)


class ServingConfig(_Strict):
    """How servers load the model and what requests they accept."""

    alias: str = "production"
    poll_seconds: float = Field(default=10.0, gt=0, description="how often the alias is checked")
    max_entities: int = Field(default=1000, ge=1, description="most entities in one request")
    max_body_bytes: int | None = Field(
        default=None,
        ge=1024,
        description="largest request body; default 1 MiB + 1 KiB per max_entities",
    )
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    max_in_flight: int | None = Field(
        default=8,
        ge=1,
        description="forecast requests served at once per worker or replica; more are refused "
        "at once with 503 and Retry-After rather than queued without bound (null: no limit)",
    )
    keep_alive_seconds: int = Field(
        default=75,
        gt=0,
        description="how long an idle client connection stays open; above a load balancer's "
        "idle timeout (60 s on most), so the server never closes one a client is reusing",
    )
    ray: RayServingConfig = Field(default_factory=RayServingConfig)

    @property
    def body_limit(self) -> int:
        """Bytes a request body may have: refused with 413 before it is parsed."""
        return self.max_body_bytes or (1 << 20) + 1024 * self.max_entities


class RequestLogConfig(_Strict):
    """Where servers append every forecast they serve (monitoring reads it back)."""

    enabled: bool = True
    url: str | None = Field(
        default=None,
        description="SQLAlchemy URL; default sqlite under SKEWLESS_HOME, or postgresql+psycopg://...",
    )
    max_pending: int = Field(
        default=100_000, ge=1, description="requests queued before new ones are dropped, counted"
    )


class AlertRules(_Strict):
    """Thresholds ``skewless monitor`` checks; null switches a rule off."""

    drift_psi: float | None = Field(default=0.25, gt=0, description="PSI of any input variable")
    drift_ks: float | None = Field(default=0.3, gt=0, le=1, description="KS of any input variable")
    accuracy_factor: float | None = Field(
        default=1.5, gt=0, description="live error above the backtest's error times this"
    )
    accuracy_metric: Literal["mse", "mae"] = "mae"
    coverage_margin: float | None = Field(
        default=0.05,
        gt=0,
        lt=1,
        description="live coverage of an interval level more than this below its nominal level",
    )
    latency_p99_ms: float | None = Field(default=250.0, gt=0)
    error_rate: float | None = Field(
        default=0.05, ge=0, le=1, description="share of requested entities answered with an error"
    )
    min_samples: int = Field(
        default=20, ge=1, description="a rule stays silent on fewer observations than this"
    )


class RetrainConfig(_Strict):
    """What ``skewless monitor --retrain`` does after an alert."""

    promote_staging: bool = Field(
        default=False,
        description="move 'staging' to the new version if its backtest beats 'production'",
    )


class MonitoringConfig(_Strict):
    """The closed loop: request log, drift and accuracy over a recent period, alerts, retraining."""

    request_log: RequestLogConfig = Field(default_factory=RequestLogConfig)
    period: str = Field(default="7D", description="how far back monitoring looks (pandas offset)")
    reference_periods: Periods | None = Field(
        default=720,
        ge=1,
        description="drift compares with each entity's last this many training periods; null: all",
    )
    rules: AlertRules = Field(default_factory=AlertRules)
    webhook: str | None = Field(default=None, description="URL each alert is POSTed to as JSON")
    retrain: RetrainConfig = Field(default_factory=RetrainConfig)

    @field_validator("period")
    @classmethod
    def _period_parses(cls, value: str) -> str:
        try:
            period = pd.Timedelta(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a duration such as '7D' or '12h'") from None
        if period <= pd.Timedelta(0):
            raise ValueError(f"period must be positive, got '{value}'")
        return value


class ComputeConfig(_Strict):
    """Where batch work (training, backtests, batch forecasts) runs: here, or on Ray."""

    engine: Literal["local", "ray"] = "local"
    address: str | None = Field(
        default=None,
        description="null starts a local Ray; 'auto' or 'host:port' / 'ray://host:port' joins one",
    )
    workers: int | None = Field(
        default=None,
        ge=1,
        description="most tasks at once (a local Ray gets this many CPUs); null: every CPU",
    )


class StreamingConfig(_Strict):
    """``skewless stream``: rows consumed from a message broker in micro-batches, validated as
    ingest validates them, written to both stores, then acknowledged (docs/streaming.md)."""

    broker: Literal["nats", "rabbitmq"] = Field(
        description="nats: a NATS JetStream stream; rabbitmq: a durable RabbitMQ queue"
    )
    url: str = Field(description="nats://host:4222 or amqp://user:password@host:5672/")
    subject: str = Field(
        min_length=1, description="NATS subject, or RabbitMQ queue name, the rows arrive on"
    )
    dead_letter_subject: str | None = Field(
        default=None,
        description="where refused messages and rows go, with their reasons; default "
        "'<subject>.dead'",
    )
    stream: str | None = Field(
        default=None,
        description="NATS: the JetStream stream holding the subject; default: the stream that "
        "already holds it, else one made and named after it",
    )
    group: str = Field(
        default="skewless",
        min_length=1,
        description="NATS durable consumer name: every consumer in one group shares the work",
    )
    batch_rows: int = Field(
        default=10_000, ge=1, description="a micro-batch ends after this many rows..."
    )
    batch_seconds: float = Field(
        default=1.0, gt=0, description="...or this many seconds after its first message"
    )
    batch_messages: int = Field(
        default=1000, ge=1, description="most messages in one micro-batch (unacknowledged at once)"
    )
    ack_wait_seconds: float = Field(
        default=30.0,
        gt=0,
        description="NATS: a message not acknowledged this long after delivery is delivered "
        "again (to any consumer of the group)",
    )
    entities: Literal["open", "closed"] = Field(
        default="open",
        description="closed: rows of entities the offline store has never held are refused",
    )
    max_age: str | None = Field(
        default=None,
        description="rows whose timestamp is older than this before now are refused as stale "
        "(a duration such as '7D'); null: no limit",
    )
    max_future: str | None = Field(
        default="1h",
        description="rows whose timestamp is later than now plus this are refused; null: no limit",
    )
    metrics_port: int | None = Field(
        default=9108, ge=0, le=65535, description="Prometheus /metrics port; null: none"
    )
    metrics_host: str = "127.0.0.1"
    connect_attempts: int | None = Field(
        default=None, ge=1, description="tries to reach the broker at start; null: until stopped"
    )
    retry_seconds: float = Field(
        default=1.0, gt=0, description="first wait between tries; doubles up to retry_max_seconds"
    )
    retry_max_seconds: float = Field(default=30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if urlparse(value).scheme not in ("nats", "tls", "amqp", "amqps"):
            raise ValueError(f"'{value}' is not a nats:// or amqp:// URL")
        return value

    @field_validator("max_age", "max_future")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                period = pd.Timedelta(value)
            except ValueError:
                raise ValueError(f"'{value}' is not a duration such as '7D' or '1h'") from None
            if period < pd.Timedelta(0):
                raise ValueError(f"must not be negative, got '{value}'")
        return value

    @model_validator(mode="after")
    def _scheme_fits_broker(self) -> StreamingConfig:
        scheme = urlparse(self.url).scheme
        if (self.broker == "nats") != (scheme in ("nats", "tls")):
            raise ValueError(f"broker '{self.broker}' does not speak {scheme}:// (url)")
        if self.dead_letter_target == self.subject:
            raise ValueError("dead_letter_subject must differ from subject")
        return self

    @property
    def dead_letter_target(self) -> str:
        return self.dead_letter_subject or f"{self.subject}.dead"


JobAction = Literal["ingest", "materialize", "compact", "monitor", "command"]


class ScheduledJob(_Strict):
    """One recurring job of ``skewless schedule``."""

    action: JobAction = Field(
        description="ingest: the sources under data.sources; materialize: incremental; "
        "compact: merge the offline store's parts; monitor: drift, accuracy, alerts "
        "(retraining with retrain: true); command: run 'command' (e.g. skewless train)"
    )
    cron: str = Field(
        description="5 fields (minute hour day month weekday, crontab's meaning) or 6 with "
        "seconds first, in schedule.timezone"
    )
    retrain: bool = Field(default=False, description="monitor: train and register on an alert")
    command: list[str] | None = Field(
        default=None, min_length=1, description="command: the program and its arguments"
    )
    retries: int = Field(default=0, ge=0, le=100, description="attempts after a failed one")
    retry_delay_seconds: float = Field(default=60.0, ge=0, description="between attempts")
    misfire_grace_seconds: int | None = Field(
        default=None, ge=1, description="defaults to schedule.misfire_grace_seconds"
    )

    @field_validator("cron")
    @classmethod
    def _cron_parses(cls, value: str) -> str:
        from skewless.core.cron import cron_trigger

        cron_trigger(value)
        return value

    @model_validator(mode="after")
    def _command_for_command(self) -> ScheduledJob:
        if (self.action == "command") != (self.command is not None):
            raise ValueError("'command' is given with action 'command' and only with it")
        if self.retrain and self.action != "monitor":
            raise ValueError("'retrain' applies to action 'monitor' only")
        return self


class ScheduleConfig(_Strict):
    """Recurring jobs (``skewless schedule``): APScheduler with its jobs in a database, each
    run claimed in the monitoring database so that several schedulers run it once."""

    jobs: dict[str, ScheduledJob] = Field(default_factory=dict, description="by job name")
    timezone: TimeZone = Field(default="UTC", description="the zone cron expressions are read in")
    job_store: str | None = Field(
        default=None,
        description="SQLAlchemy URL of APScheduler's job store; default the monitoring "
        "database (monitoring.request_log.url, else SQLite under SKEWLESS_HOME)",
    )
    misfire_grace_seconds: int = Field(
        default=300, ge=1, description="a run later than this is not run but recorded as missed"
    )
    coalesce: bool = Field(default=True, description="several missed runs are run once")
    lease_seconds: float = Field(
        default=60.0,
        ge=2,
        description="a running job's claim lapses this long after its scheduler stops renewing "
        "it (the process died); renewed every third of it",
    )
    metrics_port: int | None = Field(
        default=9109, ge=0, le=65535, description="Prometheus /metrics of the scheduler; null: off"
    )
    metrics_host: str = "127.0.0.1"

    @field_validator("jobs")
    @classmethod
    def _job_names(cls, jobs: dict[str, ScheduledJob]) -> dict[str, ScheduledJob]:
        for name in jobs:
            if not name.replace("_", "").replace("-", "").isalnum() or len(name) > 64:
                raise ValueError(
                    f"job name '{name}' must be at most 64 letters, digits, '_' or '-'"
                )
        return jobs


class SkewlessConfig(_Strict):
    """The whole experiment config."""

    name: str
    data: DataConfig
    features: FeaturesConfig = Field(default_factory=FeaturesConfig)
    feature_store: FeatureStoreConfig = Field(default_factory=FeatureStoreConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    backtest: BacktestConfig = Field(default_factory=BacktestConfig)
    tuning: TuningConfig = Field(default_factory=TuningConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    registry: RegistryConfig = Field(default_factory=RegistryConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    streaming: StreamingConfig | None = Field(
        default=None, description="the broker `skewless stream` consumes rows from"
    )

    @model_validator(mode="wrap")
    @classmethod
    def _durations_in_periods(
        cls, raw: Any, handler: ModelWrapValidatorHandler[SkewlessConfig]
    ) -> SkewlessConfig:
        """Validate with duration strings counted in the config's own frequency."""
        with _counting_in(raw.get("data") if isinstance(raw, dict) else None):
            return handler(raw)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if len(value) > 63:
            raise ValueError("must be at most 63 characters (it names the Feast project)")
        if not value.replace("_", "").isalnum():
            raise ValueError(f"'{value}' must contain only letters, digits and underscores")
        return value

    @property
    def project(self) -> str:
        return self.feature_store.project or self.name

    @property
    def model_name(self) -> str:
        """The registered model's name."""
        return self.registry.model_name or f"{self.name}_forecaster"


@contextmanager
def _counting_in(data: Any) -> Iterator[None]:
    """Durations count in ``data``'s frequency (raw, not yet validated) while inside."""
    if isinstance(data, DataConfig):
        data = {"frequency": data.frequency, "timezone": data.timezone}
    try:
        counting = frequency(data.get("frequency", "h"), data.get("timezone"))
    except (AttributeError, ValueError, TypeError):  # not a mapping, or its own errors follow
        counting = None
    token = _COUNTING.set(counting)
    try:
        yield
    finally:
        _COUNTING.reset(token)


def skewless_home() -> Path:
    """The folder that holds all state: the Feast repo and stores, later the registry."""
    return Path(os.environ.get(HOME_ENV, DEFAULT_HOME)).resolve()


def load_config(
    path: str | Path,
    overrides: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
) -> SkewlessConfig:
    """Read, override and validate a config; relative source paths resolve against the file."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise ConfigError(f"config file '{path}' does not exist") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file '{path}' is not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(
            f"config file '{path}' must hold a mapping of keys, not {type(raw).__name__}"
        )
    env = os.environ if environ is None else environ
    env_overrides = [
        f"{key[len(ENV_PREFIX) :].lower().replace('__', '.')}={value}"
        for key, value in sorted(env.items())
        if key.startswith(ENV_PREFIX)
    ]
    for override in [*env_overrides, *overrides]:
        _apply_override(raw, override)
    _resolve_source_paths(raw, path.resolve().parent)
    return validate_config(raw, origin=str(path))


def validate_config(raw: dict[str, Any], origin: str = "config") -> SkewlessConfig:
    try:
        return SkewlessConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin} is invalid:\n" + _describe(exc)) from None


def _describe(exc: ValidationError) -> str:
    lines = []
    for error in exc.errors():
        # A discriminated union adds its tag to the path (online_store.redis.url): drop it.
        loc = error["loc"]
        parts = [p for i, p in enumerate(loc) if i == 0 or loc[i - 1] not in _STORE_KEYS]
        key = ".".join(str(part) for part in parts) or "(top level)"
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key; check its spelling against docs/config.md"
        elif error["type"] == "missing":
            message = "required key is missing"
        got = "" if error["type"] == "missing" else f" (got {_excerpt(error['input'])})"
        lines.append(f"  - {key}: {message}{got}")
    return "\n".join(lines)


def _apply_override(raw: dict[str, Any], override: str) -> None:
    key, sep, text = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{override}' must look like key.path=value")
    value = yaml.safe_load(text) if text.strip() else None
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{override}': '{part}' holds a value, not a mapping")
        node = child
    node[parts[-1]] = value


def _resolve_source_paths(raw: dict[str, Any], base: Path) -> None:
    data = raw.get("data")
    sources = data.get("sources") if isinstance(data, dict) else None
    for source in sources if isinstance(sources, list) else []:
        if isinstance(source, dict) and isinstance(source.get("path"), str):
            source["path"] = str((base / source["path"]).resolve())


def _excerpt(value: object, limit: int = 80) -> str:
    """A value as an error shows it: never more than ``limit`` characters of it."""
    shown = repr(value)
    return shown if len(shown) <= limit else f"{shown[:limit]}... ({len(shown)} characters)"
