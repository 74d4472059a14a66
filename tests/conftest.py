import numba
import numpy as np
import pytest


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
