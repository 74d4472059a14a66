"""Checks of exercise 01: the by-hand numbers and the multiply-add counts against
`minimobile.cost`, the depthwise and pointwise convs against the library's ops in float64 and
against central differences, and the Numba kernels with several threads against one."""

import ast
import inspect

import numpy as np
from numba import config as numba_config

import minimobile
from minimobile import ops
from minimobile.cost import layer_macs
from minimobile.layers import Conv2d, DepthwiseConv2d, PointwiseConv2d

from .common import (FLOAT32_TOL, FORWARD_TOL, GRAD_TOL, Hint, assert_close, assert_gradient,
                     assert_same_dtype, call, describe, fail)

HAND_LAYER = dict(C_in=32, C_out=64, K=3, H_out=112, W_out=112)
HAND_NAMES = ("STANDARD_MACS", "STANDARD_PARAMS", "SEPARABLE_MACS", "SEPARABLE_PARAMS")


def _hand_layer_counts():
    """{name: value} as minimobile.cost counts the layer's standard conv and its separable
    replacement (weights only: the library's convs before a batch norm have no bias)."""
    C_in, C_out, K, H, W = HAND_LAYER.values()
    rng = np.random.default_rng(0)
    standard = Conv2d(C_in, C_out, K, 1, K // 2, rng=rng)
    depthwise, pointwise = DepthwiseConv2d(C_in, K, rng=rng), PointwiseConv2d(C_in, C_out, rng=rng)
    params = [sum(p.size for p in m.params.values()) for m in (standard, depthwise, pointwise)]
    return {"STANDARD_MACS": layer_macs(standard, (1, C_in, H, W), (1, C_out, H, W)),
            "STANDARD_PARAMS": params[0],
            "SEPARABLE_MACS": (layer_macs(depthwise, (1, C_in, H, W), (1, C_in, H, W))
                               + layer_macs(pointwise, (1, C_in, H, W), (1, C_out, H, W))),
            "SEPARABLE_PARAMS": params[1] + params[2]}


def _literal_assignments(module):
    """{name: ast node} of the module's top-level assignments, from its source."""
    tree = ast.parse(inspect.getsource(module))
    return {t.id: node.value for node in tree.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def check_by_hand(ex):
    values = {name: getattr(ex, name, None) for name in HAND_NAMES}
    missing = [name for name, v in values.items() if v is None]
    if missing:
        raise NotImplementedError("ex01: implement the by-hand numbers " + ", ".join(missing)
                                  + " (work them out on paper and type them in)")
    nodes = _literal_assignments(ex)
    layer = ("the 3x3 conv 32 -> 64 channels with a 112 x 112 output, and its separable "
             "replacement")
    for name in HAND_NAMES:
        node = nodes.get(name)
        if not (isinstance(node, ast.Constant) and isinstance(node.value, int)):
            fail(f"ex01 {name} is computed by an expression; type in the number you worked "
                 "out on paper", "the point is doing the arithmetic once by hand: write it as "
                 "an integer literal, e.g. 1_234_567")
    expected = _hand_layer_counts()
    hints = {"STANDARD_MACS": "C_out * H_out * W_out outputs, each a sum of C_in * K * K products",
             "STANDARD_PARAMS": "one (C_in, K, K) filter per output channel",
             "SEPARABLE_MACS": "the depthwise conv: C_in * K * K per output pixel; the pointwise "
                               "conv: C_in * C_out per output pixel; add them",
             "SEPARABLE_PARAMS": "a (1, K, K) filter per input channel, then a (C_in,) filter "
                                 "per output channel"}
    for name in HAND_NAMES:
        if values[name] != expected[name]:
            ratio = values[name] / expected[name]
            fail(f"ex01 {name} = {values[name]:,} for {layer}; minimobile.cost counts "
                 f"{expected[name]:,} (yours is {ratio:.4g} times that)", hints[name])

# (N, C, H, W, K, stride, padding): stride 2, odd and non-square sizes, K = 5, one channel,
# batch 1, and a conv without padding.
CONV_SHAPES = [
    (2, 3, 6, 6, 3, 1, 1),
    (2, 3, 7, 7, 3, 2, 1),
    (1, 1, 5, 5, 5, 1, 2),
    (1, 2, 7, 6, 5, 2, 2),
    (2, 2, 6, 5, 3, 1, 0),
]

# (C_in, C_out, K, H_out, W_out)
COST_CASES = [(32, 64, 3, 112, 112), (512, 512, 3, 14, 14), (3, 5, 5, 7, 9), (1, 1, 3, 1, 1)]

STRIDE_HINT = Hint(
    "output (i, j) reads the K x K window of the padded input that starts at row i * stride, "
    "column j * stride", "slice with a step of stride: xp[:, :, ki:ki + stride * Ho:stride, "
    "kj:kj + stride * Wo:stride]")
FLIP_HINT = ("your dx is dout convolved with the kernel as it is, but going backwards each "
             "input collects from the outputs whose window covered it, with the tap that "
             "touched it: the kernel flipped in both axes (w[:, :, ::-1, ::-1]); or scatter "
             "instead, dxp[window] += dout * w[c, 0, ki, kj], which needs no flip")


def _library_macs(C_in, C_out, K, H_out, W_out):
    """Standard and separable multiply-adds as minimobile.cost counts its layers."""
    rng = np.random.default_rng(0)
    out_shape = (1, C_out, H_out, W_out)
    standard = layer_macs(Conv2d(C_in, C_out, K, rng=rng), None, out_shape)
    depthwise = layer_macs(DepthwiseConv2d(C_in, K, rng=rng), None, (1, C_in, H_out, W_out))
    pointwise = layer_macs(PointwiseConv2d(C_in, C_out, rng=rng), (1, C_in, H_out, W_out),
                           out_shape)
    return standard, depthwise + pointwise


def check_macs(ex):
    for case in COST_CASES:
        C_in, C_out, K, H_out, W_out = case
        where = describe(C_in=C_in, C_out=C_out, K=K, H_out=H_out, W_out=W_out)
        standard, separable = _library_macs(*case)
        got = call("ex01 standard_conv_macs", ex.standard_conv_macs, *case)
        if got != standard:
            fail(f"ex01 standard_conv_macs returned {got} for {where}; expected {standard}",
                 "each of the C_out * H_out * W_out outputs sums C_in * K * K products")
        got = call("ex01 depthwise_separable_macs", ex.depthwise_separable_macs, *case)
        if got != separable:
            fail(f"ex01 depthwise_separable_macs returned {got} for {where}; expected "
                 f"{separable}", "the depthwise conv costs C_in * K * K per output pixel, the "
                 "pointwise conv C_in * C_out per output pixel")
        got = call("ex01 cost_ratio", ex.cost_ratio, *case)
        expected = 1 / C_out + 1 / K ** 2
        if not np.isclose(got, expected, rtol=1e-12, atol=0):
            fail(f"ex01 cost_ratio returned {got} for {where}; expected {expected:.6g} = "
                 f"1/{C_out} + 1/{K}**2", "the ratio is separable over standard")


def _conv_inputs(shape, rng, dtype=np.float64):
    N, C, H, W, K, stride, padding = shape
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C, 1, K, K)).astype(dtype)
    return x, w, stride, padding


