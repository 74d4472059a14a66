"""Checks shared by the blocks of exercises 03 and 04: a learner's block against the library's
block of the same arguments (same state-dict names and shapes, then the same weights: same
output, same gradients), and its input gradient against central differences."""

import numpy as np

from minimobile.gradcheck import numerical_gradient, randomize_batchnorm, sample_indices
from minimobile.layers import no_grad

from .common import FORWARD_TOL, Hint, assert_close, call, fail

SKIP_HINT = Hint("the skip x + f(x) needs f(x) to have x's shape (channels and size)",
                 "use_res_connect = stride == 1 and in_channels == out_channels; add x only when "
                 "it is True")
# V1's block never adds its input: the first tier of SKIP_HINT would point a learner at a skip.
NO_SKIP_HINT = Hint("V1's block has no skip connection: out = pw(dw(x)), whatever the shapes",
                    "set self.use_res_connect = False and never add x")
BLOCK_GRAD_TOL = 1e-6  # sampled entries through several batch norms, as tests/test_blocks.py


def _state_dict_differences(mine, library):
    mine_shapes = {k: v.shape for k, v in mine.state_dict().items()}
    library_shapes = {k: v.shape for k, v in library.state_dict().items()}
    lines = []
    missing = [k for k in library_shapes if k not in mine_shapes]
    unexpected = [k for k in mine_shapes if k not in library_shapes]
    shapes = [f"{k}: yours {mine_shapes[k]}, expected {library_shapes[k]}"
              for k in library_shapes if k in mine_shapes and mine_shapes[k] != library_shapes[k]]
    for title, keys in (("missing", missing), ("unexpected", unexpected),
                        ("shapes differ", shapes)):
        if keys:
            more = f", and {len(keys) - 4} more" if len(keys) > 4 else ""
            lines.append(f"  {title}: " + ", ".join(keys[:4]) + more)
    return lines


def _forbid(module, child, what):
    def forbidden(*args, **kwargs):
        fail(f"{what}.backward called self.{child}.backward, the library's Sequential",
             Hint("write the backward out: walk the children of self." + child + " in reverse "
                  "yourself", "g = dout; for layer in reversed(list(self." + child +
                  ")): g = layer.backward(g); then add the skip's path"))
    getattr(module, child).backward = forbidden


def check_block(what, make_mine, make_library, x_shape, expect_skip, structure_hint,
                forward_hint, backward_hint, seed=0, numeric_samples=6, written_out=None,
                skip_hint=SKIP_HINT):
    """Build both blocks (float64) with make_*(rng), compare them, and check mine's gradients:
    against the library's, and at `numeric_samples` entries of dx against central differences
    (0 for whole networks, whose blocks were checked that way already). After the training-mode
    forward, the running statistics it leaves behind must be the library's too.

    what: e.g. 'ex03 InvertedResidual(6, 6, stride=2, expand_ratio=6)'. written_out: the name
    of a Sequential child whose backward the learner must write out rather than call.
    skip_hint: the hint when use_res_connect is wrong, or when a forward that should not add
    its input raises (NO_SKIP_HINT for a block that never has a skip).
    """
    rng = np.random.default_rng(seed)
    mine = call(f"{what}.__init__", make_mine, np.random.default_rng(seed))
    library = randomize_batchnorm(make_library(np.random.default_rng(seed)), rng)
    skip = getattr(mine, "use_res_connect", None)
    if skip is not expect_skip:
        fail(f"{what}: use_res_connect is {skip!r}; expected {expect_skip}", skip_hint)
    differences = _state_dict_differences(mine, library)
    if differences:
        fail(f"{what}: the state dict's names or shapes differ from the library's block:\n"
             + "\n".join(differences), structure_hint)
    mine.load_state_dict(library.state_dict())
    mine.train()
    library.train()
    x = rng.standard_normal(x_shape)
    where = f"on x of shape {x.shape} (the library's block with the same weights as reference)"
    out = call(f"{what}.forward", mine.forward, x, hint=skip_hint if expect_skip is False
               else forward_hint)
    expected = library.forward(x)
    assert_close(out, expected, f"{what}.forward: out", where, FORWARD_TOL, forward_hint)
    library_state = library.state_dict()
    parameters = {name for name, _, _ in library.named_parameters()}
    for name, value in mine.state_dict().items():
        if name not in parameters and name in library_state:
            assert_close(np.asarray(value, np.float64), np.asarray(library_state[name],
                         np.float64), f"{what}: {name} after one training-mode forward", where,
                         FORWARD_TOL, "pass bn_eps and bn_momentum on to every batch norm "
                         "(each layer updates its own running statistics in forward)")
    if written_out is not None:
        _forbid(mine, written_out, what)
    dout = rng.standard_normal(expected.shape)
    dx = call(f"{what}.backward", mine.backward, dout, hint=backward_hint)
    expected_dx = library.backward(dout)
    assert_close(dx, expected_dx, f"{what}.backward: dx", where, FORWARD_TOL, backward_hint)
    library_grads = {name: g for name, _, g in library.named_parameters()}
    for name, _, grad in mine.named_parameters():
        assert_close(grad, library_grads[name], f"{what}.backward: the gradient of {name}",
                     where, FORWARD_TOL, "every layer's backward fills its own grads: call "
                     "backward on all of them, in reverse order")

    if numeric_samples == 0:
        return

    def f():
        with no_grad():
            return mine.forward(x)
    indices = sample_indices(x.shape, numeric_samples, rng)
    numeric = numerical_gradient(f, x, dout, indices=indices)
    picked = tuple(np.array(indices).T)
    scale = np.abs(dx).max()  # as tests/test_blocks.py: a sampled entry may be near zero
    err = float(np.abs(np.asarray(dx)[picked] - numeric[picked]).max() / scale)
    if err > BLOCK_GRAD_TOL:
        fail(f"{what}.backward: dx differs from the numerical gradient by {err:.2e} of its "
             f"largest entry (tolerance {BLOCK_GRAD_TOL:.0e}) {where}", backward_hint)
