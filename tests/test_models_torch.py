"""Optional cross-check of minimobile.models against the same networks written in torch.

torchvision is not a dependency, so the torch networks below follow torchvision's mobilenetv2.py
and mobilenetv3.py (module names, channel rounding, block structure) in a few lines each, with
V1 written the same way. minimobile's state dict loads into them strictly, and logits, input
gradients, parameter gradients and running statistics must agree in float64.
"""

import numpy as np
import pytest

from minimobile.blocks import make_divisible as mm_make_divisible
from minimobile.layers import BatchNorm2d
from minimobile.models import (mobilenet_v1, mobilenet_v2, mobilenet_v3_large,
                               mobilenet_v3_small)

torch = pytest.importorskip("torch")
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


PAIRS = {
    "v1": (mobilenet_v1, torch_v1),
    "v2": (mobilenet_v2, torch_v2),
    "v3_small": (mobilenet_v3_small, lambda *a: torch_v3(V3_SMALL_ROWS, 1024, *a)),
    "v3_large": (mobilenet_v3_large, lambda *a: torch_v3(V3_LARGE_ROWS, 1280, *a)),
}


def build_pair(arch, width, cifar, dtype=np.float64, seed=0):
    ours_fn, torch_fn = PAIRS[arch]
    ours = ours_fn(num_classes=10, width_mult=width, cifar=cifar, dropout=0.0, dtype=dtype,
                   seed=seed)
    theirs = torch_fn(10, width, cifar, 0.0)
    return ours, theirs


def close(a, b, floor=1e-300):
    """Largest difference over the largest magnitude (or floor, when both are ~0)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max(), floor)


@pytest.mark.parametrize("arch", list(PAIRS))
@pytest.mark.parametrize("width, cifar", [(1.0, False), (0.5, True), (1.4, False)])
def test_state_dict_keys_and_shapes_match_torchvisions_structure(arch, width, cifar):
    ours, theirs = build_pair(arch, width, cifar, dtype=np.float32)
    ours_state, torch_state = ours.state_dict(), theirs.state_dict()
    assert list(ours_state) == list(torch_state)
    assert all(ours_state[k].shape == tuple(torch_state[k].shape) for k in ours_state)
    assert mm_make_divisible(1280 * width) == _make_divisible(1280 * width)


@pytest.mark.parametrize("arch, width, cifar, side", [
    ("v1", 0.25, True, 32), ("v2", 0.35, True, 32), ("v3_small", 0.5, True, 32),
    ("v3_large", 0.35, False, 64),
])
def test_logits_gradients_and_running_statistics_match_torch(arch, width, cifar, side):
    rng = np.random.default_rng(7)
    ours, theirs = build_pair(arch, width, cifar)
    for _, m in ours.named_modules():  # exercise every term, not just the identity init
        if isinstance(m, BatchNorm2d):
            C = m.params["weight"].size
            m.params["weight"][...] = rng.uniform(0.5, 1.5, C)
            m.params["bias"][...] = rng.normal(0, 0.5, C)
            m.buffers["running_mean"][...] = rng.normal(0, 0.3, C)
            m.buffers["running_var"][...] = rng.uniform(0.5, 2.0, C)
    theirs.double().load_state_dict({k: torch.from_numpy(v) for k, v in
                                     ours.state_dict().items()})
    x = rng.standard_normal((2, 3, side, side))
    for mode in ("train", "eval"):
        ours.train(mode == "train")
        theirs.train(mode == "train")
        xt = torch.from_numpy(x.copy()).requires_grad_(True)
        theirs.zero_grad()
        out_t = theirs(xt)
        out = ours.forward(x)
        assert close(out, out_t.detach().numpy()) < 1e-10, mode
        dlogits = rng.standard_normal(out.shape)
        dx = ours.backward(dlogits)
        out_t.backward(torch.from_numpy(dlogits))
        assert close(dx, xt.grad.numpy()) < 1e-9, mode
        torch_grads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
        # In training mode the bias of a batch norm that feeds a 1x1 conv and another batch
        # norm has gradient exactly 0 (~1e-15 on both sides): compare it on the network's scale.
        floor = 1e-6 * max(np.abs(g).max() for _, _, g in ours.named_parameters())
        for name, _, grad in ours.named_parameters():
            assert close(grad, torch_grads[name], floor) < 1e-9, (mode, name)
        torch_state = theirs.state_dict()
        for key, value in ours.state_dict().items():  # running statistics moved alike
            assert close(value, torch_state[key].numpy()) < 1e-12, (mode, key)