def _add_stride_note(failures):
    """If every failure is at stride 2 and a stride-1 shape passed, say so: it points at the
    stride."""
    strides = {shape[5] for shape, _ in failures}
    tested = {shape[5] for shape in CONV_SHAPES}
    if strides == {2} and 1 in tested:
        return ("\n  (every stride-1 shape passes and every failure is at stride 2: look at how "
                "you use the stride)")
    return ""


def _run_over_shapes(check_one):
    failures = []
    for shape in CONV_SHAPES:
        try:
            check_one(shape)
        except AssertionError as e:
            failures.append((shape, str(e)))
    if failures:
        first = failures[0][1]
        fail(f"{first}\n  ({len(failures)} of {len(CONV_SHAPES)} shapes fail)"
             + _add_stride_note(failures))


def check_depthwise_forward(ex):
    rng = np.random.default_rng(1)

    def one(shape):
        x, w, stride, padding = _conv_inputs(shape, rng)
        where = "for " + describe(x=x, w=w, stride=stride, padding=padding)
        out, cache = call("ex01 depthwise_conv2d_forward", ex.depthwise_conv2d_forward, x, w,
                          stride, padding, returns=("out", "cache"))
        expected = ops.depthwise_conv2d_forward(x, w, stride, padding)[0]
        assert_close(out, expected, "ex01 depthwise_conv2d_forward: out", where, FORWARD_TOL,
                     STRIDE_HINT if stride > 1 else "pad x by `padding` zeros on each side "
                     "first, then multiply-add one tap (ki, kj) at a time")
        if not isinstance(cache, ops.DepthwiseConv2dCache):
            fail(f"ex01 depthwise_conv2d_forward returned a cache of type "
                 f"{type(cache).__name__} {where}", "return DepthwiseConv2dCache(x, w, stride, "
                 "padding): the backward (and the library's) reads those fields")
    _run_over_shapes(one)
    x, w, stride, padding = _conv_inputs(CONV_SHAPES[1], rng, np.float32)
    out, _ = ex.depthwise_conv2d_forward(x, w, stride, padding)
    assert_same_dtype(out, x, "ex01 depthwise_conv2d_forward: out",
                      "for " + describe(x=x, w=w) + " in float32")


