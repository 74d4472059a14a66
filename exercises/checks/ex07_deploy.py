"""Checks of exercise 07: a folded conv must give what the conv followed by eval-mode batch norm
gives, computed with the library's ops in float64 (conv, depthwise, pointwise, eval-mode batch
norm)."""

import numpy as np

from minimobile import ops

from .common import (FORWARD_TOL, Hint, assert_close, assert_same_dtype, call, describe,
                     fail)

EPS = 1e-3  # not the default, so that an eps left out or misplaced shows
EPS_BAND = 0.05  # running_var >= 0.1 here: an eps of 1e-3 misplaced moves results by < 1 %


def _cases(rng, dtype=np.float64):
    """(kind, x, w, b, conv(x, w)) for a standard, a depthwise and a pointwise conv, with and
    without bias."""
    x = rng.standard_normal((2, 3, 5, 6)).astype(dtype)
    standard = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    depthwise = rng.standard_normal((3, 1, 3, 3)).astype(dtype)
    pointwise = rng.standard_normal((5, 3, 1, 1)).astype(dtype)
    return [
        ("standard conv (stride 2, padding 1)", x, standard, None,
         lambda w: ops.conv2d_forward(x, w, 2, 1)[0]),
        ("depthwise conv", x, depthwise, rng.standard_normal(3).astype(dtype),
         lambda w: ops.depthwise_conv2d_forward(x, w, 1, 1)[0]),
        ("pointwise conv", x, pointwise, rng.standard_normal(5).astype(dtype),
         lambda w: ops.pointwise_conv2d_forward(x, w)[0]),
    ]


def _bn_params(C, rng, dtype):
    return (rng.uniform(0.5, 1.5, C).astype(dtype), rng.normal(0, 0.5, C).astype(dtype),
            rng.normal(0, 1, C).astype(dtype), rng.uniform(0.1, 2.0, C).astype(dtype))


def _hint(got, expected):
    """Weights right and bias wrong leaves a constant per channel between the two outputs."""
    diff = got - expected
    if np.allclose(diff, diff.mean(axis=(0, 2, 3), keepdims=True), atol=1e-9):
        return ("the weights are right and the bias is off (by a constant per channel): "
                "b_folded = beta + (b - running_mean) * gamma / sqrt(running_var + eps), with "
                "b = 0 when it is None")
    return Hint("each output channel's filter is scaled by that channel's factor, along w's "
                "first axis", "w[o] * gamma[o] / sqrt(running_var[o] + eps), the variance plus "
                "eps under the square root")


def check_fold(ex):
    rng = np.random.default_rng(70)
    for kind, x, w, b, conv in _cases(rng):
        C = w.shape[0]
        gamma, beta, mean, var = _bn_params(C, rng, np.float64)
        arguments = [w, b, gamma, beta, mean, var]
        copies = [None if a is None else a.copy() for a in arguments]
        where = f"for a {kind}, " + describe(w=w) + (", b=None" if b is None else " with a bias")
        result = call("ex07 fold_batchnorm", ex.fold_batchnorm, *arguments, eps=EPS,
                      returns=("w_folded", "b_folded"))
        if any(a is not None and not np.array_equal(a, c) for a, c in zip(arguments, copies)):
            fail(f"ex07 fold_batchnorm changed one of its arguments {where}",
                 "compute new arrays (w * scale makes one); the trained layers keep theirs")
        if not isinstance(result, tuple) or len(result) != 2:
            fail(f"ex07 fold_batchnorm returned {type(result).__name__} {where}",
                 "return (w_folded, b_folded)")
        w_folded, b_folded = result
        if b_folded is None or np.shape(b_folded) != (C,):
            fail(f"ex07 fold_batchnorm: b_folded has shape {np.shape(b_folded)} {where}; "
                 f"expected ({C},)", "a folded conv always has a bias: beta - mean * scale "
                 "even when b is None")
        if np.shape(w_folded) != w.shape:
            fail(f"ex07 fold_batchnorm: w_folded has shape {np.shape(w_folded)} {where}; "
                 f"expected {w.shape}")
        z = conv(w) + (0 if b is None else b[None, :, None, None])
        expected = ops.batchnorm2d_inference_forward(z, gamma, beta, mean, var, EPS)[0]
        got = conv(np.asarray(w_folded)) + np.asarray(b_folded)[None, :, None, None]
        hint = _hint(got, expected)  # a str when the bias alone is off
        assert_close(got, expected, "ex07 fold_batchnorm: conv(x, w_folded) + b_folded",
                     where + f", eps={EPS} (against bn(conv(x, w) + b) in eval mode)",
                     FORWARD_TOL, hint, eps_band=None if isinstance(hint, str) else EPS_BAND)
    kind, x, w, b, _ = _cases(rng, np.float32)[1]
    w_folded, b_folded = ex.fold_batchnorm(w, b, *_bn_params(w.shape[0], rng, np.float32))
    assert_same_dtype(w_folded, w, "ex07 fold_batchnorm: w_folded", f"for a {kind} in float32")
    assert_same_dtype(b_folded, w, "ex07 fold_batchnorm: b_folded", f"for a {kind} in float32")
