"""Progress of long loops deep in the library (epochs, boosting rounds), shown by whoever listens.

Library code calls :func:`report`; it costs nothing unless a caller, such as the CLI with its
progress bars, installed a listener with :func:`listening`. Like logging, the library never
decides how progress is shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[str, int, int], None]  # (what, done, total)

_listener: ContextVar[Listener | None] = ContextVar("skewless_progress", default=None)


def report(what: str, done: int, total: int) -> None:
    listener = _listener.get()
    if listener is not None:
        listener(what, done, total)


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
