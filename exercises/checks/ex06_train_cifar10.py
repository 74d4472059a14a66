"""Checks of exercise 06: a few training steps on a tiny random CIFAR-10 written by
`minimobile.data.write_fake_cifar10`, always on the same 8 images, must lower the loss, with the
learner's own block in every block position of the library's MobileNetV2; the confusion matrix
against a hand-counted one and `minimobile.train.confusion_matrix`."""

import numpy as np

from minimobile import blocks
from minimobile.data import write_fake_cifar10
from minimobile.models import MobileNetV2, V2_SETTING
from minimobile.train import confusion_matrix as library_confusion_matrix

from .common import call, fail

STEPS = 5
MIN_DROP = 0.2  # nats: a loose bar, which the reference solution clears with room to spare


def check_training(ex, tmp_path):
    root = write_fake_cifar10(tmp_path, n_train_per_batch=10, n_test=10, seed=0)
    what = "ex06 train_mobilenet_v2"
    where = (f"on a fake CIFAR-10 (random images), steps={STEPS}, batch_size=8, limit=8, "
             "width_mult=0.25, lr=0.02, augment=False")
    result = call(what, ex.train_mobilenet_v2, root, steps=STEPS, batch_size=8, width_mult=0.25,
                  lr=0.02, limit=8, augment=False, seed=0)
    if not isinstance(result, tuple) or len(result) != 2:
        fail(f"{what} returned {type(result).__name__} {where}", "return (model, losses)")
    model, losses = result
    if not isinstance(model, MobileNetV2):
        fail(f"{what} returned a {type(model).__name__} as the model {where}",
             "build it with minimobile.models.mobilenet_v2(..., block=InvertedResidual)")
    mine = [m for m in model.features if isinstance(m, ex.InvertedResidual)]
    expected_blocks = sum(n for _, _, n, _ in V2_SETTING)
    if len(mine) != expected_blocks or ex.InvertedResidual is blocks.InvertedResidual:
        fail(f"{what}: {len(mine)} of the model's {expected_blocks} blocks are your "
             f"InvertedResidual from exercise 03 {where}",
             "pass block=InvertedResidual (imported from exercise 03) to mobilenet_v2")
    losses = [float(v) for v in losses]
    if len(losses) != STEPS or not np.isfinite(losses).all():
        fail(f"{what} returned {len(losses)} losses {where}, {losses}; expected {STEPS} finite "
             "ones", "append each step's loss, and stop after `steps` steps")
    if not losses[-1] < losses[0] - MIN_DROP:
        fail(f"{what}: the loss went from {losses[0]:.4f} to {losses[-1]:.4f} in {STEPS} steps "
             f"{where}; expected it to fall by more than {MIN_DROP} on 8 images seen at every "
             f"step (losses: {', '.join(f'{v:.3f}' for v in losses)})",
             "each step needs model.forward, softmax_cross_entropy, model.backward(dlogits) "
             "and optimizer.step(), with the optimiser made once, before the loop, over "
             "model.named_parameters()")


def check_confusion_matrix(ex):
    what = "ex06 confusion_matrix"
    hand = call(what, ex.confusion_matrix, [0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 0, 2], 3)
    expected = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    if np.shape(hand) != (3, 3) or not np.array_equal(hand, expected):
        fail(f"{what}(y_true=[0, 0, 1, 2, 2, 2], y_pred=[0, 1, 1, 2, 0, 2], num_classes=3) "
             f"returned\n{np.asarray(hand)}\nexpected\n{expected}",
             "counts[i, j] counts images of true class i predicted as j: rows are the truth")
    rng = np.random.default_rng(60)
    y_true, y_pred = rng.integers(0, 10, 500), rng.integers(0, 10, 500)
    counts = call(what, ex.confusion_matrix, y_true, y_pred)
    if not np.array_equal(counts, library_confusion_matrix(y_true, y_pred)):
        fail(f"{what} disagrees with minimobile.train.confusion_matrix on 500 random labels in "
             "10 classes (num_classes left at its default)", "the default is 10 classes")
