"""Checks of exercise 03: ReLU6 against the reference and central differences, and the learner's
InvertedResidual against `minimobile.blocks.InvertedResidual` with the same weights."""

import numpy as np

from minimobile.blocks import InvertedResidual

from . import activations, blocks

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


# (in_channels, out_channels, stride, expand_ratio): with and without the skip, at stride 1
# and 2, with and without the expansion layer.
BLOCK_CONFIGS = [(4, 4, 1, 6), (5, 3, 2, 1), (4, 6, 1, 6), (6, 6, 2, 6), (8, 8, 1, 1)]

STRUCTURE_HINT = ("self.conv = Sequential(ConvBNActivation(in, hidden, 1, ...) only if "
                  "expand_ratio != 1, ConvBNActivation(hidden, hidden, 3, stride, groups=hidden, "
                  "...), PointwiseConv2d(hidden, out), BatchNorm2d(out)), with hidden = "
                  "int(round(in_channels * expand_ratio))")
FORWARD_HINT = ("expand (unless expand_ratio is 1), depthwise at the block's stride, then a "
                "linear projection: no activation after the last batch norm; and x + conv(x) "
                "when use_res_connect")
BACKWARD_HINT = ("run the layers' backwards in reverse order (self.conv.backward does); with "
                 "the skip, dout reaches x along two paths, so dx = conv.backward(dout) + dout")


def check_inverted_residual(ex):
    for in_c, out_c, stride, t in BLOCK_CONFIGS:
        blocks.check_block(
            f"ex03 InvertedResidual({in_c}, {out_c}, stride={stride}, expand_ratio={t})",
            lambda rng: ex.InvertedResidual(in_c, out_c, stride, t, rng=rng, dtype=np.float64),
            lambda rng: InvertedResidual(in_c, out_c, stride, t, rng=rng, dtype=np.float64),
            (2, in_c, 7, 7), stride == 1 and in_c == out_c, STRUCTURE_HINT, FORWARD_HINT,
            BACKWARD_HINT)
