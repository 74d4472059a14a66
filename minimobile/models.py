"""MobileNet V1, V2, V3-Small and V3-Large: architecture tables, then the code that reads them.

The tables are data, one row per block (or per stage for V2), as the papers and torchvision
write them. Parameter names and shapes of V2 and V3 are torchvision's, key for key, so
`load_state_dict` takes a torchvision state dict converted with `.numpy()`. Channel counts are
scaled by `make_divisible(c * width_mult, 8)`. With cifar=True the models take 32x32 images:
the early strides listed in each builder's docstring become 1.
"""

import numpy as np

from .blocks import (Bneck, ConvBNActivation, DepthwiseSeparable, InvertedResidual,
                     make_divisible, mark_deferred_outputs)
from .layers import (Dropout, Flatten, GlobalAvgPool2d, Hardswish, Linear, Module, ReLU, ReLU6,
                     Sequential, deferred_normalization)
from .validation import is_int, is_number, require

__all__ = ["make_divisible", "MobileNet", "MobileNetV1", "MobileNetV2", "MobileNetV3",
           "mobilenet_v1", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
           "V1_SETTING", "V2_SETTING", "V3_LARGE_SETTING", "V3_SMALL_SETTING",
           "MODELS", "MAX_WIDTH", "build_model"]

# Command-line name -> builder below.
MODELS = {
    "v1": "mobilenet_v1",
    "v2": "mobilenet_v2",
    "v3-small": "mobilenet_v3_small",
    "v3-large": "mobilenet_v3_large",
}
# The widest width multiplier build_model accepts. The papers go up to 1.4; at 4 V1 already
# has 16 times its 4.2 M parameters, and a mistyped 100 would fill the memory for minutes
# before failing.
MAX_WIDTH = 4.0

