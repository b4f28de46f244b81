"""What every CLI verb shares: the consoles, skewless errors shown as one red line, and numbers
shown with the digits that fit their scale."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.markup import escape

from skewless.core.errors import SkewlessError

console = Console(width=None if Console().is_terminal else 120)
errors = Console(stderr=True)

SIGNIFICANT = 4  # digits every printed metric keeps, whatever its scale


def number(value: float) -> str:
    """``value`` to SIGNIFICANT significant digits: fixed point from 0.001 to a million
    (0.008555, 7.239, 12345), scientific outside (1.100e-04): an MSE of 1.1e-4 is not 0.0001."""
    if not math.isfinite(value) or value == 0:
        return f"{value:g}"
    rounded = float(f"{value:.{SIGNIFICANT - 1}e}")  # 999.97 is 1000 before it is printed
    if not 1e-3 <= abs(rounded) < 1e6:
        return f"{value:.{SIGNIFICANT - 1}e}"
    decimals = max(0, SIGNIFICANT - 1 - math.floor(math.log10(abs(rounded))))
    return f"{value:.{decimals}f}"


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn skewless errors into a red message and exit code 1, without a traceback."""
    try:
        yield
    except SkewlessError as exc:
        errors.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
