"""Checks of exercise 06: the learner's training loop, run for a few steps on a tiny random
CIFAR-10 (`minimobile.data.write_fake_cifar10`), must give every step's loss that a reference
loop gives with the same seed and the same model (the learner's own block from exercise 03, so
only the loop is judged); the first step that differs is named, with the likely cause found by
rerunning the reference with that mistake. It must print as training goes, and the confusion
matrix must count every class, including one that never occurs."""

import contextlib
import io

import numpy as np

from minimobile.data import load_cifar10, write_fake_cifar10
from minimobile.models import MobileNetV2, V2_SETTING
from minimobile.ops import softmax_cross_entropy
from minimobile.optim import SGD
from minimobile.train import confusion_matrix as library_confusion_matrix

from .common import Hint, call, fail

STEPS = 4
# Two batches per epoch, so that the shuffle and the epoch boundary (step 2) matter; lr away
# from the default; no augmentation, so the data pipeline is simple to match.
ARGS = dict(steps=STEPS, batch_size=8, width_mult=0.25, lr=0.02, limit=16, augment=False,
            seed=0, print_every=2)
LOSS_TOL = 1e-4

# (label, reference-loop options, cause): the mistakes tried, in order, when a step differs.
MISTAKES = [
    ("shuffle", dict(shuffle=False), "the batches are not shuffled: Batches shuffles when "
     "given rng=np.random.default_rng(seed)"),
    ("limit", dict(limit=None), "`limit` is ignored: keep the first `limit` training images"),
    ("augment", dict(augment=True), "`augment` is ignored: pass augment=augment to Batches"),
    ("lr", dict(lr=0.05), "the learning rate is the default 0.05, not the `lr` passed in"),
    ("weight decay", dict(weight_decay=0.0), "weight decay is missing: weight_decay=5e-4"),
    ("momentum", dict(momentum=0.0, nesterov=False), "momentum is missing: momentum=0.9, "
     "nesterov=True"),
    ("nesterov", dict(nesterov=False), "nesterov=True is missing"),
    ("optimiser rebuilt", dict(rebuild_optimizer=True), "the optimiser is made anew every "
     "step, so its momentum is lost: make it once, before the loop"),
    ("step before backward", dict(step_first=True), "optimizer.step() runs before "
     "model.backward(dlogits), so each step applies the previous step's gradients"),
    ("batches rebuilt", dict(rebuild_batches=True), "Batches (and its rng) is made anew every "
     "epoch, so every epoch replays the first one's order: make it once, before the loop"),
]


def _reference_losses(ex, root, steps, shuffle=True, limit=16, augment=False, lr=0.02,
                      weight_decay=5e-4, momentum=0.9, nesterov=True, rebuild_optimizer=False,
                      step_first=False, rebuild_batches=False):
    from minimobile.data import Batches
    from minimobile.models import mobilenet_v2
    data = load_cifar10(root, download=False)
    x, y = data.x_train[:limit], data.y_train[:limit]
    model = mobilenet_v2(num_classes=10, width_mult=ARGS["width_mult"], cifar=True,
                         seed=ARGS["seed"], block=ex.InvertedResidual)

    def optimizer():
        return SGD(model.named_parameters(), lr, momentum=momentum, nesterov=nesterov,
                   weight_decay=weight_decay)

    def batches():
        return Batches(x, y, ARGS["batch_size"], augment=augment, shuffle=shuffle,
                       drop_last=True, rng=np.random.default_rng(ARGS["seed"]))
    opt, data_batches, losses = optimizer(), batches(), []
    while len(losses) < steps:
        for xb, yb in data_batches:
            logits = model.forward(xb)
            loss, dlogits = softmax_cross_entropy(logits, yb)
            if rebuild_optimizer:
                opt = optimizer()
            if step_first:
                opt.step()
            model.backward(dlogits)
            if not step_first:
                opt.step()
            losses.append(float(loss))
            if len(losses) == steps:
                break
        if rebuild_batches:
            data_batches = batches()
    return losses


class _Watch(io.StringIO):
    """stdout that notes how many forwards had run when each line was printed."""

    def __init__(self, forwards):
        super().__init__()
        self.forwards, self.lines = forwards, []

    def write(self, text):
        for _ in range(text.count("\n")):
            self.lines.append(self.forwards[0])
        return super().write(text)


