"""One exception hierarchy: every error says what was wrong and what to do about it."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime


class SkewlessError(Exception):
    """Base of every error skewless raises on purpose.

    Errors cross process boundaries (Ray Serve deployments), so they pickle: subclasses whose
    constructor takes other arguments than the message keep them in ``_arguments``.
    """

    _arguments: tuple[object, ...] | None = None

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:
        return type(self), self._arguments if self._arguments is not None else self.args


class ConfigError(SkewlessError):
    """The experiment config is missing, unreadable or invalid."""


class SourceError(SkewlessError):
    """A raw data source cannot be read."""


class DataValidationError(SkewlessError):
    """Raw rows failed validation; nothing was written."""

    def __init__(self, message: str, problems: list[str]) -> None:
        self._arguments = (message, problems)
        super().__init__(message + "\n" + "\n".join(f"  - {p}" for p in problems))
        self.problems = problems


class FeatureStoreError(SkewlessError):
    """The feature store is not in a state that allows the request."""


class StoreUnavailableError(FeatureStoreError):
    """A store did not answer (down, unreachable, too slow): the request may be retried."""


class UnknownEntityError(FeatureStoreError):
    """Entities were requested that the store has never seen."""

    def __init__(self, entities: Iterable[object], entity_key: str) -> None:
        self.entities = list(entities)
        self._arguments = (self.entities, entity_key)
        shown = ", ".join(repr(e) for e in self.entities[:20])
        more = f" (and {len(self.entities) - 20} more)" if len(self.entities) > 20 else ""
        super().__init__(
            f"unknown {entity_key} value(s): {shown}{more}; ingest and materialize data for "
            "them first, or check the ids"
        )


class StaleFeaturesError(FeatureStoreError):
    """Online windows end earlier than the requested time point allows."""

    def __init__(self, window_ends: Mapping[object, datetime], required_end: datetime) -> None:
        self.window_ends = dict(window_ends)
        self.required_end = required_end
        self._arguments = (self.window_ends, required_end)
        shown = ", ".join(
            f"{e!r} (ends {t.isoformat()})" for e, t in list(window_ends.items())[:20]
        )
        super().__init__(
            f"stale online windows for {shown}: serving at this time point needs data up to "
            f"{required_end.isoformat()}; push or materialize newer rows, or ask for an "
            "earlier time point or 'latest' (each window as it is)"
        )


class BundleError(SkewlessError):
    """A forecast bundle artifact is missing a part or cannot be read."""


class RegistryError(SkewlessError):
    """A registered model, version or alias does not exist, or a move was refused."""


class UnservableVersionError(RegistryError):
    """A model version that the online store cannot feed (too short a window, other variables,
    frequency or entity key): never served, never promoted."""


class RequestError(SkewlessError):
    """A serving request asks for something that cannot be answered (bad time point, too many
    entities, an entity id of the wrong type)."""


class NotFittedError(SkewlessError):
    """``predict`` or ``transform`` was called before ``fit``."""


class ComputeError(SkewlessError):
    """The compute engine failed (a Ray cluster lost, a task whose worker died on every retry),
    as opposed to the work itself raising."""


class OutputError(SkewlessError):
    """Results could not be written where they were asked to go (a full disk, a database gone);
    nothing half-written is left."""


class BrokerError(SkewlessError):
    """A message broker refused what streaming asked of it (a stream or queue that cannot be
    made, a subject no stream holds)."""


class BrokerUnavailableError(BrokerError):
    """The message broker did not answer: ``skewless stream`` retries with backoff, and gives
    up with this error only after ``streaming.connect_attempts`` tries."""


class JobError(SkewlessError):
    """A scheduled job failed (a command that exited non-zero), or cannot run where it was
    asked to."""
