"""Optional cross-check of minimobile.models against the same networks written in torch.

torchvision is not a dependency, so the torch networks below follow torchvision's mobilenetv2.py
and mobilenetv3.py (module names, channel rounding, block structure) in a few lines each, with
V1 written the same way. minimobile's state dict loads into them strictly, and logits, input
gradients, parameter gradients and running statistics must agree in float64.
"""

import sys
from pathlib import Path

import numpy as np
import pytest

from minimobile.blocks import make_divisible as mm_make_divisible
from minimobile.layers import BatchNorm2d
from minimobile.models import (mobilenet_v1, mobilenet_v2, mobilenet_v3_large,
                               mobilenet_v3_small)

torch = pytest.importorskip("torch")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from torch_models import (V3_LARGE_ROWS, V3_SMALL_ROWS, _make_divisible, torch_v1,  # noqa: E402
                          torch_v2, torch_v3)


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
