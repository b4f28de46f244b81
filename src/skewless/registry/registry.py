"""Registered versions and their aliases: ``latest`` is always the newest version (MLflow
resolves that alias itself and reserves the name); ``staging`` and ``production`` move only by
promotion, and each move is recorded in the registry itself (a tag
on the registered model) so that rollback knows where an alias was before.

Versions carry their backtest metrics as tags, beside the naive forecast's on the same folds
(``naive_mse``...) and the skill against it (``skill_mse``...): a promotion refuses a version
that loses to naive, since serving it would be worse than repeating the last value.

A registry talks to its store through a client of its own and never sets MLflow's process-wide
URIs, so that two registries in one process do not redirect each other."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.artifacts import download_artifacts
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from skewless.core.errors import RegistryError, UnservableVersionError
from skewless.core.feed import Feed, feeding_problems

if TYPE_CHECKING:
    from skewless.bundle.bundle import ForecastBundle

LATEST = "latest"
PROMOTABLE = ("staging", "production")
NAIVE_PREFIX = "naive_"  # naive_mse: the naive forecast's mse on the version's backtest folds
SKILL_PREFIX = "skill_"  # skill_mse: 1 - mse / naive_mse, above 0 beats naive
_METRIC_TAG = "metric."
_MODEL_TAG = "skewless.model"  # the model type, e.g. nlinear
_PARAMS_TAG = "skewless.model.params"  # its key parameters, as JSON
_HISTORY_TAG = "skewless.history."
_NEEDS_TAG = "skewless.feed.needed"  # what the version needs of the online store
_TRAINED_STORE_TAG = "skewless.feed.trained_store"  # the store it was trained beside


@dataclass(frozen=True)
class VersionInfo:
    version: int
    aliases: list[str]
    metrics: dict[str, float]
    run_id: str | None
    created: int  # ms since the epoch, as MLflow keeps it
    model: str | None = None  # None: registered before the model type was recorded
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Promotion:
    previous: int | None  # the version the alias held before (None: none)
    note: str | None = None  # a check that could not be made, and why


class ModelRegistry:
    """The MLflow model registry at ``uri`` (SQLite, PostgreSQL or a tracking server)."""

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def record_metrics(self, name: str, version: int, metrics: dict[str, float]) -> None:
        """Tag a version with its backtest metrics, which promotions compare."""
        for metric, value in metrics.items():
            self.client.set_model_version_tag(name, str(version), f"{_METRIC_TAG}{metric}", value)

    def record_model(self, name: str, version: int, model: str, params: dict[str, Any]) -> None:
        """Tag a version with its model type and key parameters, which listings show."""
        self.client.set_model_version_tag(name, str(version), _MODEL_TAG, model)
        self.client.set_model_version_tag(name, str(version), _PARAMS_TAG, json.dumps(params))

    def record_feed(self, name: str, version: int, needed: Feed, store: Feed) -> None:
        """Tag a version with what it needs of the online store and the store it was trained
        beside, so that a promotion can check it without loading the model."""
        self.client.set_model_version_tag(name, str(version), _NEEDS_TAG, needed.to_json())
        self.client.set_model_version_tag(name, str(version), _TRAINED_STORE_TAG, store.to_json())

    def versions(self, name: str) -> list[VersionInfo]:
        """Every version, newest first."""
        aliases = dict(self._model(name).aliases)  # searched versions do not carry them
        found = self.client.search_model_versions(f"name='{name}'")
        infos = sorted((self._info(v) for v in found), key=lambda v: -v.version)
        for info in infos:
            info.aliases.extend(sorted(a for a, v in aliases.items() if int(v) == info.version))
        if infos:
            infos[0].aliases.insert(0, LATEST)
        return infos

    def describe(self, name: str) -> dict[str, Any]:
        model = self._model(name)
        return {
            "name": name,
            "description": model.description,
            "aliases": dict(model.aliases),
            "history": {alias: self.history(name, alias) for alias in PROMOTABLE},
            "versions": self.versions(name),
        }

    def version_of(self, name: str, alias_or_version: str) -> int:
        """A version number from a number or an alias, checked to exist."""
        if alias_or_version.isdigit():
            number = int(alias_or_version)
            known = [v.version for v in self.versions(name)]
            if number not in known:
                raise RegistryError(f"'{name}' has no version {number}; versions: {known}")
            return number
        aliases = dict(self._model(name).aliases)
        if alias_or_version.lower() == LATEST:
            return int(self.client.get_model_version_by_alias(name, LATEST).version)
        if alias_or_version not in aliases:
            raise RegistryError(
                f"'{name}' has no alias '{alias_or_version}'; aliases: {[LATEST, *sorted(aliases)]}"
            )
        return int(aliases[alias_or_version])

    def load_bundle(self, name: str, alias_or_version: str | int) -> ForecastBundle:
        """The bundle of a version, named by its number or an alias (checked to exist first)."""
        # Imported here: the bundle brings the model zoo, which commands that only move aliases
        # do not need.
        from skewless.registry.pyfunc import logged_bundle

        return logged_bundle(self.download(name, alias_or_version))

    def download(self, name: str, alias_or_version: str | int) -> Path:
        """A local copy of a version's logged model folder, read from the version's own
        artifact location, which this registry's client resolves: MLflow's ``models:/`` URIs
        would be resolved through the process-wide registry URI."""
        version = self.version_of(name, str(alias_or_version))
        location = self.client.get_model_version_download_uri(name, str(version))
        return Path(download_artifacts(location, tracking_uri=self.uri))

    def promote(
        self,
        name: str,
        version: int,
        alias: str,
        metric: str,
        force: bool = False,
        store: Feed | None = None,
    ) -> Promotion:
        """Point ``alias`` at ``version``; returns the version it held before.

        Refused when the online store (``store``, default: the one the version was trained
        beside) cannot feed the version, ``force`` or not; and, unless ``force``, when the
        candidate's backtest ``metric`` is worse (higher) than the naive forecast's on the same
        folds, or than the current holder's. A version with no naive score recorded (registered
        before it was) is promoted on the holder comparison alone, with a note saying so.
        """
        if alias not in PROMOTABLE:
            raise RegistryError(f"promote to one of {list(PROMOTABLE)}, not '{alias}'")
        found = self.client.get_model_version(name, str(self._check(name, version)))
        _require_feedable(found.tags, version, store)
        candidate = self._info(found)
        current = dict(self._model(name).aliases).get(alias)
        if current is not None and int(current) == version:
            return Promotion(version)
        note = None if force else _check_against_naive(candidate, metric)
        if current is not None and not force:
            holder = self._info(self.client.get_model_version(name, current))
            ours, theirs = candidate.metrics.get(metric), holder.metrics.get(metric)
            if ours is not None and theirs is not None and ours > theirs:
                raise RegistryError(
                    f"version {version} has backtest {metric} {ours:.6g}, worse than "
                    f"{theirs:.6g} of version {current} ({alias}); use --force to promote anyway"
                )
        self.client.set_registered_model_alias(name, alias, str(version))
        history = self.history(name, alias)
        if not history and current is not None:
            history = [int(current)]
        self._write_history(name, alias, [*history, version])
        return Promotion(int(current) if current is not None else None, note)

    def rollback(self, name: str, alias: str) -> tuple[int, int]:
        """Move ``alias`` back to the version it held before; returns (from, to)."""
        if alias not in PROMOTABLE:
            raise RegistryError(f"roll back one of {list(PROMOTABLE)}, not '{alias}'")
        history = self.history(name, alias)
        if len(history) < 2:
            raise RegistryError(
                f"'{name}@{alias}' has no earlier version to roll back to (history: {history})"
            )
        *earlier, current = history
        self.client.set_registered_model_alias(name, alias, str(earlier[-1]))
        self._write_history(name, alias, earlier)
        return current, earlier[-1]

    def history(self, name: str, alias: str) -> list[int]:
        """The versions ``alias`` has pointed at, oldest first, as promotions recorded them."""
        text = self._model(name).tags.get(f"{_HISTORY_TAG}{alias}", "")
        return [int(v) for v in text.split(",") if v]

    def _write_history(self, name: str, alias: str, versions: list[int]) -> None:
        self.client.set_registered_model_tag(
            name, f"{_HISTORY_TAG}{alias}", ",".join(str(v) for v in versions)
        )

    def _model(self, name: str) -> Any:
        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            known = sorted(m.name for m in self.client.search_registered_models())
            raise RegistryError(
                f"no registered model '{name}'; registered models: {known or 'none yet'}"
            ) from None

    def _check(self, name: str, version: int) -> int:
        return self.version_of(name, str(version))

    @staticmethod
    def _info(version: Any) -> VersionInfo:
        return VersionInfo(
            version=int(version.version),
            aliases=[],
            metrics={
                key.removeprefix(_METRIC_TAG): float(value)
                for key, value in version.tags.items()
                if key.startswith(_METRIC_TAG)
            },
            run_id=version.run_id,
            created=version.creation_timestamp,
            model=version.tags.get(_MODEL_TAG),
            params=json.loads(version.tags.get(_PARAMS_TAG, "{}")),
        )


def _check_against_naive(candidate: VersionInfo, metric: str) -> str | None:
    """Refuse a version whose backtest ``metric`` is worse than naive's on the same folds;
    a note when either was not recorded."""
    ours = candidate.metrics.get(metric)
    naive = candidate.metrics.get(f"{NAIVE_PREFIX}{metric}")
    if ours is None or naive is None:
        missing = metric if ours is None else f"naive {metric}"
        return (
            f"version {candidate.version} has no backtest {missing} recorded "
            "(versions registered before skewless recorded naive's score have none), so it was "
            "not compared with the naive forecast"
        )
    if ours > naive:
        raise RegistryError(
            f"version {candidate.version} loses to the naive forecast on its own backtest: "
            f"{metric} {ours:.6g} against naive's {naive:.6g} on the same folds; use --force "
            "to promote anyway"
        )
    return None


def _require_feedable(tags: dict[str, str], version: int, store: Feed | None) -> None:
    """Refuse a version its online store cannot feed (versions registered before these tags
    existed are not checked)."""
    if _NEEDS_TAG not in tags:
        return
    if store is None:
        if _TRAINED_STORE_TAG not in tags:
            return
        store = Feed.from_json(tags[_TRAINED_STORE_TAG])
    problems = feeding_problems(Feed.from_json(tags[_NEEDS_TAG]), store)
    if problems:
        raise UnservableVersionError(
            f"version {version} cannot be served from the online store: {'; '.join(problems)} "
            "(--force does not override this: every request would fail)"
        )