def check_depthwise_backward(ex):
    rng = np.random.default_rng(2)

    def one(shape):
        x, w, stride, padding = _conv_inputs(shape, rng)
        where = "for " + describe(x=x, w=w, stride=stride, padding=padding)
        out, cache = ops.depthwise_conv2d_forward(x, w, stride, padding)
        dout = rng.standard_normal(out.shape)
        dx, dw = call("ex01 depthwise_conv2d_backward", ex.depthwise_conv2d_backward, dout,
                      cache, returns=("dx", "dw"))

        def f():
            return ops.depthwise_conv2d_forward(x, w, stride, padding)[0]
        hint = (STRIDE_HINT if stride > 1 else "each output sends dout * w back to every input "
                "of its window; add, do not overwrite, where windows overlap, and drop the "
                "padding at the end")
        if _is_unflipped(dx, dout, w, stride, padding, x.shape):
            hint = FLIP_HINT
        assert_gradient(f, x, dx, dout, "ex01 depthwise_conv2d_backward: dx", where, hint=hint)
        assert_gradient(f, w, dw, dout, "ex01 depthwise_conv2d_backward: dw", where,
                        hint=(STRIDE_HINT if stride > 1 else "dw[c, 0, ki, kj] sums dout times "
                              "the input under tap (ki, kj), over n, i and j"))
    _run_over_shapes(one)


def _is_unflipped(dx, dout, w, stride, padding, x_shape):
    """Whether dx is dout (dilated by the stride) correlated with w unflipped: the gather form
    of the backward with the kernel the wrong way round."""
    K = w.shape[2]
    if np.shape(dx) != x_shape or K == 1:
        return False
    N, C, H, W = x_shape
    Ho, Wo = dout.shape[2:]
    dilated = np.zeros((N, C, (Ho - 1) * stride + 1, (Wo - 1) * stride + 1))
    dilated[:, :, ::stride, ::stride] = dout
    full = ops.depthwise_conv2d_forward(dilated, np.ascontiguousarray(w), 1, K - 1)[0]
    wrong = np.zeros(x_shape)
    h, ww = min(H, full.shape[2] - padding), min(W, full.shape[3] - padding)
    wrong[:, :, :h, :ww] = full[:, :, padding:padding + h, padding:padding + ww]
    return np.allclose(dx, wrong, rtol=1e-6, atol=1e-9) and not np.allclose(
        w, w[:, :, ::-1, ::-1])


def _is_compiled(kernel):
    return numba_config.DISABLE_JIT or hasattr(kernel, "py_func")


