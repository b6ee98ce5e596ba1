"""Numbers as report text: mean ± sd over seeds, 95% confidence intervals, kbit, FLOPs, three significant
digits. "–" stands for a value that cannot be given (no run, one seed where an interval needs two)."""

from __future__ import annotations

import math

from moc_experiments.experiment.stats import Verdict, mean, sd, t_interval


def pm(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """mean ± sd over seeds (one seed: the value alone)."""
    if not xs or any(not math.isfinite(x) for x in xs):
        return "–"
    s = sd(xs)
    return f"{mean(xs) * scale:.{digits}f}" + ("" if s is None else f" ± {s * scale:.{digits}f}")


def ci(xs: list[float], scale: float = 100.0, digits: int = 1) -> str:
    """The 95% confidence interval of the mean over seeds, as text ("–" for fewer than two seeds)."""
    interval = t_interval(xs)
    return (
        "–" if interval is None else f"[{interval[0] * scale:.{digits}f}, {interval[1] * scale:.{digits}f}]"
    )


def kbit(xs: list[float]) -> str:
    """Bits as kbit, mean ± sd over seeds."""
    return pm(xs, 1e-3, 2)


def g3(x: float | None) -> str:
    """Three significant digits ("–" for None)."""
    return "–" if x is None else f"{x:.3g}"


def ci_g3(v: Verdict) -> str:
    """A verdict's interval with three significant digits ("–" without one)."""
    return "–" if v.ci is None else f"[{v.ci[0]:.3g}, {v.ci[1]:.3g}]"


def flops(x: float) -> str:
    """FLOPs per token: "12.3k" below a million, else "1.23M"."""
    return f"{x / 1e3:.1f}k" if x < 1e6 else f"{x / 1e6:.2f}M"
