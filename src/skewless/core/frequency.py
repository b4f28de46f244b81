"""The series frequency: one parsed, fixed-length step used by validation and windowing."""

from __future__ import annotations

import warnings
from functools import cache

import pandas as pd
from pandas.tseries.offsets import Tick


@cache  # called on every request with the config's frequency; pandas parses in ~0.2 ms
def parse_frequency(alias: str) -> pd.Timedelta:
    """Return the fixed step of a pandas frequency alias such as ``h``, ``15min`` or ``D``.

    Calendar-dependent frequencies (month, year) have no fixed step, so gap detection and
    window timestamps could not be exact; they are refused with the list of what works.
    """
    try:
        with warnings.catch_warnings():  # deprecated aliases warn; the message below is enough
            warnings.simplefilter("ignore", FutureWarning)
            offset = pd.tseries.frequencies.to_offset(alias)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"'{alias}' is not a pandas frequency alias; use a fixed step such as "
            "'15min', 'h' or 'D'"
        ) from exc
    if not isinstance(offset, Tick):
        raise ValueError(
            f"frequency '{alias}' has no fixed length; use a fixed step such as "
            "'15min', 'h', 'D' or '7D'"
        )
    # In nanoseconds: pandas 2.3 adds a Timedelta of unit "s" to a datetime as nothing.
    return pd.Timedelta(offset).as_unit("ns")
