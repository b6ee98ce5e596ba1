"""Small statistics for the report: means with spread over seeds, binomial and paired standard errors,
and the one rule every comparison in the findings follows.

Conventions: with one seed a measurement's uncertainty is a standard error (binomial for accuracies,
over validation windows for losses); with several seeds it is the standard deviation over seeds
(``ddof=1``). ``Estimate.kind`` says which, so the report can label it.

The rule (:func:`verdict`, :func:`paired_verdict`): a difference between two models (or two conditions of
one model) is claimed, higher or lower, only when the 95% confidence interval of the mean of its paired
per-seed differences (Student t) excludes zero; otherwise it is "within seed noise". Fewer than two
paired seeds: no claim. Where one seed has a standard error of its own (validation windows, binomial
counts), :func:`normal_verdict` applies the same rule to the normal 95% interval, value ± 1.96 se.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace


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


def t_quantile(df: int) -> float:
    """The two-sided 95% quantile of Student's t with ``df`` degrees of freedom (t_0.975, df)."""
    from scipy.stats import t  # the report extra; imported here so that planning a run does not need it

    return float(t.ppf(0.975, df))


def t_interval(xs: Sequence[float]) -> tuple[float, float] | None:
    """95% confidence interval of the mean of ``xs`` (independent seeds; Student's t, ddof=1); None for
    fewer than two values. Seed noise says "no effect" while this interval contains zero."""
    s = sd(xs)
    if s is None:
        return None
    half = t_quantile(len(xs) - 1) * s / math.sqrt(len(xs))
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


Z95 = 1.96  # two-sided 95% quantile of the normal distribution


@dataclass(frozen=True)
class Verdict:
    """A difference and whether it is claimed: ``mean`` of the paired differences, ``ci`` the 95%
    confidence interval of that mean (None: no claim can be made), ``n`` the paired seeds, ``basis`` "t"
    (Student t over seeds) or "normal" (one seed's standard error, value ± 1.96 se)."""

    mean: float | None
    ci: tuple[float, float] | None
    n: int
    basis: str = "t"

    @property
    def sign(self) -> int:
        """+1 / -1 when the interval lies above / below zero, 0 when it contains zero or is unknown."""
        if self.ci is None:
            return 0
        return 1 if self.ci[0] > 0 else -1 if self.ci[1] < 0 else 0

    @property
    def noise(self) -> str:
        """What the text says when nothing is claimed."""
        if self.ci is None:
            return "one seed: no claim" if self.n <= 1 else "no claim"
        return "within seed noise" if self.basis == "t" else "within noise, one seed"

    def word(self, higher: str = "higher", lower: str = "lower") -> str:
        """``higher`` / ``lower`` when claimed, otherwise why not ("within seed noise", "one seed: no
        claim")."""
        return higher if self.sign > 0 else lower if self.sign < 0 else self.noise

    def scaled(self, factor: float) -> Verdict:
        """The same verdict for ``factor`` x the difference (a negative factor swaps the interval)."""
        if self.mean is None:
            return self
        ci = None if self.ci is None else tuple(sorted((self.ci[0] * factor, self.ci[1] * factor)))
        return replace(self, mean=self.mean * factor, ci=ci)

    def describe(self, scale: float = 1.0, digits: int = 1, unit: str = "") -> str:
        """ "+2.0 pt (95% CI [0.3, 3.7], 3 seeds)"; one seed: "+2.0 pt (one seed: no claim)"."""
        if self.mean is None:
            return "no paired values"
        v = f"{self.mean * scale:+.{digits}f}{unit}"
        if self.ci is None:
            return f"{v} ({self.noise})"
        lo, hi = (x * scale for x in self.ci)
        where = f"{self.n} seeds" if self.basis == "t" else "one seed, value ± 1.96 se"
        return f"{v} (95% CI [{lo:.{digits}f}, {hi:.{digits}f}], {where})"


def verdict(diffs: Sequence[float]) -> Verdict:
    """The rule on paired per-seed differences: the Student-t 95% interval of their mean (no interval,
    so no claim, for fewer than two values or a value that is not finite)."""
    xs = list(diffs)
    if not xs:
        return Verdict(None, None, 0)
    ci = t_interval(xs) if all(math.isfinite(x) for x in xs) else None
    return Verdict(mean(xs), ci, len(xs))


def paired_verdict(a: Sequence[float], b: Sequence[float]) -> Verdict:
    """The rule on ``a - b`` for measurements paired by seed (``a[i]`` and ``b[i]`` share seed i)."""
    if len(a) != len(b):
        raise ValueError(f"paired_verdict needs equal lengths, got {len(a)} and {len(b)}")
    return verdict([x - y for x, y in zip(a, b)])


def normal_verdict(value: float, se: float | None) -> Verdict:
    """The rule for one seed with its own standard error: the normal 95% interval ``value ± 1.96 se``
    (no standard error: no claim)."""
    if se is None or not math.isfinite(se) or not math.isfinite(value):
        return Verdict(value, None, 1, "normal")
    return Verdict(value, (value - Z95 * se, value + Z95 * se), 1, "normal")