def check_depthwise_kernels(ex):
    rng = np.random.default_rng(3)
    for dtype, tol in ((np.float64, FORWARD_TOL), (np.float32, FLOAT32_TOL)):
        def one(shape):
            x, w, stride, padding = _conv_inputs(shape, rng, dtype)
            where = "for " + describe(x=x, w=w, stride=stride, pad=padding) + f" in {x.dtype}"
            expected = ops.depthwise_conv2d_forward(x, w, stride, padding)[0]
            out = np.full(expected.shape, np.nan, dtype=dtype)
            call("ex01 depthwise_conv2d_forward_simple", ex.depthwise_conv2d_forward_simple,
                 out, x, w, stride, padding)
            uninitialised = ("outputs come in uninitialised (np.empty; here NaN-filled): set "
                             "every element, and zero an accumulator before adding into it")
            assert_close(out, expected, "ex01 depthwise_conv2d_forward_simple: out", where, tol,
                         uninitialised if np.isnan(out).any() else STRIDE_HINT)
            dout = rng.standard_normal(expected.shape).astype(dtype)
            rdx, rdw = ops.depthwise_conv2d_backward(
                dout, ops.depthwise_conv2d_forward(x, w, stride, padding)[1])
            dx = np.full(x.shape, np.nan, dtype=dtype)
            dw = np.full(w.shape, np.nan, dtype=dtype)
            call("ex01 depthwise_conv2d_backward_simple", ex.depthwise_conv2d_backward_simple,
                 dx, dw, dout, x, w, stride, padding)
            hint = uninitialised if np.isnan(dx).any() or np.isnan(dw).any() else STRIDE_HINT
            assert_close(dx, rdx, "ex01 depthwise_conv2d_backward_simple: dx", where, tol, hint)
            assert_close(dw, rdw, "ex01 depthwise_conv2d_backward_simple: dw", where, tol, hint)
        _run_over_shapes(one)
    for name in ("depthwise_conv2d_forward_simple", "depthwise_conv2d_backward_simple"):
        if not _is_compiled(getattr(ex, name)):
            fail(f"ex01 {name} is correct but not compiled by Numba",
                 "decorate it with @njit(cache=True) (parallel=True if you use prange)")
    _check_threads_agree(ex)


# Large enough that threads overlap: a kernel whose prange steps write the same elements then
# differs from the one-thread run (lost updates, or sums in another order) in nearly every run;
# 8 runs make a miss vanishingly rare (a racy backward was caught 30 times in 30 here).
RACE_SHAPE = (16, 8, 32, 32, 3, 1, 1)
RACE_RUNS = 8


def _check_threads_agree(ex):
    """The kernels run with every thread Numba has must give exactly the one-thread result."""
    threads = numba_config.NUMBA_NUM_THREADS
    if numba_config.DISABLE_JIT or threads < 2:
        return  # nothing runs in parallel: a race cannot show (and cannot happen)
    rng = np.random.default_rng(30)
    x, w, stride, pad = _conv_inputs(RACE_SHAPE, rng, np.float32)
    out_shape = ops.depthwise_conv2d_forward(x, w, stride, pad)[0].shape
    dout = rng.standard_normal(out_shape).astype(np.float32)

    def run(n_threads):
        previous = minimobile.get_num_threads()
        minimobile.set_num_threads(n_threads)
        try:
            out = np.full(out_shape, np.nan, np.float32)
            ex.depthwise_conv2d_forward_simple(out, x, w, stride, pad)
            dx, dw = np.full(x.shape, np.nan, np.float32), np.full(w.shape, np.nan, np.float32)
            ex.depthwise_conv2d_backward_simple(dx, dw, dout, x, w, stride, pad)
        finally:
            minimobile.set_num_threads(previous)
        return {"out": out, "dx": dx, "dw": dw}

    alone = run(1)
    where = "for " + describe(x=x, w=w, stride=stride, pad=pad) + " in float32"
    for _ in range(RACE_RUNS):
        together = run(threads)
        for name, a in alone.items():
            b = together[name]
            if not np.array_equal(a, b, equal_nan=True):
                kernel = "forward" if name == "out" else "backward"
                differ = int((a != b).sum())
                fail(f"ex01 depthwise_conv2d_{kernel}_simple: {name} with {threads} threads "
                     f"differs from the one-thread run in {differ} of {a.size} entries {where}",
                     Hint("a race: two prange steps write the same element (or share a "
                          "scratch array), and with several threads updates get lost",
                          "prange over planes n * C + c (forward) or over channels c "
                          "(backward), so that step c alone writes dx[:, c] and dw[c]; "
                          "allocate scratch inside the prange body, or use none"))


