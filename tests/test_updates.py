"""kernels/updates.py: SGD's step and the EMA in one pass, on every rung, against the NumPy
expressions they replace, bit for bit (the order of roundings is the contract)."""

import numba
import numpy as np
import pytest

from minimobile import kernels
from minimobile.kernels import updates
from minimobile.optim import EMA, SGD


def _numpy_sgd(p, buf, g, lr, wd, momentum, nesterov, first_step):
    """What minimobile.optim.SGD ran before the kernel: NumPy, one operation at a time."""
    d = g
    if wd != 0.0:
        d = np.multiply(p, wd)
        d += g
    if momentum != 0.0:
        if first_step:
            np.copyto(buf, d)
        else:
            buf *= momentum
            buf += d
        if nesterov:
            b = np.multiply(buf, momentum)
            b += d
            d = b
        else:
            d = buf
    p -= np.multiply(d, lr)


def _arrays(rng, dtype, n=1000):
    return (rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype),
            rng.standard_normal(n).astype(dtype))


@pytest.mark.parametrize("rung", kernels.RUNGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd, momentum, nesterov", [(5e-4, 0.9, True), (5e-4, 0.9, False),
                                                    (0.0, 0.9, True), (1e-4, 0.0, False)])
@pytest.mark.parametrize("first_step", [True, False])
def test_sgd_update_is_the_numpy_rule_bit_for_bit(rng, rung, dtype, wd, momentum, nesterov,
                                                  first_step):
    p, buf, g = _arrays(rng, dtype, 300 if rung == "loops" else 5000)
    p_ref, buf_ref = p.copy(), buf.copy()
    _numpy_sgd(p_ref, buf_ref, g, 0.1, wd, momentum, nesterov, first_step)
    g_before = g.copy()
    with kernels.use(rung):
        kernels.pick(updates, "sgd_update")(p, buf, g, 0.1, wd, momentum, nesterov, first_step)
    assert np.array_equal(p, p_ref)
    assert np.array_equal(buf, buf_ref)
    assert np.array_equal(g, g_before)  # the gradient is read, never written


@pytest.mark.parametrize("rung", kernels.RUNGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ema_update_is_the_numpy_rule_bit_for_bit(rng, rung, dtype):
    shadow, live, _ = _arrays(rng, dtype, 300 if rung == "loops" else 5000)
    expected = shadow.copy()
    expected += 0.0123 * (live - expected)
    with kernels.use(rung):
        kernels.pick(updates, "ema_update")(shadow, live, 0.0123)
    assert np.array_equal(shadow, expected)


def test_the_update_is_the_same_on_one_thread_and_on_all(rng):
    results = []
    threads = numba.get_num_threads()
    try:
        for n in sorted({1, threads}):
            numba.set_num_threads(n)
            p, buf, g = _arrays(np.random.default_rng(3), np.float32, 100_000)
            updates.sgd_update_simple(p, buf, g, 0.05, 5e-4, 0.9, True, False)
            results.append((p, buf))
    finally:
        numba.set_num_threads(threads)
    assert all(np.array_equal(a, b) for a, b in zip(results[0], results[-1]))


def test_sgd_refuses_a_strided_parameter_it_could_not_update_in_place():
    p = np.zeros((4, 6), np.float32)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        SGD([("w", p, np.zeros_like(p))], lr=0.1)


def test_ema_of_a_fortran_ordered_parameter_still_averages(rng):
    class Holder:
        def __init__(self):
            self.params = {"w": np.asfortranarray(rng.standard_normal((3, 5)))}
            self.buffers = {}

        def named_modules(self):
            return [("", self)]
    model = Holder()
    ema = EMA(model, 0.5, warmup=False)
    before = ema.shadow["w"].copy()
    model.params["w"] += 1.0
    ema.update()
    assert np.allclose(ema.shadow["w"], before + 0.5)