def check_training(ex, tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=10, n_test=10, seed=0)
    what = "ex06 train_mobilenet_v2"
    where = "on a fake CIFAR-10 (random images), " + ", ".join(f"{k}={v}"
                                                               for k, v in ARGS.items())
    forwards, built = [0], []
    original = ex.mobilenet_v2

    def mobilenet_v2(*args, **kwargs):
        model = original(*args, **kwargs)
        forward = model.forward

        def counted(x, *a, **k):
            forwards[0] += 1
            return forward(x, *a, **k)
        model.forward = counted
        built.append(model)
        return model
    ex.mobilenet_v2 = mobilenet_v2
    out = _Watch(forwards)
    try:
        with contextlib.redirect_stdout(out):
            result = call(what, ex.train_mobilenet_v2, root, **ARGS)
    except NotImplementedError as e:
        if str(e).startswith("ex03"):
            fail(f"{what} needs your InvertedResidual from exercise 03, which raised "
                 f"NotImplementedError: {e}", "do exercise 03 first (python -m pytest "
                 "exercises -m ex03); exercise 06 trains a network made of your block")
        raise
    finally:
        ex.mobilenet_v2 = original
    if not isinstance(result, tuple) or len(result) != 2:
        fail(f"{what} returned {type(result).__name__} {where}", "return (model, losses)")
    model, losses = result
    if not isinstance(model, MobileNetV2):
        fail(f"{what} returned a {type(model).__name__} as the model {where}; expected a "
             "MobileNetV2", "build it with mobilenet_v2(..., block=InvertedResidual), by that name")
    if not built:
        fail(f"{what} returned a MobileNetV2 that was not built by calling mobilenet_v2 {where}",
             "call mobilenet_v2(..., block=InvertedResidual) by that name (the check watches "
             "the call to see its arguments)")
    mine = [m for m in model.features if isinstance(m, ex.InvertedResidual)]
    expected_blocks = sum(n for _, _, n, _ in V2_SETTING)
    if len(mine) != expected_blocks:
        fail(f"{what}: {len(mine)} of the model's {expected_blocks} blocks are your "
             f"InvertedResidual from exercise 03 {where}",
             "pass block=InvertedResidual (imported from exercise 03) to mobilenet_v2")
    try:
        losses = [float(v) for v in losses]
    except (TypeError, ValueError):
        fail(f"{what} returned losses that are not numbers {where}", "one float per step")
    if len(losses) != STEPS or not np.isfinite(losses).all():
        fail(f"{what} returned {len(losses)} losses {where}; expected {STEPS} finite ones",
             "append each step's loss, and stop after `steps` steps")
    reference = _reference_losses(ex, root, STEPS)
    differ = [i for i in range(STEPS) if abs(losses[i] - reference[i]) > LOSS_TOL]
    if differ:
        step = differ[0]
        causes = [cause for _, options, cause in MISTAKES
                  if abs(_reference_losses(ex, root, step + 1, **options)[step] - losses[step])
                  <= LOSS_TOL]
        shown = ", ".join(f"{v:.6f}" for v in losses[:step + 1])
        expected = ", ".join(f"{v:.6f}" for v in reference[:step + 1])
        first = ("likely cause: " + "; or ".join(causes) if causes else
                 "the model, the data or the loss differ" if step == 0 else
                 "the update differs (lr, momentum, nesterov, weight decay, the optimiser "
                 "made once, backward before step)" if step == 1 else
                 "something that shows only after a few updates or at the epoch boundary "
                 "(step 2): the optimiser's state, or the batches' rng")
        fail(f"{what}: the loss of step {step} differs from the reference loop's {where}: "
             f"yours {shown}; the reference's {expected}",
             Hint(first, "see the contract in the docstring: data, Batches made once with "
                  "rng=np.random.default_rng(seed), SGD(model.named_parameters(), lr, "
                  "momentum=0.9, nesterov=True, weight_decay=5e-4) made once; each step "
                  "forward, softmax_cross_entropy, model.backward(dlogits), optimizer.step()"))
    printed = out.lines
    every = ARGS["print_every"]
    expected_at = list(range(every, STEPS + 1, every))
    if printed != expected_at:
        fail(f"{what} printed {len(printed)} lines, after forwards {printed}, {where}; "
             f"expected one after forwards {expected_at}",
             "print the mean of the last print_every losses as soon as each print_every-th "
             "step is done, not all at the end")


def check_confusion_matrix(ex):
    what = "ex06 confusion_matrix"
    cases = [  # (y_true, y_pred, num_classes, why)
        ([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3, "rows are the true classes"),
        ([0, 1, 1, 0], [1, 1, 0, 0], 4, "classes 2 and 3 never occur, in truth or prediction: "
         "their rows and columns are zeros, and the matrix is still num_classes x num_classes"),
        ([2, 2, 2], [0, 0, 1], 3, "class 2 is never predicted and classes 0 and 1 never true"),
    ]
    for y_true, y_pred, n, why in cases:
        got = call(what, ex.confusion_matrix, np.array(y_true), np.array(y_pred), n)
        expected = library_confusion_matrix(np.array(y_true), np.array(y_pred), n)
        if np.shape(got) != expected.shape or not np.array_equal(got, expected):
            fail(f"{what}(y_true={y_true}, y_pred={y_pred}, num_classes={n}) returned "
                 f"{np.asarray(got).tolist()}; expected {expected.tolist()}",
                 f"counts[i, j] counts images of true class i predicted as j; here {why}")
    rng = np.random.default_rng(60)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    counts = call(what, ex.confusion_matrix, y_true, y_pred)
    if not np.array_equal(counts, library_confusion_matrix(y_true, y_pred)):
        fail(f"{what} disagrees with minimobile.train.confusion_matrix on 500 random labels in "
             "10 classes (num_classes left at its default)", "the default is 10 classes")
    if np.asarray(counts).dtype != np.int64:
        fail(f"{what} returned dtype {np.asarray(counts).dtype}; expected int64 counts",
             "np.bincount counts in int64")
