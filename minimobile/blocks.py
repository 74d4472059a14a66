"""Blocks: the units MobileNets are stacked from, and where skip-connection gradients are summed.

`DepthwiseSeparable` is V1's unit, `InvertedResidual` V2's and `Bneck` V3's
(`NonlinearBottleneck` is V2's with a ReLU6 after the projection, for the paper's ablation).
Each is a Module whose children carry torchvision's names (`conv` for V2, `block` for V3), so
state dicts map one to one, and each has a `use_res_connect` attribute as torchvision's blocks
do. A skip
connection y = x + f(x) sends dout to x along two paths, so the backward adds them:
dx = dout + f.backward(dout).
"""

import numpy as np

from . import ops
from .layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Hardswish, Module, PointwiseConv2d,
                     ReLU, ReLU6, Sequential, SqueezeExcitation, _rng, deferral_enabled)
from .validation import is_int, is_number

# V3's tables name activations by the paper's abbreviations.
ACTIVATIONS = {"RE": ReLU, "HS": Hardswish}


def _check_activation(block, activation):
    """A layer class (ReLU6, not ReLU6() or "RE"), or None: the block makes one per use."""
    if not (activation is None or (isinstance(activation, type)
                                   and issubclass(activation, Module))):
        raise ValueError(f"{block}: expected activation to be a layer class such as ReLU6 "
                         f"(not an instance or a name), or None, got {activation!r}")


