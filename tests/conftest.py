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


@pytest.fixture
def sums_made(monkeypatch):
    """A list that gets, for each batch norm backward of the test, whether the conv that read
    its output made its first-pass sums (ops.BatchNormGradientSums.take found them)."""
    made = []
    take = ops.BatchNormGradientSums.take

    def recording(self, dout):
        rows = take(self, dout)
        made.append(rows is not None)
        return rows
    monkeypatch.setattr(ops.BatchNormGradientSums, "take", recording)
    return made
