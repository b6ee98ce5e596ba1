"""The resumable epoch sampler."""

from __future__ import annotations

import numpy as np
import pytest

from moc.train.sampler import EpochSampler


def test_each_epoch_is_a_permutation_and_epochs_differ() -> None:
    s = EpochSampler(10, seed=3)
    e0, e1 = s.take(10), s.take(10)
    assert sorted(e0) == list(range(10)) and sorted(e1) == list(range(10))
    assert not np.array_equal(e0, e1)
    assert s.state_dict()["epoch"] == 1


def test_take_crosses_epoch_boundaries() -> None:
    a = EpochSampler(7, seed=1)
    b = EpochSampler(7, seed=1)
    one = a.take(20)
    parts = np.concatenate([b.take(3) for _ in range(6)] + [b.take(2)])
    np.testing.assert_array_equal(one, parts)


def test_resume_continues_the_same_stream() -> None:
    ref = EpochSampler(13, seed=5)
    full = ref.take(40)
    s = EpochSampler(13, seed=5)
    head = s.take(17)
    state = s.state_dict()
    resumed = EpochSampler(13, seed=99)  # the checkpoint's seed wins
    resumed.load_state_dict(state)
    np.testing.assert_array_equal(np.concatenate([head, resumed.take(23)]), full)


def test_data_size_change_is_an_error() -> None:
    s = EpochSampler(13, seed=5)
    with pytest.raises(ValueError, match="training windows"):
        EpochSampler(12, seed=5).load_state_dict(s.state_dict())