def make_divisible(v, divisor=8, min_value=None):
    """v rounded to the nearest multiple of divisor, at least min_value (default: divisor).

    torchvision's `_make_divisible`: if rounding went down by more than 10 %, go up one step
    instead, so a width multiplier never removes more channels than asked. Every channel count
    of the V2 and V3 models (and of V1 here) goes through it.
    """
    if not (is_int(divisor) and divisor >= 1):
        raise ValueError(f"make_divisible: expected a divisor that is an integer >= 1, got "
                         f"{divisor!r}")
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvBNActivation(Sequential):
    """conv -> BatchNorm2d -> activation, children "0", "1", "2" (torchvision's
    Conv2dNormActivation). The conv is picked by shape: PointwiseConv2d for 1x1 at stride 1,
    DepthwiseConv2d when groups equals both channel counts, Conv2d otherwise (the stem).
    Padding (K - 1) // 2 keeps the size at stride 1. `activation` is a layer class, or None for
    a linear output (then there are only two children, as in torchvision).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, groups=1,
                 activation=ReLU6, bn_eps=1e-5, bn_momentum=0.1, rng=None, dtype=np.float32):
        _check_activation("ConvBNActivation", activation)
        rng = _rng(rng)
        padding = (kernel_size - 1) // 2
        if groups == 1 and kernel_size == 1 and stride == 1:
            conv = PointwiseConv2d(in_channels, out_channels, rng=rng, dtype=dtype)
        elif groups == in_channels == out_channels:
            conv = DepthwiseConv2d(in_channels, kernel_size, stride, padding, rng=rng,
                                   dtype=dtype)
        elif groups == 1:
            conv = Conv2d(in_channels, out_channels, kernel_size, stride, padding, rng=rng,
                          dtype=dtype)
        else:
            raise ValueError(f"ConvBNActivation: groups must be 1 or equal both channel counts, "
                             f"got groups={groups} for {in_channels} -> {out_channels}")
        layers = [conv, BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum, dtype=dtype)]
        if activation is not None:
            layers.append(activation())
        super().__init__(*layers)
        self.fuse = True  # set False to run the children one by one (to inspect or debug them)
        self._fused = False
        # True when a depthwise or 1x1 conv alone reads this layer's output (set by the block
        # or model that knows it: mark_deferred_outputs): then, inside layers.deferred_normalization(),
        # the output is handed on as an ops.NormalizedMap, never written.
        self.defer_output = False
        self._defer_gradient = False

    def forward(self, x):
        # In training mode the batch norm applies the activation in its own pass over memory
        # (ops.batchnorm2d_activation_forward): the same numbers, one tensor less written and
        # read. The activation child stays in the tree for names, printing and eval mode.
        act = self[2] if len(self) == 3 else None
        fused_name = getattr(act, "fused_name", None)
        self._fused = self.fuse and self.training and (act is None or fused_name is not None)
        if not self._fused:
            return super().forward(x)
        defer = self.defer_output and deferral_enabled()
        # The batch norm's dx goes to the conv alone, which can make it as it reads it
        # (ops.NormalizedGradient), under the same switch as the forward's deferral. Only the
        # 1x1 convs do: their products read dout per image, and making it into scratch there
        # took 0.90-0.92 of the time of writing it on three of four layers of 32x32 and 16x16
        # maps (0.79-0.96 in an earlier, ad-hoc run), where the depthwise convs' planes, read
        # channel by channel, held or lost (0.96-1.13; docs/PERFORMANCE.md, "Batch norm's dx
        # made by the conv"). One run each, on a noisy machine.
        self._defer_gradient = deferral_enabled() and isinstance(self[0], PointwiseConv2d)
        # The batch norm's statistics are made by the conv as it writes each plane or image,
        # under the same switch (kernels/batchnorm.py, 3g); the stem's conv does not make them.
        if (deferral_enabled() and ops.BatchNormStatistics.enabled
                and isinstance(self[0], (DepthwiseConv2d, PointwiseConv2d))):
            statistics = ops.BatchNormStatistics()
            out = self[0].forward(x, statistics)
        else:
            statistics = None
            out = self[0].forward(x)
        return self[1].forward_with_activation(out, fused_name, defer, statistics)

    def backward(self, dout):
        if not self._fused:
            return super().backward(dout)
        return self[0].backward(self[1].backward(dout, defer=self._defer_gradient))


def _is_depthwise(layer):
    return isinstance(layer, ConvBNActivation) and isinstance(layer[0], DepthwiseConv2d)


def _first_reader(block):
    """The layer that alone reads `block`'s input, if it is a depthwise ConvBNActivation; else
    None (a skip connection reads the input too, or the first layer is another kind)."""
    if _is_depthwise(block):
        return block
    if isinstance(block, DepthwiseSeparable):
        return block.dw
    if isinstance(block, (InvertedResidual, Bneck)) and not block.use_res_connect:
        first = (block.conv if isinstance(block, InvertedResidual) else block.block)[0]
        return first if _is_depthwise(first) else None
    return None


def _last_writer(block):
    """The ConvBNActivation whose output is `block`'s output, if there is one."""
    if isinstance(block, ConvBNActivation):
        return block
    if isinstance(block, DepthwiseSeparable):
        return block.pw
    return None  # V2's and V3's blocks end in a linear projection, or a skip connection


def _reads_pointwise(layer):
    """True for a 1x1 conv, alone or as the first child of a ConvBNActivation."""
    return isinstance(layer, PointwiseConv2d) or (isinstance(layer, ConvBNActivation)
                                                  and isinstance(layer[0], PointwiseConv2d))


