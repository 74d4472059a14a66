"""Whole networks on every kernel rung: a training step on the readable kernels gives the fast
kernels' loss and gradients, so a learner can train and gradient-check a network on code they
can read (`with minimobile.kernels.use("simple"): ...`)."""

import numpy as np
import pytest

import minimobile as mm
from minimobile import kernels, optim
from minimobile.blocks import Bneck, ConvBNActivation, InvertedResidual
from minimobile.gradcheck import relative_error


def _training_step(build, x, labels, rung):
    """Loss, logits, every gradient and every running statistic after one SGD step, with the
    network built fresh from the same seed on `rung`."""
    with kernels.use(rung):
        model = build()
        optimizer = optim.SGD(model.named_parameters(), lr=0.1, momentum=0.9,
                              weight_decay=1e-4)
        logits = model.forward(x)
        loss, dlogits = mm.ops.softmax_cross_entropy(logits, labels, label_smoothing=0.1)
        model.backward(dlogits)
        grads = {name: grad.copy() for name, _, grad in model.named_parameters()}
        optimizer.step()
        after = model.state_dict()
    return loss, logits, grads, after


def _assert_same_step(build, x, labels, lower, upper, tol=1e-10):
    loss_a, logits_a, grads_a, state_a = _training_step(build, x, labels, lower)
    loss_b, logits_b, grads_b, state_b = _training_step(build, x, labels, upper)
    assert abs(loss_a - loss_b) <= tol * abs(loss_a), f"loss {loss_a!r} vs {loss_b!r}"
    assert relative_error(logits_b, logits_a) < tol, "logits"
    assert grads_a.keys() == grads_b.keys()
    # Relative to the largest gradient of the network: some gradients are zero up to rounding
    # (a batch norm's beta before a conv and another batch norm, which cancels any shift).
    largest = max(np.abs(g).max() for g in grads_a.values())
    for name in grads_a:
        err = np.abs(grads_b[name] - grads_a[name]).max() / largest
        assert err < tol, f"{upper} against {lower}: gradient of {name}, error {err:.1e}"
    for name in state_a:  # the updated weights and the running statistics, all of order 1
        a, b = np.asarray(state_a[name], np.float64), np.asarray(state_b[name], np.float64)
        err = np.abs(b - a).max() / max(np.abs(a).max(), 1.0)
        assert err < tol, f"{upper} against {lower}: {name} after the step, {err:.1e}"


@pytest.mark.slow
@pytest.mark.parametrize("network", ["v2", "v3-small"])
def test_a_training_step_on_the_simple_rung_matches_the_fast_rung(rng, network):
    if network == "v2":
        def build():
            return mm.mobilenet_v2(num_classes=10, width_mult=0.25, cifar=True, dropout=0.2,
                                   seed=3, dtype=np.float64)
    else:
        def build():
            return mm.mobilenet_v3_small(num_classes=10, width_mult=0.5, cifar=True,
                                         dropout=0.2, seed=3, dtype=np.float64)
    x = rng.standard_normal((4, 3, 32, 32))
    _assert_same_step(build, x, np.array([0, 3, 9, 3]), "simple", "fast")


def _tiny_network():
    """Every layer kind of the four networks, small enough for plain Python loops: a strided
    stem, an inverted residual with its skip, a bneck with squeeze-excite and hard-swish, a
    5x5 depthwise at stride 2, pooling, dropout and a classifier."""
    rng = np.random.default_rng(11)
    kw = dict(rng=rng, dtype=np.float64)
    return mm.Sequential(
        ConvBNActivation(3, 8, 3, stride=2, activation=mm.Hardswish, **kw),
        InvertedResidual(8, 8, 1, 2, **kw),
        Bneck(8, 5, 16, 8, True, "HS", 2, **kw),
        mm.GlobalAvgPool2d(), mm.Flatten(), mm.Dropout(0.2, rng=rng),
        mm.Linear(8, 4, rng=rng, dtype=np.float64))


def test_a_tiny_network_steps_the_same_on_every_rung(rng):
    x = rng.standard_normal((2, 3, 8, 8))
    labels = np.array([1, 3])
    _assert_same_step(_tiny_network, x, labels, "loops", "simple")
    _assert_same_step(_tiny_network, x, labels, "simple", "fast")


def test_a_network_on_the_loops_rung_passes_its_gradient_check(rng):
    """What a learner does on the readable rung: a central difference of the loss against the
    gradient of the first conv's weight."""
    from minimobile.gradcheck import check_gradient
    with kernels.use("loops"):
        model = _tiny_network()
        for module in model:
            if isinstance(module, mm.Dropout):
                module.p = 0.0
        x = rng.standard_normal((2, 3, 8, 8))
        out = model.forward(x)
        dout = rng.standard_normal(out.shape)
        model.backward(dout)
        weight = model[0][0].params["weight"]
        grad = model[0][0].grads["weight"].copy()
        entries = [(0, 0, 0, 0), (3, 1, 2, 1), (7, 2, 1, 2), (5, 0, 2, 0)]
        assert check_gradient(lambda: model.forward(x), weight, grad, dout,
                              indices=entries) < 1e-6
