"""Small statistics for the report: means with spread over seeds, binomial and paired standard errors.

Conventions: with one seed a measurement's uncertainty is a standard error (binomial for accuracies,
over validation windows for losses); with several seeds it is the standard deviation over seeds
(``ddof=1``). ``Estimate.kind`` says which, so the report can label it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Estimate:
    """A value with its uncertainty; ``kind`` is "se" (one seed), "sd" (over seeds) or "" (none)."""

    value: float
    err: float | None
    kind: str
    n_seeds: int = 1

    def fmt(self, digits: int = 3, scale: float = 1.0) -> str:
        v = f"{self.value * scale:.{digits}f}"
        if self.err is None or not math.isfinite(self.err):
            return v
        return f"{v} ± {self.err * scale:.{digits}f}"


def mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs)


def sd(xs: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof=1); None for fewer than two values."""
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


# Two-sided 95% quantiles of Student's t by degrees of freedom (standard table values); between listed
# entries the next smaller df is used, which widens the interval (conservative).
_T975 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
    10: 2.228, 11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101,
    19: 2.093, 20: 2.086, 25: 2.060, 30: 2.042, 40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def t_interval(xs: Sequence[float]) -> tuple[float, float] | None:
    """95% confidence interval of the mean of ``xs`` (independent seeds; Student's t, ddof=1); None for
    fewer than two values. Seed noise says "no effect" while this interval contains zero."""
    s = sd(xs)
    if s is None:
        return None
    df = len(xs) - 1
    t = _T975[max(k for k in _T975 if k <= df)]
    half = t * s / math.sqrt(len(xs))
    return mean(xs) - half, mean(xs) + half


def binomial_se(p: float, n: int) -> float:
    """Standard error of an accuracy ``p`` measured on ``n`` questions."""
    return math.sqrt(max(p * (1.0 - p), 0.0) / n) if n > 0 else float("nan")


def window_se(losses: Sequence[float]) -> float | None:
    """Standard error of the mean of per-window losses (windows treated as independent)."""
    s = sd(losses)
    return None if s is None else s / math.sqrt(len(losses))


def paired_se(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Standard error of ``mean(a) - mean(b)`` for paired measurements (same windows or same seeds)."""
    if len(a) != len(b):
        raise ValueError(f"paired_se needs equal lengths, got {len(a)} and {len(b)}")
    return window_se([x - y for x, y in zip(a, b)])


def combine(values: Sequence[float], one_seed_se: float | None) -> Estimate:
    """Mean over seeds with their sd, or the single value with its standard error."""
    if len(values) == 1:
        return Estimate(values[0], one_seed_se, "se" if one_seed_se is not None else "", 1)
    return Estimate(mean(values), sd(values), "sd", len(values))
