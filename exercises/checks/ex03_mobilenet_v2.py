"""Checks of exercise 03: ReLU6 against the library's op and central differences, and the
learner's InvertedResidual against `minimobile.blocks.InvertedResidual` with the same weights,
for every argument away from its default too."""

import numpy as np

from minimobile.blocks import InvertedResidual
from minimobile.layers import Hardswish

from . import activations, blocks
from .common import Hint

RELU6 = activations.Activation(
    "ex03", "relu6", kinks=[0.0, 6.0], low=-3.0, high=9.0,
    pieces=[("x < 0", lambda x: x < 0), ("0 <= x <= 6", lambda x: (x >= 0) & (x <= 6)),
            ("x > 6", lambda x: x > 6)],
    forward_hint="min(max(x, 0), 6): clip below at 0 and above at 6",
    backward_hint="the slope is 1 on (0, 6) and 0 elsewhere, both below 0 and above 6",
    kink_hint="at the kinks minimobile follows PyTorch: the gradient is 0 at x = 0 and at x = 6 "
              "(use 0 < x < 6, strictly)")


def _diagnose_relu6(x, out):
    out = np.asarray(out)
    if out.shape == x.shape and (out > 6).any():
        return (f"some outputs are above 6 (the largest is {out.max():.4g}, for x = "
                f"{x.reshape(-1)[np.argmax(out)]:.4g}): the upper clip at 6 is missing")
    return None


def check_relu6_forward(ex):
    activations.check_forward(ex, RELU6, _diagnose_relu6)


def check_relu6_backward(ex):
    activations.check_backward(ex, RELU6)


# (in_channels, out_channels, stride, expand_ratio, keyword arguments): with and without the
# skip, at stride 1 and 2 (with equal channels too), with and without the expansion layer, an
# expansion whose hidden width rounds (5 * 1.5 = 7.5 -> 8, not int()'s 7), and every keyword
# argument away from its default.
BLOCK_CONFIGS = [(4, 4, 1, 6, {}), (5, 3, 2, 1, {}), (4, 6, 1, 6, {}), (6, 6, 2, 6, {}),
                 (8, 8, 1, 1, {}), (5, 4, 1, 1.5, {}),
                 (4, 4, 1, 2, dict(activation=Hardswish, bn_eps=1e-1, bn_momentum=0.3))]

STRUCTURE_HINT = Hint(
    "expansion (only when expand_ratio != 1), depthwise, projection, batch norm, in that order; "
    "compare the missing and unexpected names with that list",
    "self.conv = Sequential(ConvBNActivation(in, hidden, 1, ...) only if expand_ratio != 1, "
    "ConvBNActivation(hidden, hidden, 3, stride, groups=hidden, ...), PointwiseConv2d(hidden, "
    "out), BatchNorm2d(out)), with hidden = int(round(in_channels * expand_ratio))")
FORWARD_HINT = ("expand (unless expand_ratio is 1), depthwise at the block's stride, then a "
                "linear projection: no activation after the last batch norm; pass activation, "
                "bn_eps and bn_momentum on to every layer")
BACKWARD_HINT = Hint("the layers' backwards run in reverse order; where the skip is, dout "
                     "reaches x along two paths",
                     "g = dout; for layer in reversed(list(self.conv)): g = layer.backward(g); "
                     "dx = g + dout when use_res_connect, else g")


def _text(kwargs):
    names = {Hardswish: "Hardswish"}
    return "".join(f", {k}={names.get(v, v)}" for k, v in kwargs.items())


def check_inverted_residual(ex):
    for in_c, out_c, stride, t, kw in BLOCK_CONFIGS:
        blocks.check_block(
            f"ex03 InvertedResidual({in_c}, {out_c}, stride={stride}, expand_ratio={t}"
            f"{_text(kw)})",
            lambda rng: ex.InvertedResidual(in_c, out_c, stride, t, rng=rng, dtype=np.float64,
                                            **kw),
            lambda rng: InvertedResidual(in_c, out_c, stride, t, rng=rng, dtype=np.float64,
                                         **kw),
            (2, in_c, 7, 7), stride == 1 and in_c == out_c, STRUCTURE_HINT, FORWARD_HINT,
            BACKWARD_HINT, written_out="conv")
