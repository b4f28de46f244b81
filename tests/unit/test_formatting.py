"""The one number format of the CLI: four significant digits at every scale."""

from __future__ import annotations

import pytest

from skewless.cli_output import number


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        (1.1e-4, "1.100e-04"),  # a small MSE is not 0.0001
        (0.008555, "0.008555"),  # a rate is not 0.009
        (0.0085554, "0.008555"),
        (0.001, "0.001000"),
        (0.00099996, "0.001000"),  # rounds up into fixed point
        (0.66161, "0.6616"),
        (7.2391, "7.239"),
        (21.394, "21.39"),
        (999.97, "1000"),  # rounds to one more digit, not to 1000.0
        (12345.6, "12346"),  # whole numbers keep every digit up to a million
        (999999.0, "1.000e+06"),
        (1234567.0, "1.235e+06"),
        (-0.05, "-0.05000"),  # a negative skill
        (-3.3e-7, "-3.300e-07"),
        (6.0, "6.000"),
        (0.0, "0"),
        (float("nan"), "nan"),
        (float("inf"), "inf"),
    ],
)
def test_numbers_keep_four_significant_digits_at_every_scale(value: float, shown: str) -> None:
    assert number(value) == shown
