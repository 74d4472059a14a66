"""Checks shared by the piecewise activations of exercises 03 and 04 (ReLU6, hard-swish,
hard-sigmoid): forward against the library's op in float64, backward against central
differences away from the kinks and against the library's op at the kinks (PyTorch's convention
there)."""

import numpy as np

from minimobile import ops

from .common import (FORWARD_TOL, GRAD_TOL, assert_close, assert_gradient, assert_same_dtype,
                     away_from, call)

SHAPES = [(2, 3, 4, 5), (7,), (1, 1, 3, 3)]


class Activation:
    """What the checks need to know about one activation: its exercise, name, kinks, the
    range to sample, its pieces (label, predicate on x) and hints."""

    def __init__(self, exercise, name, kinks, low, high, pieces, forward_hint, backward_hint,
                 kink_hint):
        self.exercise, self.name, self.kinks = exercise, name, kinks
        self.low, self.high, self.pieces = low, high, pieces
        self.forward_hint, self.backward_hint, self.kink_hint = (forward_hint, backward_hint,
                                                                 kink_hint)

    def sample(self, shape, rng):
        return away_from(rng.uniform(self.low, self.high, shape), self.kinks)

    def piece_masks(self, x):
        return [(label, predicate(x)) for label, predicate in self.pieces]


def check_forward(ex, act, diagnose=None):
    """diagnose(x, out) may return a sharper hint than act.forward_hint."""
    rng = np.random.default_rng(20)
    forward = getattr(ex, f"{act.name}_forward")
    what = f"{act.exercise} {act.name}_forward: out"
    for shape in SHAPES:
        x = act.sample(shape, rng)
        x.reshape(-1)[:len(act.kinks)] = act.kinks[:x.size]  # the kinks themselves, too
        out, _ = call(f"{act.exercise} {act.name}_forward", forward, x, returns=("out", "cache"))
        hint = (diagnose(x, out) if diagnose else None) or act.forward_hint
        assert_close(out, getattr(ops, f"{act.name}_forward")(x)[0], what,
                     f"for x of shape {x.shape}", FORWARD_TOL, hint, {"x": x},
                     act.piece_masks(x))
    x = act.sample(SHAPES[0], rng).astype(np.float32)
    out, _ = forward(x)
    assert_same_dtype(out, x, what, f"for x of shape {x.shape} in float32")


def check_backward(ex, act):
    rng = np.random.default_rng(21)
    backward = getattr(ex, f"{act.name}_backward")
    library_forward = getattr(ops, f"{act.name}_forward")
    what = f"{act.exercise} {act.name}_backward: dx"
    for shape in SHAPES:
        x = act.sample(shape, rng)
        _, cache = library_forward(x)  # the library's ActivationCache(x)
        dout = rng.standard_normal(x.shape)
        dx = call(f"{act.exercise} {act.name}_backward", backward, dout, cache)
        assert_gradient(lambda: library_forward(x)[0], x, dx, dout, what,
                        f"for x of shape {x.shape}", GRAD_TOL, act.backward_hint,
                        context={"x": x}, pieces=act.piece_masks(x))
    x = np.array(act.kinks + [k + d for k in act.kinks for d in (-0.5, 0.5)])
    dout = rng.standard_normal(x.shape)
    dx = call(f"{act.exercise} {act.name}_backward", backward, dout, library_forward(x)[1])
    library_backward = getattr(ops, f"{act.name}_backward")
    assert_close(dx, library_backward(dout, library_forward(x)[1]), what,
                 f"at and around the kinks, x = {x.tolist()}", FORWARD_TOL, act.kink_hint,
                 {"x": x})
    x = act.sample(SHAPES[0], rng).astype(np.float32)
    dx = backward(np.ones_like(x), library_forward(x)[1])
    assert_same_dtype(dx, x, what, f"for x of shape {x.shape} in float32")
