"""``skewless models``: list, describe, promote and roll back registered forecast bundles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from skewless.cli_output import console, user_errors

if TYPE_CHECKING:
    from skewless.core.config import SkewlessConfig
    from skewless.registry.registry import ModelRegistry

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


@models_app.command("list")
def list_versions(name: NameArg, tracking_uri: UriOpt = None) -> None:
    """Every version, newest first, with its aliases and backtest metrics."""
    with user_errors():
        versions = _registry(tracking_uri).versions(name)
        metrics = sorted({m for v in versions for m in v.metrics})
        table = Table(title=name)
        for column in ("version", "aliases", "created (UTC)", *metrics):
            table.add_column(column, justify="right")
        for v in versions:
            created = dt.datetime.fromtimestamp(v.created / 1000, dt.UTC)
            table.add_row(
                str(v.version),
                ", ".join(v.aliases),
                f"{created:%Y-%m-%d %H:%M}",
                *(f"{v.metrics[m]:.4f}" if m in v.metrics else "" for m in metrics),
            )
        console.print(table)


@models_app.command()
def describe(name: NameArg, tracking_uri: UriOpt = None) -> None:
    """Aliases, the promotion history of each, and the number of versions."""
    with user_errors():
        info = _registry(tracking_uri).describe(name)
        console.print(f"[bold]{name}[/]: {info['versions']} version(s)")
        for alias, version in sorted(info["aliases"].items()):
            console.print(f"  {alias} -> version {version}")
        for alias, history in info["history"].items():
            if history:
                console.print(f"  {alias} history (oldest first): {history}")


@models_app.command()
def promote(
    name: NameArg,
    version: Annotated[str, typer.Argument(help="version number, or an alias such as latest")],
    alias: AliasOpt,
    force: Annotated[bool, typer.Option(help="promote even if its metric is worse")] = False,
    metric: Annotated[str, typer.Option(help="backtest metric to compare")] = "mse",
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
    """Point ALIAS at VERSION, unless it backtested worse than the current holder, or the
    online store cannot feed it (that, --force does not override)."""
    with user_errors():
        from skewless.core.config import load_config
        from skewless.core.feed import Feed

        loaded = None if config is None else load_config(config, [])
        store = None if loaded is None else Feed.of_store(loaded)
        registry = _registry(tracking_uri, loaded)
        number = registry.version_of(name, version)
        before = registry.promote(name, number, alias, metric, force, store)
        moved = "already there" if before == number else f"was {before or 'unset'}"
        console.print(f"{name}@{alias} -> version {number} ({moved})")


@models_app.command()
def rollback(name: NameArg, alias: AliasOpt = "production", tracking_uri: UriOpt = None) -> None:
    """Move ALIAS back to the version it held before its last promotion."""
    with user_errors():
        current, previous = _registry(tracking_uri).rollback(name, alias)
        console.print(f"{name}@{alias} -> version {previous} (was {current})")
