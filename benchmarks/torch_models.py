"""The MobileNets written in PyTorch, following torchvision's mobilenetv2.py and mobilenetv3.py
(module names, channel rounding, block structure) in a few lines each, with V1 written the
same way. torchvision itself is not needed. Used by the cross-check tests
(tests/test_models_torch.py) and as the peer in benchmarks/bench_train_step.py; importing
this file needs torch, which minimobile itself never does.
"""

import torch

nn = torch.nn


def _make_divisible(v, divisor=8, min_value=None):
    """torchvision.models._utils._make_divisible, verbatim in substance."""
    if min_value is None:
        min_value = divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class ConvNormActivation(nn.Sequential):
    def __init__(self, cin, cout, k=3, stride=1, groups=1, act=nn.ReLU6, eps=1e-5,
                 momentum=0.1):
        layers = [nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout, eps=eps, momentum=momentum)]
        if act is not None:
            layers.append(act())
        super().__init__(*layers)


class DepthwiseSeparable(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.dw = ConvNormActivation(cin, cin, 3, stride, groups=cin, act=nn.ReLU)
        self.pw = ConvNormActivation(cin, cout, 1, act=nn.ReLU)

    def forward(self, x):
        return self.pw(self.dw(x))


class InvertedResidual(nn.Module):
    def __init__(self, inp, oup, stride, expand_ratio):
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(ConvNormActivation(inp, hidden, 1))
        layers += [ConvNormActivation(hidden, hidden, 3, stride, groups=hidden),
                   nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class Hardsigmoid(nn.Module):
    """relu6(x + 3) / 6 with exact float64 gradients: torch's own hardsigmoid backward
    multiplies by 1.0f / 6.0f, a float32 constant, which is 3e-8 off in float64."""

    def forward(self, x):
        return nn.functional.hardtanh(x + 3, 0.0, 6.0) / 6


class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation with V3's hard-sigmoid gate."""

    def __init__(self, channels, squeeze):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = Hardsigmoid()

    def forward(self, x):
        s = self.fc2(self.activation(self.fc1(self.avgpool(x))))
        return self.scale_activation(s) * x


class Bneck(nn.Module):
    def __init__(self, cin, k, exp, cout, use_se, act, stride):
        super().__init__()
        self.use_res_connect = stride == 1 and cin == cout
        act = nn.Hardswish if act == "HS" else nn.ReLU
        bn = dict(eps=1e-3, momentum=0.01)
        layers = []
        if exp != cin:
            layers.append(ConvNormActivation(cin, exp, 1, act=act, **bn))
        layers.append(ConvNormActivation(exp, exp, k, stride, groups=exp, act=act, **bn))
        if use_se:
            layers.append(SqueezeExcitation(exp, _make_divisible(exp // 4, 8)))
        layers.append(ConvNormActivation(exp, cout, 1, act=None, **bn))
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNet(nn.Module):
    def __init__(self, features, classifier):
        super().__init__()
        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


V1_ROWS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)] + [(512, 1)] * 5 + [
    (1024, 2), (1024, 1)]
V2_ROWS = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
           [6, 160, 3, 2], [6, 320, 1, 1]]
V3_LARGE_ROWS = [
    (16, 3, 16, 16, False, "RE", 1), (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1), (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1), (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2), (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1), (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1), (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2), (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1)]
V3_SMALL_ROWS = [
    (16, 3, 16, 16, True, "RE", 2), (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1), (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1), (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1), (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2), (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1)]


def torch_v1(num_classes, width, cifar, dropout):
    c = _make_divisible(32 * width)
    features = [ConvNormActivation(3, c, 3, 1 if cifar else 2, act=nn.ReLU)]
    for out, s in V1_ROWS:
        features.append(DepthwiseSeparable(c, _make_divisible(out * width), s))
        c = _make_divisible(out * width)
    return MobileNet(features, nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes)))


def torch_v2(num_classes, width, cifar, dropout):
    c = _make_divisible(32 * width)
    last = _make_divisible(1280 * max(1.0, width))
    features = [ConvNormActivation(3, c, 3, 1 if cifar else 2)]
    for row, (t, out, n, s) in enumerate(V2_ROWS):
        s = 1 if cifar and row == 1 else s
        for i in range(n):
            features.append(InvertedResidual(c, _make_divisible(out * width),
                                             s if i == 0 else 1, t))
            c = _make_divisible(out * width)
    features.append(ConvNormActivation(c, last, 1))
    return MobileNet(features, nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes)))


def torch_v3(rows, last_channel, num_classes, width, cifar, dropout):
    rows = [[_make_divisible(r[0] * width), r[1], _make_divisible(r[2] * width),
             _make_divisible(r[3] * width), *r[4:]] for r in rows]
    if cifar:
        next(r for r in rows if r[6] == 2)[6] = 1
    bn = dict(eps=1e-3, momentum=0.01)
    features = [ConvNormActivation(3, rows[0][0], 3, 1 if cifar else 2, act=nn.Hardswish, **bn)]
    features += [Bneck(*r) for r in rows]
    last_conv = 6 * rows[-1][3]
    features.append(ConvNormActivation(rows[-1][3], last_conv, 1, act=nn.Hardswish, **bn))
    last = _make_divisible(last_channel * width)
    return MobileNet(features, nn.Sequential(nn.Linear(last_conv, last), nn.Hardswish(),
                                             nn.Dropout(dropout), nn.Linear(last, num_classes)))


BUILDERS = {
    "v1": torch_v1,
    "v2": torch_v2,
    "v3-small": lambda *a: torch_v3(V3_SMALL_ROWS, 1024, *a),
    "v3-large": lambda *a: torch_v3(V3_LARGE_ROWS, 1280, *a),
}


def build(name, width, cifar=True, num_classes=10, dropout=0.0):
    """One of the four networks by its command-line name ("v1", "v2", "v3-small", "v3-large")."""
    return BUILDERS[name](num_classes, width, cifar, dropout)