def check_timing(ex):
    seconds = call("ex01 time_depthwise", ex.time_depthwise, N=2, C=3, H=6, W=6, repeats=1)
    expected = {"numpy_forward", "numpy_backward", "numba_forward", "numba_backward"}
    if set(seconds) != expected:
        fail(f"ex01 time_depthwise returned keys {sorted(seconds)}; expected {sorted(expected)}")
    for name, s in seconds.items():
        if not (np.isfinite(s) and s > 0):
            fail(f"ex01 time_depthwise: {name} took {s} s; expected a positive time")


POINTWISE_CASES = [  # (N, C_in, H, W, C_out, bias)
    (2, 3, 4, 5, 4, True),
    (1, 1, 3, 3, 2, False),
    (2, 5, 1, 1, 3, True),
]


def _pointwise_inputs(case, rng, dtype=np.float64):
    N, C, H, W, C_out, bias = case
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    w = rng.standard_normal((C_out, C, 1, 1)).astype(dtype)
    b = rng.standard_normal(C_out).astype(dtype) if bias else None
    return x, w, b


def check_pointwise_forward(ex):
    rng = np.random.default_rng(4)
    for case in POINTWISE_CASES:
        x, w, b = _pointwise_inputs(case, rng)
        where = "for " + describe(x=x, w=w) + (" with a bias" if b is not None else " and b=None")
        out, _ = call("ex01 pointwise_conv2d_forward", ex.pointwise_conv2d_forward, x, w, b,
                      returns=("out", "cache"))
        assert_close(out, ops.pointwise_conv2d_forward(x, w, b)[0],
                     "ex01 pointwise_conv2d_forward: out", where, FORWARD_TOL,
                     "out[n, o] = sum over c of w[o, c, 0, 0] * x[n, c], plus b[o]")
    x, w, b = _pointwise_inputs(POINTWISE_CASES[0], rng, np.float32)
    out, _ = ex.pointwise_conv2d_forward(x, w, b)
    assert_same_dtype(out, x, "ex01 pointwise_conv2d_forward: out",
                      "for " + describe(x=x, w=w) + " in float32")


def check_pointwise_backward(ex):
    rng = np.random.default_rng(5)
    for case in POINTWISE_CASES:
        x, w, b = _pointwise_inputs(case, rng)
        where = "for " + describe(x=x, w=w) + (" with a bias" if b is not None else " and b=None")
        out, cache = call("ex01 pointwise_conv2d_forward", ex.pointwise_conv2d_forward, x, w, b,
                          returns=("out", "cache"))
        dout = rng.standard_normal(out.shape)
        dx, dw, db = call("ex01 pointwise_conv2d_backward", ex.pointwise_conv2d_backward, dout,
                          cache, returns=("dx", "dw", "db"))

        def f():
            return ops.pointwise_conv2d_forward(x, w, b)[0]
        assert_gradient(f, x, dx, dout, "ex01 pointwise_conv2d_backward: dx", where, GRAD_TOL,
                        "dx[n] = W^T (C_in, C_out) @ dout[n]")
        assert_gradient(f, w, dw, dout, "ex01 pointwise_conv2d_backward: dw", where, GRAD_TOL,
                        "dw[o, c] = sum over n, h, w of dout[n, o] * x[n, c]")
        if b is None:
            if db is not None:
                fail(f"ex01 pointwise_conv2d_backward: db is {type(db).__name__} {where}; "
                     "expected None", "a conv without bias has no bias gradient")
        else:
            assert_gradient(f, b, db, dout, "ex01 pointwise_conv2d_backward: db", where,
                            GRAD_TOL, "db[o] = sum of dout[:, o] over n, h and w")
