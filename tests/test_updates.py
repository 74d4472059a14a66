"""kernels/updates.py: the optimisers' steps and the EMA in one pass, on every rung, against the
NumPy expressions they replace, bit for bit (the order of roundings is the contract)."""

import numba
import numpy as np
import pytest

from minimobile import kernels
from minimobile.kernels import updates
from minimobile.optim import EMA, SGD, AdamW, RMSprop


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


def _numpy_rmsprop(p, v, buf, m, g, lr, alpha, eps, wd, momentum, centered):
    """What minimobile.optim.RMSprop ran before the kernel (a, b were its scratch arrays)."""
    a, b = np.empty_like(p), np.empty_like(p)
    d = g
    if wd != 0.0:
        np.multiply(p, wd, out=a)
        a += g  # d = g + wd*p
        d = a
    np.multiply(d, d, out=b)
    b *= 1.0 - alpha
    v *= alpha
    v += b
    if centered:
        np.subtract(d, m, out=b)
        b *= 1.0 - alpha
        m += b
        np.multiply(m, m, out=b)
        np.subtract(v, b, out=b)
        np.sqrt(b, out=b)
    else:
        np.sqrt(v, out=b)
    b += eps  # s
    np.divide(d, b, out=b)
    if momentum > 0.0:
        buf *= momentum
        buf += b
        np.multiply(buf, lr, out=b)
    else:
        b *= lr
    p -= b


def _numpy_adamw(p, m, v, g, lr, beta1, beta2, eps, wd, t):
    """What minimobile.optim.AdamW ran before the kernel, at step t (counted from 1)."""
    a = np.empty_like(p)
    if wd != 0.0:
        p *= 1.0 - lr * wd
    np.subtract(g, m, out=a)
    a *= 1.0 - beta1
    m += a
    np.multiply(g, g, out=a)
    a *= 1.0 - beta2
    v *= beta2
    v += a
    step_size = lr / (1.0 - beta1 ** t)
    np.sqrt(v, out=a)
    a /= (1.0 - beta2 ** t) ** 0.5
    a += eps
    np.divide(m, a, out=a)
    a *= step_size
    p -= a


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


# Above tuning.SERIAL_MAX_ELEMENTS, so the fast rung runs on all threads; the loops rung, plain
# Python, gets fewer elements to stay quick.
def _size(rung):
    return 300 if rung == "loops" else 20_000


@pytest.mark.parametrize("rung", kernels.RUNGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd", [0.0, 0.05])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
@pytest.mark.parametrize("centered", [False, True])
def test_rmsprop_update_is_the_numpy_rule_bit_for_bit(rng, rung, dtype, wd, momentum, centered):
    n = _size(rung)
    p = rng.standard_normal(n).astype(dtype)
    v, buf, m = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    ours, ref = (p, v, buf, m), tuple(x.copy() for x in (p, v, buf, m))
    for step in range(3):  # later steps start from buffers a first step never sees
        g = rng.standard_normal(n).astype(dtype)
        g_before = g.copy()
        lr = 0.01 / (step + 1)
        _numpy_rmsprop(*ref, g, lr, 0.9, 0.0316, wd, momentum, centered)
        with kernels.use(rung):
            kernels.pick(updates, "rmsprop_update")(*ours, g, lr, 0.9, 0.0316, wd, momentum,
                                                    centered)
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref)), step
        assert np.array_equal(g, g_before)


