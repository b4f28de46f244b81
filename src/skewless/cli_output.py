"""What every CLI verb shares: the consoles, and skewless errors shown as one red line."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from skewless.core.errors import SkewlessError

console = Console(width=None if Console().is_terminal else 120)
errors = Console(stderr=True)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn skewless errors into a red message and exit code 1, without a traceback."""
    try:
        yield
    except SkewlessError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
