"""Cron expressions of scheduled jobs, read one way by the config and by the scheduler.

Five fields as crontab has them (minute, hour, day of month, month, day of week), or six with
seconds first. Day-of-week numbers count as crontab counts them (0 and 7 are Sunday), not as
APScheduler 3 does (0 is Monday there); names (mon-sun) mean the same in both.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.cron import CronTrigger

_FIELDS = ("second", "minute", "hour", "day", "month", "day_of_week")
_WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat", "sun")


def cron_trigger(expression: str, timezone: str = "UTC") -> CronTrigger:
    """The trigger of ``expression``; ValueError saying what is wrong when it does not parse."""
    from apscheduler.triggers.cron import CronTrigger

    values = expression.split()
    if len(values) not in (5, 6):
        raise ValueError(
            f"'{expression}' has {len(values)} fields; give 5 (minute hour day month weekday) "
            "or 6 (second first)"
        )
    if len(values) == 5:
        values = ["0", *values]
    fields = dict(zip(_FIELDS, values, strict=True))
    try:
        fields["day_of_week"] = ",".join(
            _weekday(item) for item in fields["day_of_week"].split(",")
        )
        return CronTrigger(**fields, timezone=timezone)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"'{expression}' is not a cron expression: {exc}") from None


def _weekday(item: str) -> str:
    """One item of a crontab day-of-week list (0-7, Sunday 0 and 7) with names for numbers,
    which APScheduler reads as crontab does."""
    if not re.search(r"\d", item):
        return item
    match = re.fullmatch(r"(\d+)(?:-(\d+))?(/\d+)?", item)
    if match is None:
        raise ValueError(f"day of week '{item}' is not a number, a range or a step of them")
    first, last, step = int(match.group(1)), match.group(2), match.group(3) or ""
    if first > 7 or (last is not None and int(last) > 7):
        raise ValueError(f"day of week '{item}' is out of 0-7")
    if last is None:
        return _WEEKDAYS[first] + step
    end = int(last)
    if first == 0 and end >= 1 and not step:  # Sunday starts the crontab week, not APScheduler's
        return f"sun,mon-{_WEEKDAYS[end]}" if end < 7 else "*"
    if first == 0 and step:
        raise ValueError(f"day of week '{item}': write steps from Sunday with names or '*'")
    return f"{_WEEKDAYS[first]}-{_WEEKDAYS[end]}{step}"
