"""THE windowing: exact windows, never across entities or gaps."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skewless.core.frequency import frequency
from skewless.preprocessing.windows import cut_windows, segment_ids, window_starts


def test_windows_are_exact_slices_with_stride_one() -> None:
    values = np.arange(20, dtype=np.float32).reshape(10, 2)
    windows = cut_windows(values, lookback=3, horizon=2)
    assert len(windows) == 10 - 5 + 1
    np.testing.assert_array_equal(windows.inputs[0], values[0:3])
    np.testing.assert_array_equal(windows.targets[0], values[3:5])
    np.testing.assert_array_equal(windows.inputs[-1], values[5:8])
    np.testing.assert_array_equal(windows.targets[-1], values[8:10])
    np.testing.assert_array_equal(windows.starts, np.arange(6))


def test_windows_never_cross_entities_or_gaps() -> None:
    times = pd.DatetimeIndex(
        list(pd.date_range("2020-01-01", periods=6, freq="h"))
        + list(pd.date_range("2020-01-01 08:00", periods=4, freq="h"))  # gap after 05:00
        + list(pd.date_range("2020-01-01", periods=5, freq="h")),  # next entity
        tz="UTC",
    )
    entities = np.array([1] * 10 + [2] * 5)
    segments = segment_ids(entities, times, frequency("h"))
    assert segments.tolist() == [0] * 6 + [1] * 4 + [2] * 5
    windows = cut_windows(np.arange(15.0)[:, None], lookback=2, horizon=2, segments=segments)
    # 6-row segment: 3 windows; 4-row: 1; 5-row: 2.
    assert windows.starts.tolist() == [0, 1, 2, 6, 10, 11]
    for start, inputs, targets in zip(windows.starts, windows.inputs, windows.targets, strict=True):
        covered = segments[start : start + 4]
        assert (covered == covered[0]).all()
        assert inputs[0, 0] == start and targets[-1, 0] == start + 3


def test_stride_counts_from_each_segment_start() -> None:
    segments = np.array([0] * 7 + [1] * 7)
    assert window_starts(segments, 3, stride=2).tolist() == [0, 2, 4, 7, 9, 11]


def test_serving_windows_have_an_empty_horizon_and_short_series_have_none() -> None:
    values = np.ones((5, 3), dtype=np.float32)
    assert cut_windows(values, 5, 0).inputs.shape == (1, 5, 3)
    empty = cut_windows(values, 4, 2)
    assert len(empty) == 0 and empty.inputs.shape == (0, 4, 3)
    with pytest.raises(ValueError, match="lookback must be >= 1"):
        cut_windows(values, 0, 1)
