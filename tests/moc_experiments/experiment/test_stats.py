"""Statistics of the reports, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from moc_experiments.experiment.stats import binomial_se, sd, t_interval


def test_t_interval_by_hand() -> None:
    # [1, 2, 3]: mean 2, sd 1, n 3 -> 2 ± t(0.975, df 2) / sqrt(3) = 2 ± 4.303 / 1.7321
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - 4.303 / math.sqrt(3)) and hi == pytest.approx(2 + 4.303 / math.sqrt(3))
    # df 22 is not in the table: the next smaller listed df (20, t = 2.086) widens the interval
    xs = [float(i % 2) for i in range(23)]
    lo, hi = t_interval(xs)
    assert hi - lo == pytest.approx(2 * 2.086 * sd(xs) / math.sqrt(23))
    assert t_interval([5.0]) is None


def test_binomial_se() -> None:
    assert binomial_se(0.3, 2500) == pytest.approx(math.sqrt(0.21 / 2500))
