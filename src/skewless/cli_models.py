"""``skewless models``: list, describe, promote and roll back registered forecast bundles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from skewless.cli_output import console, errors, number, user_errors

if TYPE_CHECKING:
    from skewless.core.config import SkewlessConfig
    from skewless.registry.registry import ModelRegistry, VersionInfo

models_app = typer.Typer(help="Registered model versions and their aliases.", no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="registered model name, e.g. etth_forecaster")]
UriOpt = Annotated[
    str | None,
    typer.Option(
        # The variable that sets tracking.uri in a config: these verbs need no config file.
        envvar="SKEWLESS__TRACKING__URI",
        help="MLflow tracking URI (default: the config's tracking.uri where a verb takes "
        "--config, else SQLite under SKEWLESS_HOME)",
        show_default=False,
    ),
]
AliasOpt = Annotated[str, typer.Option(help="staging or production")]
MetricOpt = Annotated[str, typer.Option(help="backtest metric: mse, mae, rmse, smape or mase")]


def _registry(uri: str | None, config: SkewlessConfig | None = None) -> ModelRegistry:
    """The registry at ``uri``, else the config's (tracking.uri, resolved as every verb does),
    else the embedded one."""
    from skewless.core.config import skewless_home
    from skewless.core.stores import embedded_sqlite, tracking_uri
    from skewless.registry.registry import ModelRegistry

    home = skewless_home()
    if uri:
        return ModelRegistry(uri)
    if config is not None:
        return ModelRegistry(tracking_uri(config, home))
    return ModelRegistry(embedded_sqlite(home, "mlflow.db"))


def _versions_table(title: str, versions: list[VersionInfo], metric: str) -> Table:
    """Each version's aliases, model type and key parameters, and its backtest ``metric``
    beside the naive forecast's on the same folds and the skill against it."""
    from skewless.registry.registry import NAIVE_PREFIX, SKILL_PREFIX

    table = Table(title=title)
    for column in ("version", "aliases", "created (UTC)"):
        table.add_column(column, justify="right")
    for column in ("model", "parameters"):
        table.add_column(column)
    for column in (metric, f"naive {metric}", "skill"):
        table.add_column(column, justify="right")
    for v in versions:
        created = dt.datetime.fromtimestamp(v.created / 1000, dt.UTC)
        scores = [v.metrics.get(f"{prefix}{metric}") for prefix in ("", NAIVE_PREFIX, SKILL_PREFIX)]
        table.add_row(
            str(v.version),
            ", ".join(v.aliases),
            f"{created:%Y-%m-%d %H:%M}",
            v.model or "",
            _parameters(v.params),
            *("" if score is None else number(score) for score in scores),
        )
    return table


def _parameters(params: dict[str, Any]) -> str:
    return ", ".join(f"{key}={value}" for key, value in params.items())


@models_app.command("list")
def list_versions(name: NameArg, metric: MetricOpt = "mse", tracking_uri: UriOpt = None) -> None:
    """Every version, newest first, with its aliases, model and key parameters, and its backtest
    metric beside the naive forecast's and the skill against it."""
    with user_errors():
        console.print(_versions_table(name, _registry(tracking_uri).versions(name), metric))


@models_app.command()
def describe(name: NameArg, metric: MetricOpt = "mse", tracking_uri: UriOpt = None) -> None:
    """Aliases, the promotion history of each, and every version (as ``list`` shows them)."""
    with user_errors():
        info = _registry(tracking_uri).describe(name)
        console.print(f"[bold]{name}[/]: {len(info['versions'])} version(s)")
        for alias, version in sorted(info["aliases"].items()):
            console.print(f"  {alias} -> version {version}")
        for alias, history in info["history"].items():
            if history:
                console.print(f"  {alias} history (oldest first): {history}")
        console.print(_versions_table("versions", info["versions"], metric))


@models_app.command()
def promote(
    name: NameArg,
    version: Annotated[str, typer.Argument(help="version number, or an alias such as latest")],
    alias: AliasOpt,
    force: Annotated[
        bool, typer.Option(help="promote even if its metric is worse than naive's or the holder's")
    ] = False,
    metric: MetricOpt = "mse",
    config: Annotated[
        Path | None,
        typer.Option(
            help="experiment config of the feature store that will serve it (default: the store "
            "the version was trained beside); its tracking.uri names the registry",
            show_default=False,
        ),
    ] = None,
    tracking_uri: UriOpt = None,
) -> None:
    """Point ALIAS at VERSION, unless it backtested worse than the naive forecast on the same
    folds or than the current holder, or the online store cannot feed it (that, --force does not
    override)."""
    with user_errors():
        from skewless.core.config import load_config
        from skewless.core.feed import Feed

        loaded = None if config is None else load_config(config, [])
        store = None if loaded is None else Feed.of_store(loaded)
        registry = _registry(tracking_uri, loaded)
        number = registry.version_of(name, version)
        promotion = registry.promote(name, number, alias, metric, force, store)
        before = promotion.previous
        moved = "already there" if before == number else f"was {before or 'unset'}"
        console.print(f"{name}@{alias} -> version {number} ({moved})")
        if promotion.note:
            errors.print(f"[yellow]note:[/] {escape(promotion.note)}", soft_wrap=True)


@models_app.command()
def rollback(name: NameArg, alias: AliasOpt = "production", tracking_uri: UriOpt = None) -> None:
    """Move ALIAS back to the version it held before its last promotion."""
    with user_errors():
        current, previous = _registry(tracking_uri).rollback(name, alias)
        console.print(f"{name}@{alias} -> version {previous} (was {current})")