# V1 (Howard et al. 2017, Table 1): after a 3x3 stride-2 stem conv to 32 channels, thirteen
# depthwise separable blocks as (out_channels, stride). The last one is at stride 1: Table 1
# prints "s2" there, but lists its input as 7x7, and only stride 1 gives the paper's 569 M
# multiply-adds.
V1_STEM_CHANNELS = 32
V1_SETTING = [
    (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
    (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
    (1024, 2), (1024, 1),
]

# V2 (Sandler et al. 2018, Table 2, as torchvision writes it): t expand_ratio, c out_channels,
# n repeats, s stride of the first repeat (the others have stride 1).
V2_STEM_CHANNELS = 32
V2_LAST_CHANNEL = 1280
V2_SETTING = [
    # t, c, n, s
    [1, 16, 1, 1],
    [6, 24, 2, 2],
    [6, 32, 3, 2],
    [6, 64, 4, 2],
    [6, 96, 3, 1],
    [6, 160, 3, 2],
    [6, 320, 1, 1],
]

# V3 (Howard et al. 2019, Tables 1 and 2, as torchvision's `_mobilenet_v3_conf`): one row per
# bneck block, in the argument order of `Bneck`. The stem's width is the first row's input.
V3_LARGE_LAST_CHANNEL = 1280
V3_LARGE_SETTING = [
    # input_c, kernel, expanded_c, out_c, use_se, activation, stride
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
]

V3_SMALL_LAST_CHANNEL = 1024
V3_SMALL_SETTING = [
    # input_c, kernel, expanded_c, out_c, use_se, activation, stride
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
]


class MobileNet(Module):
    """features -> global average pool -> flatten -> classifier, and the reverse for backward.

    Subclasses build `features` and `classifier` (Sequentials with torchvision's names) and call
    `_init_weights`. forward takes (N, 3, H, W) and returns logits (N, num_classes); backward
    takes dlogits, fills every parameter's gradient and returns the input's gradient.
    """

    # In training, hand each depthwise conv its input as batch norm's input and constants,
    # normalised as the conv reads it (layers.deferred_normalization), and V3's projection
    # squeeze-excite's input and gate: the same bits, one map less written, read and kept per
    # such conv. False runs the plain path, to compare.
    defer_normalization = True

    def forward(self, x):
        with deferred_normalization(self.defer_normalization):
            x = self.features.forward(x)
        x = self.flatten.forward(self.avgpool.forward(x))  # (N, C)
        return self.classifier.forward(x)

    def backward(self, dlogits):
        dx = self.classifier.backward(dlogits)
        dx = self.avgpool.backward(self.flatten.backward(dx))
        return self.features.backward(dx)

    def _init_weights(self, rng):
        """Convs are already Kaiming-normal (fan-out) and batch norms 1 and 0 from their
        constructors; Linear layers get torchvision's N(0, 0.01) weights and zero biases."""
        for _, module in self.named_modules():
            if isinstance(module, Linear):
                w = module.params["weight"]
                w[...] = rng.normal(0.0, 0.01, w.shape)
                module.params["bias"][...] = 0


class MobileNetV1(MobileNet):
    """V1: stem conv 3x3 s2 + BN + ReLU, the 13 blocks of V1_SETTING, average pool, dropout,
    Linear. State-dict keys: `features.0.0.weight` (stem conv), `features.0.1.*` (its BN),
    `features.{i}.dw.0.weight`, `features.{i}.dw.1.*`, `features.{i}.pw.0.weight`,
    `features.{i}.pw.1.*` for blocks i = 1..13, and `classifier.1.weight`/`.bias` (classifier.0
    is the dropout). BN uses PyTorch's defaults (eps 1e-5, momentum 0.1).
    """

    def __init__(self, num_classes=1000, width_mult=1.0, cifar=False, dropout=0.0, rng=None,
                 dtype=np.float32):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.num_classes, self.width_mult, self.cifar = num_classes, width_mult, cifar
        channels = make_divisible(V1_STEM_CHANNELS * width_mult, 8)
        features = [ConvBNActivation(3, channels, 3, stride=1 if cifar else 2, activation=ReLU,
                                     rng=rng, dtype=dtype)]
        for c, s in V1_SETTING:
            out_channels = make_divisible(c * width_mult, 8)
            features.append(DepthwiseSeparable(channels, out_channels, s, rng=rng, dtype=dtype))
            channels = out_channels
        self.last_channel = channels
        self.features = Sequential(*features)
        mark_deferred_outputs(self.features)
        self.avgpool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.classifier = Sequential(Dropout(dropout, rng=rng),
                                     Linear(channels, num_classes, rng=rng, dtype=dtype))
        self._init_weights(rng)


class MobileNetV2(MobileNet):
    """V2: stem conv 3x3 s2 + BN + ReLU6, the inverted residuals of V2_SETTING, a 1x1 conv to
    `last_channel` (1280, widened only for width_mult > 1) + BN + ReLU6, average pool, dropout,
    Linear. Keys are torchvision's: `features.0.*` stem, `features.1..17.conv.*` blocks,
    `features.18.*` last conv, `classifier.1.*`. BN eps 1e-5, momentum 0.1.
    """

    def __init__(self, num_classes=1000, width_mult=1.0, cifar=False, dropout=0.2, rng=None,
                 dtype=np.float32, block=None):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        block = InvertedResidual if block is None else block
        self.num_classes, self.width_mult, self.cifar = num_classes, width_mult, cifar
        setting = [list(row) for row in V2_SETTING]
        if cifar:
            setting[1][3] = 1  # the 24-channel stage keeps 32x32 / 1 at full size
        channels = make_divisible(V2_STEM_CHANNELS * width_mult, 8)
        self.last_channel = make_divisible(V2_LAST_CHANNEL * max(1.0, width_mult), 8)
        features = [ConvBNActivation(3, channels, 3, stride=1 if cifar else 2,
                                     activation=ReLU6, rng=rng, dtype=dtype)]
        for t, c, n, s in setting:
            out_channels = make_divisible(c * width_mult, 8)
            for i in range(n):
                features.append(block(channels, out_channels, s if i == 0 else 1, t, rng=rng,
                                      dtype=dtype))
                channels = out_channels
        features.append(ConvBNActivation(channels, self.last_channel, 1, activation=ReLU6,
                                         rng=rng, dtype=dtype))
        self.features = Sequential(*features)
        mark_deferred_outputs(self.features)
        self.avgpool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.classifier = Sequential(Dropout(dropout, rng=rng),
                                     Linear(self.last_channel, num_classes, rng=rng, dtype=dtype))
        self._init_weights(rng)


class MobileNetV3(MobileNet):
    """V3 from a bneck table: stem conv 3x3 s2 + BN + hard-swish, one `Bneck` per row, a 1x1
    conv to 6x the last block's width + BN + hard-swish, average pool, then the classifier
    Linear(., last_channel), hard-swish, dropout, Linear(last_channel, num_classes). Keys are
    torchvision's (`features.{i}.block.*`, `classifier.0.*`, `classifier.3.*`). BN eps 1e-3,
    momentum 0.01, as torchvision's V3.
    """

    def __init__(self, setting, last_channel, num_classes=1000, width_mult=1.0, cifar=False,
                 dropout=0.2, rng=None, dtype=np.float32):
        super().__init__()
        rng = rng if rng is not None else np.random.default_rng()
        self.num_classes, self.width_mult, self.cifar = num_classes, width_mult, cifar
        bn = dict(bn_eps=1e-3, bn_momentum=0.01, rng=rng, dtype=dtype)
        rows = []
        for in_c, k, exp_c, out_c, use_se, act, stride in setting:
            rows.append([make_divisible(in_c * width_mult, 8), k,
                         make_divisible(exp_c * width_mult, 8),
                         make_divisible(out_c * width_mult, 8), use_se, act, stride])
        if cifar:
            first_stride_2 = next(i for i, row in enumerate(rows) if row[6] == 2)
            rows[first_stride_2][6] = 1
        self.setting = [tuple(row) for row in rows]
        features = [ConvBNActivation(3, rows[0][0], 3, stride=1 if cifar else 2,
                                     activation=Hardswish, **bn)]
        features += [Bneck(*row, **bn) for row in rows]
        last_conv = 6 * rows[-1][3]
        features.append(ConvBNActivation(rows[-1][3], last_conv, 1, activation=Hardswish, **bn))
        self.last_channel = make_divisible(last_channel * width_mult, 8)
        self.features = Sequential(*features)
        mark_deferred_outputs(self.features)
        self.avgpool = GlobalAvgPool2d()
        self.flatten = Flatten()
        self.classifier = Sequential(
            Linear(last_conv, self.last_channel, rng=rng, dtype=dtype),
            Hardswish(),
            Dropout(dropout, rng=rng),
            Linear(self.last_channel, num_classes, rng=rng, dtype=dtype),
        )
        self._init_weights(rng)


def _make_rng(rng, seed):
    if rng is not None and seed is not None:
        raise ValueError("give either rng or seed, not both")
    require(seed is None or (is_int(seed) and seed >= 0), "seed",
            "None or an integer >= 0", seed)
    return rng if rng is not None else np.random.default_rng(seed)


def _classes(num_classes, cifar):
    return num_classes if num_classes is not None else (10 if cifar else 1000)


def _check_arguments(builder, num_classes, width_mult, dropout, dtype):
    """What every builder takes, checked before a layer is built, so that a bad multiplier
    or dtype is named here rather than as an error from deep inside a layer."""
    require(num_classes is None or (is_int(num_classes) and num_classes >= 1),
            f"{builder}: num_classes", "None or an integer >= 1", num_classes)
    require(is_number(width_mult) and width_mult > 0, f"{builder}: width_mult",
            "a finite number > 0", width_mult)
    require(is_number(dropout) and 0 <= dropout < 1, f"{builder}: dropout",
            "a number with 0 <= dropout < 1", dropout)
    try:
        kind = np.dtype(dtype)
    except TypeError:
        kind = None
    require(kind in (np.float32, np.float64), f"{builder}: dtype",
            "float32 or float64", dtype)


def mobilenet_v1(num_classes=None, width_mult=1.0, cifar=False, dropout=0.0, rng=None,
                 seed=None, dtype=np.float32):
    """MobileNet V1. num_classes defaults to 1000, or 10 with cifar=True. dropout defaults to 0
    (torchvision has no V1 to copy; the paper trains with little regularisation). cifar=True:
    stem at stride 1, so a 32x32 image ends at 2x2. Channels are make_divisible(c * width_mult):
    at the paper's multipliers 0.25, 0.5, 0.75 every count is already a multiple of 8, so this
    equals the paper's plain scaling. Weights come from rng, or default_rng(seed).
    """
    _check_arguments("mobilenet_v1", num_classes, width_mult, dropout, dtype)
    return MobileNetV1(_classes(num_classes, cifar), width_mult, cifar, dropout,
                       _make_rng(rng, seed), dtype)


def mobilenet_v2(num_classes=None, width_mult=1.0, cifar=False, dropout=0.2, rng=None,
                 seed=None, dtype=np.float32, block=None):
    """MobileNet V2, torchvision's. num_classes defaults to 1000, or 10 with cifar=True.
    cifar=True: stem and the 24-channel stage (second row) at stride 1, so 32x32 ends at 4x4.
    Weights come from rng, or default_rng(seed). `block` replaces InvertedResidual (None): it
    is called as InvertedResidual is, block(in_channels, out_channels, stride, expand_ratio,
    rng=rng, dtype=dtype), so a learner's own block can run inside the network (exercise 06).
    """
    _check_arguments("mobilenet_v2", num_classes, width_mult, dropout, dtype)
    return MobileNetV2(_classes(num_classes, cifar), width_mult, cifar, dropout,
                       _make_rng(rng, seed), dtype, block)


def mobilenet_v3_large(num_classes=None, width_mult=1.0, cifar=False, dropout=0.2, rng=None,
                       seed=None, dtype=np.float32):
    """MobileNet V3-Large, torchvision's. num_classes defaults to 1000, or 10 with cifar=True.
    cifar=True: stem and the first stride-2 block (row 2) at stride 1, so 32x32 ends at 4x4.
    Weights come from rng, or default_rng(seed).
    """
    _check_arguments("mobilenet_v3_large", num_classes, width_mult, dropout, dtype)
    return MobileNetV3(V3_LARGE_SETTING, V3_LARGE_LAST_CHANNEL, _classes(num_classes, cifar),
                       width_mult, cifar, dropout, _make_rng(rng, seed), dtype)


def mobilenet_v3_small(num_classes=None, width_mult=1.0, cifar=False, dropout=0.2, rng=None,
                       seed=None, dtype=np.float32):
    """MobileNet V3-Small, torchvision's. num_classes defaults to 1000, or 10 with cifar=True.
    cifar=True: stem and the first block at stride 1, so 32x32 ends at 4x4 (that block then has
    C_in == C_out at stride 1, so it gains a residual connection). Weights come from rng, or
    default_rng(seed).
    """
    _check_arguments("mobilenet_v3_small", num_classes, width_mult, dropout, dtype)
    return MobileNetV3(V3_SMALL_SETTING, V3_SMALL_LAST_CHANNEL, _classes(num_classes, cifar),
                       width_mult, cifar, dropout, _make_rng(rng, seed), dtype)


def build_model(name, width=1.0, cifar=True, num_classes=10, dropout=None, seed=0,
                dtype=np.float32):
    """The MobileNet called `name` ("v1", "v2", "v3-small", "v3-large"), weights drawn from
    default_rng(seed). dropout None keeps the builder's default (0 for V1, 0.2 for V2 and V3).
    cifar=True gives the 32x32 variants (early strides 1). ValueError for an unknown name or a
    width outside (0, MAX_WIDTH]."""
    if name not in MODELS:
        raise ValueError(f"model: expected one of {list(MODELS)}, got {name!r}")
    if not 0 < width <= MAX_WIDTH:
        raise ValueError(f"width: expected a multiplier in (0, {MAX_WIDTH:g}], got {width!r}")
    builder = globals()[MODELS[name]]
    kwargs = {} if dropout is None else {"dropout": dropout}
    return builder(num_classes=num_classes, width_mult=width, cifar=cifar, seed=seed,
                   dtype=np.dtype(dtype).type, **kwargs)
