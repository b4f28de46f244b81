"""Batches of work that a compute engine maps a function over.

Training code never loops over batches itself: it hands a function to ``Batches.map``, which runs
it on every batch where the engine puts it (here, or in a Ray task next to the data) and returns
the results in batch order, for the caller to reduce. Functions travel by cloudpickle on Ray, so
they may be closures, but must not capture anything large.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, Protocol, TypeVar

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
U = TypeVar("U")
R = TypeVar("R")


class Batches(Protocol[T_co]):
    def map(self, function: Callable[[T_co], R]) -> Iterator[R]:
        """``function`` of every batch, in batch order."""
        ...


class Mapped(Generic[T, U]):
    """``inner``'s batches turned into others by ``convert``, where each batch is made."""

    def __init__(self, inner: Batches[T], convert: Callable[[T], U]) -> None:
        self.inner, self.convert = inner, convert

    def map(self, function: Callable[[U], R]) -> Iterator[R]:
        convert = self.convert
        return self.inner.map(lambda batch: function(convert(batch)))


class InMemory(Generic[T]):
    """Batches already at hand, mapped in this process."""

    def __init__(self, *batches: T) -> None:
        self.batches = batches

    def map(self, function: Callable[[T], R]) -> Iterator[R]:
        return (function(batch) for batch in self.batches)


def each(batches: Batches[T]) -> Iterator[T]:
    """Every batch itself, brought to this process."""
    return batches.map(_same)


def _same(batch: T) -> T:
    return batch
