"""Timing several runs interleaved on one thread, as the CPU benches do.

Round by round, each run takes ``steps`` calls; its time per call in that round is CPU seconds of the
process (``time.process_time``: another job's load on a shared machine barely moves it), and
interleaving keeps caches and clock speed alike for every run. Callers take the median of the rounds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import TypeVar

K = TypeVar("K", bound=Hashable)


def time_interleaved(runs: dict[K, Callable[[], object]], rounds: int, steps: int) -> dict[K, list[float]]:
    """{key: CPU milliseconds per call of runs[key] in each round}, the runs interleaved round by round."""
    times: dict[K, list[float]] = {key: [] for key in runs}
    for _ in range(rounds):
        for key, run in runs.items():
            t0 = time.process_time()
            for _ in range(steps):
                run()
            times[key].append((time.process_time() - t0) / steps * 1e3)
    return times