def mark_deferred_outputs(features):
    """Set defer_output on every ConvBNActivation of `features` (a Sequential of blocks) whose
    output one conv alone reads and can normalise as it reads: a depthwise conv, inside a
    block (the expansion before it) or across two (V1's pointwise conv and the next block's
    depthwise conv); or a 1x1 conv, inside a block (the depthwise conv's output, read by V1's
    pointwise conv, or by V2's and V3's projection where no squeeze-excite comes between); a
    depthwise layer read by squeeze-excite, which pools and scales the map as it reads it;
    and every squeeze-excite, whose gated output V3's projection alone reads (it scales each
    image as it reads, ops.ScaledMap)."""
    for block in features:
        inner = getattr(block, "conv", None) or getattr(block, "block", None)
        if isinstance(inner, Sequential) and len(inner) > 1 and _is_depthwise(inner[1]):
            if isinstance(inner[0], ConvBNActivation) and not _is_depthwise(inner[0]):
                inner[0].defer_output = True
        layers = ([block.dw, block.pw] if isinstance(block, DepthwiseSeparable) else
                  list(inner) if isinstance(inner, Sequential) else [])
        for layer, reader in zip(layers, layers[1:]):
            if (_is_depthwise(layer) or isinstance(layer, SqueezeExcitation)) and \
                    _reads_pointwise(reader):
                layer.defer_output = True
            if _is_depthwise(layer) and isinstance(reader, SqueezeExcitation):
                layer.defer_output = True
    for block, after in zip(features, list(features)[1:]):
        writer, reader = _last_writer(block), _first_reader(after)
        if writer is not None and reader is not None:
            writer.defer_output = True


class DepthwiseSeparable(Module):
    """V1's unit (Howard et al. 2017, Figure 3): 3x3 depthwise conv + BN + ReLU, then 1x1
    pointwise conv + BN + ReLU; children `dw` and `pw` (ConvBNActivation each).

    There is no skip connection in V1: use_res_connect is always False, kept so that every block
    answers the same questions.
    """

    def __init__(self, in_channels, out_channels, stride=1, activation=ReLU, bn_eps=1e-5,
                 bn_momentum=0.1, rng=None, dtype=np.float32):
        super().__init__()
        rng = _rng(rng)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.use_res_connect = False
        self.dw = ConvBNActivation(in_channels, in_channels, 3, stride, groups=in_channels,
                                   activation=activation, bn_eps=bn_eps,
                                   bn_momentum=bn_momentum, rng=rng, dtype=dtype)
        self.pw = ConvBNActivation(in_channels, out_channels, 1, activation=activation,
                                   bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)

    def forward(self, x):
        return self.pw.forward(self.dw.forward(x))

    def backward(self, dout):
        return self.dw.backward(self.pw.backward(dout))

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class InvertedResidual(Module):
    """V2's unit (Sandler et al. 2018): 1x1 expand to t*C_in (skipped when t = 1) + BN + ReLU6,
    3x3 depthwise + BN + ReLU6, then a linear 1x1 projection + BN (no activation: the "linear
    bottleneck"). Child `conv` holds them, as in torchvision. out = x + conv(x) when stride is 1
    and C_in == C_out (use_res_connect), else conv(x).
    """

    def __init__(self, in_channels, out_channels, stride, expand_ratio, activation=ReLU6,
                 bn_eps=1e-5, bn_momentum=0.1, rng=None, dtype=np.float32):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"InvertedResidual: expected stride 1 or 2, got {stride}")
        _check_activation("InvertedResidual", activation)
        if not (is_number(expand_ratio) and round(in_channels * expand_ratio) >= 1):
            raise ValueError(f"InvertedResidual: expected an expand_ratio > 0 that leaves at "
                             f"least one hidden channel of {in_channels}, got {expand_ratio!r}")
        rng = _rng(rng)
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)
        hidden = int(round(in_channels * expand_ratio))
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.expand_ratio = expand_ratio
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = []
        if expand_ratio != 1:
            layers.append(ConvBNActivation(in_channels, hidden, 1, activation=activation, **bn))
        layers += [
            ConvBNActivation(hidden, hidden, 3, stride, groups=hidden, activation=activation,
                             **bn),
            PointwiseConv2d(hidden, out_channels, rng=rng, dtype=dtype),
            BatchNorm2d(out_channels, eps=bn_eps, momentum=bn_momentum, dtype=dtype),
        ]
        self.conv = Sequential(*layers)

    def forward(self, x):
        out = self.conv.forward(x)
        return x + out if self.use_res_connect else out

    def backward(self, dout):
        dx = self.conv.backward(dout)
        if self.use_res_connect:
            dx = dx + dout  # the skip passes dout to x unchanged; the two paths add
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, "
                f"expand_ratio={self.expand_ratio}, use_res_connect={self.use_res_connect}")


