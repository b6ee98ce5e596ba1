"""Statistics of the reports, against values computed by hand."""

from __future__ import annotations

import math

import pytest

from moc_experiments.experiment.stats import (
    binomial_se,
    normal_verdict,
    paired_verdict,
    sd,
    t_interval,
    t_quantile,
    verdict,
)

# t_0.975 with 2 degrees of freedom: 4.303 in printed tables; to full precision, as scipy gives it
T2 = 4.302652729749462


def test_t_quantile_against_table_values() -> None:
    # standard table values (3 decimals), including degrees of freedom a short table leaves out (21, 22)
    table = {1: 12.706, 2: 4.303, 4: 2.776, 10: 2.228, 21: 2.080, 22: 2.074, 30: 2.042, 120: 1.980}
    for df, t in table.items():
        assert t_quantile(df) == pytest.approx(t, abs=5e-4)
    assert t_quantile(2) == pytest.approx(T2, rel=1e-12)


def test_t_interval_by_hand() -> None:
    # [1, 2, 3]: mean 2, sd 1, n 3 -> 2 ± t(0.975, df 2) / sqrt(3) = 2 ± 4.303 / 1.7321
    lo, hi = t_interval([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 - T2 / math.sqrt(3)) and hi == pytest.approx(2 + T2 / math.sqrt(3))
    # df 22: the exact quantile (2.074), not the next smaller tabled one
    xs = [float(i % 2) for i in range(23)]
    lo, hi = t_interval(xs)
    assert hi - lo == pytest.approx(2 * 2.0738730679040254 * sd(xs) / math.sqrt(23))
    assert t_interval([5.0]) is None


def test_binomial_se() -> None:
    assert binomial_se(0.3, 2500) == pytest.approx(math.sqrt(0.21 / 2500))


def test_verdict_claims_only_when_the_interval_excludes_zero() -> None:
    # [2, 3, 4]: mean 3, sd 1 -> 3 ± 4.303 / sqrt(3) = [0.516, 5.484]: above zero, so "higher"
    half = T2 / math.sqrt(3)
    v = verdict([2.0, 3.0, 4.0])
    assert v.mean == pytest.approx(3.0) and v.n == 3 and v.ci == pytest.approx((3 - half, 3 + half))
    assert v.sign == 1 and v.word() == "higher"
    assert v.describe(1.0, 1, " pt") == "+3.0 pt (95% CI [0.5, 5.5], 3 seeds)"
    assert verdict([-2.0, -3.0, -4.0]).word("more", "fewer") == "fewer"
    # [1, 2, 3]: 2 ± 2.484 contains zero (a normal interval, 2 ± 1.13, would not)
    v = verdict([1.0, 2.0, 3.0])
    assert v.ci == pytest.approx((2 - half, 2 + half)) and v.sign == 0 and v.word() == "within seed noise"


def test_verdict_needs_two_seeds() -> None:
    one = verdict([5.0])
    assert one.ci is None and one.sign == 0 and one.word() == "one seed: no claim"
    assert one.describe(1.0, 1, " pt") == "+5.0 pt (one seed: no claim)"
    assert verdict([]).mean is None and verdict([1.0, float("nan")]).sign == 0


def test_paired_verdict_and_scaling() -> None:
    assert paired_verdict([3.0, 4.0, 5.0], [1.0, 1.0, 1.0]) == verdict([2.0, 3.0, 4.0])
    with pytest.raises(ValueError):
        paired_verdict([1.0], [1.0, 2.0])
    v = verdict([2.0, 3.0, 4.0]).scaled(-2.0)  # a negative factor flips the interval
    half = T2 / math.sqrt(3)
    assert v.mean == pytest.approx(-6.0) and v.ci == pytest.approx((-2 * (3 + half), -2 * (3 - half)))
    assert v.sign == -1


def test_normal_verdict_for_one_seed() -> None:
    v = normal_verdict(0.5, 0.2)  # 0.5 ± 1.96 x 0.2 = [0.108, 0.892]
    assert v.ci == pytest.approx((0.108, 0.892)) and v.sign == 1 and v.n == 1
    assert "one seed, value ± 1.96 se" in v.describe()
    noisy = normal_verdict(0.3, 0.2)  # [-0.092, 0.692]
    assert noisy.sign == 0 and noisy.word() == "within noise, one seed"
    assert normal_verdict(0.3, None).word() == "one seed: no claim"
