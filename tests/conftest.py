import numba
import numpy as np
import pytest

from minimobile import ops


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)


@pytest.fixture(autouse=True)
def _numba_threads_restored():
    """Every test ends with Numba's thread count as it began: a sweep trial run in process sets
    it to the trial's CPUs (sweep._set_threads), and every test after it would otherwise run,
    and compare thread counts, on that one thread."""
    before = numba.get_num_threads()
    yield
    if numba.get_num_threads() != before:
        numba.set_num_threads(before)


def _record_takes(monkeypatch, holder):
    """A list that gets, for each holder.take(array) of the test, whether it found the row sums
    that a conv made for that very array."""
    made = []
    take = holder.take

    def recording(self, array):
        rows = take(self, array)
        made.append(rows is not None)
        return rows
    monkeypatch.setattr(holder, "take", recording)
    return made


@pytest.fixture
def sums_made(monkeypatch):
    """A list that gets, for each batch norm backward of the test, whether the conv that read
    its output made its first-pass sums (ops.BatchNormGradientSums.take found them)."""
    return _record_takes(monkeypatch, ops.BatchNormGradientSums)


@pytest.fixture
def statistics_made(monkeypatch):
    """A list that gets, for each batch norm forward handed an ops.BatchNormStatistics,
    whether the conv before it made its statistics' row sums (take found them)."""
    return _record_takes(monkeypatch, ops.BatchNormStatistics)
