"""Checks of exercise 04: hard-swish and hard-sigmoid against the library's ops and central
differences; the learner's SqueezeExcitation and Bneck against the library's with the same
weights, for every argument away from its default too."""

import numpy as np

from minimobile.blocks import Bneck
from minimobile.layers import SqueezeExcitation

from . import activations, blocks
from .common import Hint

HARDSWISH = activations.Activation(
    "ex04", "hardswish", kinks=[-3.0, 3.0], low=-5.0, high=5.0,
    pieces=[("x < -3", lambda x: x < -3), ("-3 <= x <= 3", lambda x: (x >= -3) & (x <= 3)),
            ("x > 3", lambda x: x > 3)],
    forward_hint="x * min(max(x + 3, 0), 6) / 6: 0 below -3, x above 3, a parabola between",
    backward_hint="piece by piece: 0 below -3, 1 above 3, and on [-3, 3] the derivative of "
                  "x * (x + 3) / 6, which is (2x + 3) / 6 = x/3 + 1/2 (the product rule: do not "
                  "forget the x in front)",
    kink_hint="at the kinks minimobile follows PyTorch: x/3 + 1/2 on the closed [-3, 3], so "
              "-1/2 at x = -3 and 3/2 at x = 3")
HARDSIGMOID = activations.Activation(
    "ex04", "hardsigmoid", kinks=[-3.0, 3.0], low=-5.0, high=5.0,
    pieces=[("x < -3", lambda x: x < -3), ("-3 <= x <= 3", lambda x: (x >= -3) & (x <= 3)),
            ("x > 3", lambda x: x > 3)],
    forward_hint="min(max(x + 3, 0), 6) / 6: 0 below -3, 1 above 3, a line between",
    backward_hint="the slope is 1/6 on (-3, 3) and 0 outside",
    kink_hint="at the kinks minimobile follows PyTorch: 1/6 on the open (-3, 3) only, so 0 at "
              "x = -3 and at x = 3")


def check_hardswish_forward(ex):
    activations.check_forward(ex, HARDSWISH)


def check_hardswish_backward(ex):
    activations.check_backward(ex, HARDSWISH)


def check_hardsigmoid_forward(ex):
    activations.check_forward(ex, HARDSIGMOID)


def check_hardsigmoid_backward(ex):
    activations.check_backward(ex, HARDSIGMOID)


SE_CONFIGS = [(8, 8), (6, 4), (1, 8)]  # (input_channels, squeeze_channels)


def check_squeeze_excitation(ex):
    for channels, squeeze in SE_CONFIGS:
        blocks.check_block(
            f"ex04 SqueezeExcitation({channels}, {squeeze})",
            lambda rng: ex.SqueezeExcitation(channels, squeeze, rng=rng, dtype=np.float64),
            lambda rng: SqueezeExcitation(channels, squeeze, rng=rng, dtype=np.float64),
            (2, channels, 5, 4), None,
            "keep the given __init__: the children's names are torchvision's",
            "s = scale_activation(fc2(activation(fc1(avgpool(x))))) has shape (N, C, 1, 1); "
            "out = x * s",
            Hint("x reaches out along two paths: directly, and through the gate s that is "
                 "computed from it; add both",
                 "dx = dout * s, plus the gate's path: ds = sum over H, W of dout * x, back "
                 "through scale_activation, fc2, activation, fc1 and avgpool"))


# (in_channels, kernel_size, expanded_channels, out_channels, use_se, activation, stride,
# keyword arguments): both activations, K = 3 and 5, stride 2 with equal channels (no skip),
# a squeeze width that make_divisible rounds up (72 // 4 = 18 -> 24), and batch norm's eps and
# momentum away from V3's defaults (1e-3, 0.01).
BNECK_CONFIGS = [
    (8, 5, 16, 8, True, "HS", 1, {}),
    (8, 3, 8, 4, True, "RE", 2, {}),
    (4, 3, 12, 6, False, "RE", 2, {}),
    (6, 3, 6, 6, False, "HS", 1, {}),
    (6, 3, 12, 6, False, "HS", 2, {}),
    (24, 3, 72, 24, True, "RE", 1, {}),
    (4, 3, 8, 4, True, "HS", 1, dict(bn_eps=1e-1, bn_momentum=0.3)),
]
BNECK_STRUCTURE_HINT = Hint(
    "expansion (unless expanded == in), depthwise, squeeze-excite (if use_se), projection; "
    "the squeeze width is make_divisible(expanded // 4, 8)",
    "self.block = Sequential(ConvBNActivation(in, expanded, 1, activation=act) unless "
    "expanded == in, ConvBNActivation(expanded, expanded, K, stride, groups=expanded, "
    "activation=act), SqueezeExcitation(expanded, make_divisible(expanded // 4, 8)) if use_se, "
    "ConvBNActivation(expanded, out, 1, activation=None)), passing bn_eps, bn_momentum, rng and "
    "dtype to each")


def check_bneck(ex):
    for *row, kw in BNECK_CONFIGS:
        in_c, _, _, out_c, _, _, stride = row
        extra = "".join(f", {k}={v}" for k, v in kw.items())
        blocks.check_block(
            f"ex04 Bneck({', '.join(map(repr, row))}{extra})",
            lambda rng: ex.Bneck(*row, rng=rng, dtype=np.float64, **kw),
            lambda rng: Bneck(*row, rng=rng, dtype=np.float64, **kw),
            (2, in_c, 7, 7), stride == 1 and in_c == out_c, BNECK_STRUCTURE_HINT,
            "expand (unless expanded == in), depthwise, squeeze-excite (if use_se), linear "
            "projection; pass the activation, bn_eps and bn_momentum on (if only this fails, "
            "check SqueezeExcitation first)",
            Hint("the layers' backwards run in reverse order; where the skip is, dout reaches "
                 "x along two paths",
                 "g = dout; for layer in reversed(list(self.block)): g = layer.backward(g); "
                 "dx = g + dout when use_res_connect"), written_out="block")