class NonlinearBottleneck(InvertedResidual):
    """InvertedResidual with its activation (ReLU6) after the projection's BN as well, inside
    the branch, before the skip: the non-linear bottleneck that the V2 paper's ablation trains
    against the linear one (Section 6.4, Figure 6a; notebook 03 runs a small version). Same
    arguments and parameters as InvertedResidual (the extra child `conv.{last}` has none), so
    `mobilenet_v2(block=NonlinearBottleneck)` is V2 with every bottleneck made non-linear.
    For that comparison only: V2 itself is linear. A subclass, not an option of
    InvertedResidual, so exercise 03's block keeps the library's signature.
    """

    def __init__(self, in_channels, out_channels, stride, expand_ratio, activation=ReLU6,
                 bn_eps=1e-5, bn_momentum=0.1, rng=None, dtype=np.float32):
        super().__init__(in_channels, out_channels, stride, expand_ratio, activation, bn_eps,
                         bn_momentum, rng, dtype)
        setattr(self.conv, str(len(self.conv)), activation())


class Bneck(Module):
    """V3's unit (Howard et al. 2019; torchvision's mobilenetv3.InvertedResidual): 1x1 expand
    (skipped when expanded == C_in) + BN + act, K x K depthwise + BN + act, squeeze-excite
    (optional, squeeze width make_divisible(expanded // 4)), linear 1x1 projection + BN; all
    under child `block`. Arguments in the order of a row of the paper's table; activation is
    "RE" (ReLU) or "HS" (hard-swish). Residual when stride is 1 and C_in == C_out.
    """

    def __init__(self, in_channels, kernel_size, expanded_channels, out_channels, use_se,
                 activation, stride, bn_eps=1e-3, bn_momentum=0.01, rng=None, dtype=np.float32):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"Bneck: expected stride 1 or 2, got {stride}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"Bneck: expected activation 'RE' or 'HS', got {activation!r}")
        if not (is_int(kernel_size) and kernel_size % 2 == 1):
            # Padding (K - 1) // 2 keeps the size only for odd K; an even one would shrink the
            # map and break the residual sum at the first forward, far from here.
            raise ValueError(f"Bneck: expected an odd kernel_size (3 or 5 in the paper), got "
                             f"{kernel_size!r}")
        rng = _rng(rng)
        act = ACTIVATIONS[activation]
        bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_size, self.expanded_channels = kernel_size, expanded_channels
        self.use_se, self.activation = use_se, activation
        self.use_res_connect = stride == 1 and in_channels == out_channels
        layers = []
        if expanded_channels != in_channels:
            layers.append(ConvBNActivation(in_channels, expanded_channels, 1, activation=act,
                                           **bn))
        layers.append(ConvBNActivation(expanded_channels, expanded_channels, kernel_size,
                                       stride, groups=expanded_channels, activation=act, **bn))
        if use_se:
            layers.append(SqueezeExcitation(expanded_channels,
                                            make_divisible(expanded_channels // 4, 8),
                                            rng=rng, dtype=dtype))
        layers.append(ConvBNActivation(expanded_channels, out_channels, 1, activation=None,
                                       **bn))
        self.block = Sequential(*layers)

    def forward(self, x):
        out = self.block.forward(x)
        return x + out if self.use_res_connect else out

    def backward(self, dout):
        # The squeeze-excite's two paths to its input are summed inside SqueezeExcitation;
        # here only the skip's path is added.
        dx = self.block.backward(dout)
        if self.use_res_connect:
            dx = dx + dout
        return dx

    def extra_repr(self):
        return (f"{self.in_channels}, {self.kernel_size}, {self.expanded_channels}, "
                f"{self.out_channels}, use_se={self.use_se}, {self.activation}, "
                f"stride={self.stride}, use_res_connect={self.use_res_connect}")
