"""Whether a store can feed a version: the time zone of its calendar too."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

from skewless.core.feed import Feed, feeding_problems

STORE = Feed("shop", "int64", "MS", ("sales",), 512, "Europe/Berlin")


def test_a_version_trained_in_another_zone_is_not_fed() -> None:
    needed = replace(STORE, points=24, timezone="UTC")
    (problem,) = feeding_problems(needed, STORE)
    assert "trained on the calendar of UTC" in problem and "Europe/Berlin" in problem
    assert feeding_problems(replace(needed, timezone="Europe/Berlin"), STORE) == []


def test_a_feed_recorded_before_zones_were_kept_is_not_judged_on_them() -> None:
    recorded = {k: v for k, v in asdict(STORE).items() if k != "timezone"}
    old = Feed.from_json(json.dumps(recorded))
    assert old.timezone is None and feeding_problems(replace(old, points=24), STORE) == []
