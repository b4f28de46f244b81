"""Per-entity isolation: every refused entity named with its own error, every other entity's
rows made in few calls, by halving rather than one call per entity."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skewless.bundle.bundle import PreparedWindows, isolated
from skewless.core.errors import DataValidationError


class Refuser:
    """Refuses any rows that hold a bad entity, naming the first; counts its calls."""

    def __init__(self, bad: set[int]) -> None:
        self.bad, self.calls = bad, 0

    def __call__(self, rows: pd.DataFrame) -> list[int]:
        self.calls += 1
        found = sorted(self.bad & set(rows["id"]))
        if found:
            raise DataValidationError("refused", [f"entity {found[0]}"])
        return sorted(set(rows["id"]))


def fleet(entities: int) -> pd.DataFrame:
    """Three rows per entity, the entities interleaved as a careless caller might send them."""
    return pd.DataFrame({"id": np.tile(np.arange(entities), 3), "x": np.arange(3 * entities)})


@pytest.mark.parametrize("bad", [set(), {7}, {0, 999}, {3, 4, 5, 500}])
def test_each_refused_entity_is_named_and_every_other_is_made(bad: set[int]) -> None:
    refuser = Refuser(bad)
    made, refused = isolated(refuser, fleet(1000), "id")
    assert sorted(e for part in made for e in part) == sorted(set(range(1000)) - bad)
    assert set(refused) == bad
    assert all(f"entity {entity}" in str(refused[entity]) for entity in bad)
    # halving: about 2 calls per level of 10 for each bad entity, never one call per entity
    assert refuser.calls <= 1 + 2 * 10 * len(bad)


def test_an_entity_refused_alone_keeps_its_own_error() -> None:
    made, refused = isolated(Refuser({1}), fleet(1), "id")
    assert made == [[0]] and not refused
    made, refused = isolated(Refuser({0}), fleet(1), "id")
    assert made == [] and "entity 0" in str(refused[0])


def test_prepared_parts_join_into_one_model_call() -> None:
    def part(entities: list[int], hour: int) -> PreparedWindows:
        count = len(entities)
        times = pd.DatetimeIndex([pd.Timestamp("2026-01-01", tz="UTC")] * count) + pd.Timedelta(
            hours=hour
        )
        return PreparedWindows(
            np.full((count, 4, 2), hour, np.float32), np.array(entities), times, None
        )

    joined = PreparedWindows.joined([part([1, 2], 0), part([5], 3)])
    assert joined.entities.tolist() == [1, 2, 5]
    assert joined.inputs[:, 0, 0].tolist() == [0, 0, 3] and joined.future is None
    assert [t.hour for t in joined.last_times] == [0, 0, 3]
