"""A deterministic, resumable stream of window indices: a fresh shuffled order per epoch.

The order of epoch ``e`` is a permutation drawn from ``seed + e``, so it never needs to be stored:
the state is just ``(epoch, position)``. Every rank runs the same stream and takes its own slice of
each global batch, so the state is global and a checkpoint resumes on any number of processes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class SamplerState:
    epoch: int = 0
    position: int = 0  # windows already consumed in this epoch


class EpochSampler:
    """Yields indices in ``[0, n)``: epoch 0's permutation, then epoch 1's, and so on.

    >>> s = EpochSampler(5, seed=0); batch = s.take(3); s.state_dict()
    {'epoch': 0, 'position': 3}
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True) -> None:
        if n <= 0:
            raise ValueError("EpochSampler needs at least one item")
        self.n, self.seed, self.shuffle = n, seed, shuffle
        self.state = SamplerState()
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.n)
        return np.random.default_rng(self.seed + epoch).permutation(self.n)

    def take(self, count: int) -> np.ndarray:
        """The next ``count`` indices, crossing into the next epoch(s) when this one runs out."""
        out = []
        while count > 0:
            if self.state.position >= self.n:
                self.state = SamplerState(self.state.epoch + 1, 0)
                self._order = self._epoch_order(self.state.epoch)
            got = self._order[self.state.position : self.state.position + count]
            out.append(got)
            self.state.position += len(got)
            count -= len(got)
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)

    def state_dict(self) -> dict:
        return {**asdict(self.state), "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state.get("n", self.n) != self.n:
            raise ValueError(
                f"the checkpoint's data had {state['n']} training windows, this data has {self.n}: "
                "the prepared data or train.seq_len changed since the checkpoint was written"
            )
        self.seed = int(state.get("seed", self.seed))  # the checkpoint's order wins: resume exactly
        self.state = SamplerState(int(state["epoch"]), int(state["position"]))
        self._order = self._epoch_order(self.state.epoch)
