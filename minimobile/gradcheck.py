"""Numerical gradients: the oracle every hand-written backward is judged by (CS231n's).

For a function f and a random upstream gradient dout, the gradient of the scalar
sum(f(x) * dout) with respect to x is exactly what a backward pass returns; a float64 central
difference (f(x + h) - f(x - h)) / 2h estimates it with an error of order h^2. Keep sampled
inputs away from kinks (ReLU6 at 0 and 6, hard-swish at +-3): a difference that straddles a
kink measures neither side.
"""

import numpy as np

from .layers import BatchNorm2d


def relative_error(a, b):
    """max |a - b| / max(max |a|, max |b|): one number for a whole array, 0 when both are 0.

    Scaled by the largest magnitude rather than elementwise, so that tiny entries (whose
    differences are pure rounding) do not dominate the verdict.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"relative_error: shapes differ: {a.shape} and {b.shape}")
    scale = max(np.abs(a).max(initial=0.0), np.abs(b).max(initial=0.0))
    return 0.0 if scale == 0 else float(np.abs(a - b).max() / scale)


def numerical_gradient(f, x, dout, h=1e-6, indices=None):
    """Central-difference gradient of sum(f() * dout) with respect to the array x, in place.

    f takes no arguments and reads x, which is perturbed in place and restored; so x may be a
    parameter buried inside a layer. `indices` (an iterable of index tuples) limits the probe
    to a sample of entries; the others are returned as NaN.
    """
    if not isinstance(x, np.ndarray) or x.dtype != np.float64:
        raise ValueError(f"numerical_gradient: expected a float64 array, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}; float32 differences are "
                         "too coarse for a gradient check")
    if not (isinstance(h, (int, float, np.floating)) and np.isfinite(h) and h > 0):
        raise ValueError(f"numerical_gradient: expected a step h that is a finite number > 0, "
                         f"got {h!r}")
    if indices is not None:
        indices = [np.atleast_1d(index) for index in indices]
        bad = [tuple(i.tolist()) for i in indices if i.shape != (x.ndim,)
               or not all(0 <= v < n for v, n in zip(i, x.shape))]
        if not indices or bad:
            raise ValueError(f"numerical_gradient: expected at least one index of {x.ndim} "
                             f"integers inside shape {x.shape}, got "
                             f"{bad[0] if bad else 'none'}")
    grad = np.full(x.shape, np.nan) if indices is not None else np.zeros(x.shape)
    probe = indices if indices is not None else np.ndindex(*x.shape)
    for index in probe:
        index = tuple(index)
        old = x[index]
        x[index] = old + h
        plus = np.sum(f() * dout)
        x[index] = old - h
        minus = np.sum(f() * dout)
        x[index] = old
        grad[index] = (plus - minus) / (2 * h)
    return grad


def sample_indices(shape, count, rng):
    """Up to `count` distinct index tuples of an array of this shape, drawn with rng."""
    size = int(np.prod(shape))
    flat = rng.choice(size, size=min(count, size), replace=False)
    return [np.unravel_index(i, shape) for i in flat]


def check_gradient(f, x, analytic, dout, h=1e-6, indices=None):
    """Relative error between an analytic gradient and the central difference at the same
    entries (all, or the sampled `indices`)."""
    if np.shape(analytic) != x.shape:
        # With sampled indices the comparison below would pick entries of the wrong array
        # (or fail with an IndexError) rather than say the shapes differ.
        raise ValueError(f"check_gradient: expected an analytic gradient of x's shape "
                         f"{x.shape}, got {np.shape(analytic)}")
    numeric = numerical_gradient(f, x, dout, h=h, indices=indices)
    if indices is None:
        return relative_error(analytic, numeric)
    picked = tuple(np.array(indices).T)
    return relative_error(np.asarray(analytic)[picked], numeric[picked])


def randomize_batchnorm(module, rng):
    """Give every batch norm a random affine map. At initialisation (gamma 1, beta 0) a ReLU
    after it is positively homogeneous, and a depthwise conv and batch norm after that make
    the output invariant to gamma: its gradient is then only eps's leftover (~1e-3), too small
    for a central difference to measure against float64 rounding. beta != 0 breaks that."""
    for _, m in module.named_modules():
        if isinstance(m, BatchNorm2d):
            m.params["weight"][...] = rng.uniform(0.5, 1.5, m.params["weight"].shape)
            m.params["bias"][...] = rng.normal(0.0, 0.5, m.params["bias"].shape)
    return module


def randomize_running_statistics(module, rng):
    """randomize_batchnorm, plus random running means and variances, and eval mode: a network
    that looks trained, for testing inference transforms (at initialisation, mean 0, var 1,
    gamma 1 and beta 0, folding a batch norm would be nearly the identity and prove little)."""
    randomize_batchnorm(module, rng)
    for _, m in module.named_modules():
        if isinstance(m, BatchNorm2d):
            m.buffers["running_mean"][...] = rng.normal(0.0, 0.5, m.buffers["running_mean"].shape)
            m.buffers["running_var"][...] = rng.uniform(0.5, 2.0, m.buffers["running_var"].shape)
    return module.eval()