@pytest.mark.parametrize("rung", kernels.RUNGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_adamw_update_is_the_numpy_rule_bit_for_bit(rng, rung, dtype, wd):
    n = _size(rung)
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ours, ref = (p, m, v), tuple(x.copy() for x in (p, m, v))
    lr, beta1, beta2, eps = 0.01, 0.9, 0.999, 1e-8
    for t in range(1, 4):
        g = rng.standard_normal(n).astype(dtype)
        g_before = g.copy()
        _numpy_adamw(*ref, g, lr, beta1, beta2, eps, wd, t)
        # The bias corrections as optim.AdamW computes them: Python floats, as NumPy's did.
        step_size = lr / (1.0 - beta1 ** t)
        bias_correction2_sqrt = (1.0 - beta2 ** t) ** 0.5
        with kernels.use(rung):
            kernels.pick(updates, "adamw_update")(*ours, g, lr, beta1, beta2, eps, wd,
                                                  step_size, bias_correction2_sqrt)
        assert all(np.array_equal(a, b) for a, b in zip(ours, ref)), t
        assert np.array_equal(g, g_before)


OPTIMISERS = {
    "rmsprop": lambda ps: RMSprop(ps, lr=0.01),
    "rmsprop_centered_wd": lambda ps: RMSprop(ps, lr=0.01, momentum=0.0, weight_decay=0.05,
                                              centered=True),
    "adamw": lambda ps: AdamW(ps, lr=0.01, weight_decay=0.05),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", list(OPTIMISERS))
def test_rmsprop_and_adamw_steps_are_the_numpy_rule_bit_for_bit(rng, dtype, kind):
    # A matrix that weight decay moves and a vector it skips (default_no_decay), so the
    # optimiser's own scalars (decay mask, lr, bias corrections) are checked with the kernel.
    params = [(name, rng.standard_normal(shape).astype(dtype), np.zeros(shape, dtype))
              for name, shape in [("w", (40, 30)), ("b", (30,))]]
    opt = OPTIMISERS[kind](params)
    ref_p = [p.copy() for _, p, _ in params]
    ref = {k: [b.copy() for b in bufs] for k, bufs in opt.buffers.items()}
    for t in range(1, 4):
        opt.lr = 0.01 / t  # as a schedule would
        for _, _, g in params:
            g[...] = rng.standard_normal(g.shape)
        opt.step()
        for i, (_, p, g) in enumerate(params):
            wd = opt.weight_decay if opt.decay[i] else 0.0
            if kind == "adamw":
                _numpy_adamw(ref_p[i], ref["exp_avg"][i], ref["exp_avg_sq"][i], g, opt.lr,
                             opt.beta1, opt.beta2, opt.eps, wd, t)
            else:
                buf, m = (ref[k][i] if k in ref else None for k in ("momentum_buffer", "grad_avg"))
                _numpy_rmsprop(ref_p[i], ref["square_avg"][i], buf, m, g, opt.lr, opt.alpha,
                               opt.eps, wd, opt.momentum, opt.centered)
            assert np.array_equal(p, ref_p[i]), (t, i)
        assert all(np.array_equal(a, b) for k in ref for a, b in zip(opt.buffers[k], ref[k]))


def _state(n):
    """p, v, buf, m, g for every kernel, with v >= m*m so the centered root stays real."""
    rng = np.random.default_rng(3)
    p, buf, g = _arrays(rng, np.float32, n)
    m = rng.standard_normal(n).astype(np.float32)
    return p, g * g + m * m, buf, m, g


ONE_PASS = {
    "sgd": lambda p, v, buf, m, g: updates.sgd_update_simple(p, buf, g, 0.05, 5e-4, 0.9, True,
                                                             False),
    "rmsprop": lambda p, v, buf, m, g: updates.rmsprop_update_simple(
        p, v, buf, m, g, 0.01, 0.9, 0.0316, 4e-5, 0.9, True),
    "adamw": lambda p, v, buf, m, g: updates.adamw_update_simple(
        p, m, v, g, 0.01, 0.9, 0.999, 1e-8, 0.05, 0.01 / (1.0 - 0.9 ** 3),
        (1.0 - 0.999 ** 3) ** 0.5),
}


@pytest.mark.parametrize("op", list(ONE_PASS))
def test_the_update_is_the_same_on_one_thread_and_on_all(op):
    results = []
    # All the threads Numba started with, not the count in force now: an earlier test (or the
    # library's choice on a busy machine) may have left it at one.
    most = numba.config.NUMBA_NUM_THREADS
    if most == 1:
        pytest.skip("one Numba thread: no second thread count to compare with")
    previous = numba.get_num_threads()
    try:
        for n in (1, most):
            numba.set_num_threads(n)
            arrays = _state(100_000)
            ONE_PASS[op](*arrays)
            results.append(arrays)
    finally:
        numba.set_num_threads(previous)
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
