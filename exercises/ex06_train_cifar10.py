"""Exercise 06, with notebooks/06_train_cifar10.ipynb: train MobileNet V2 on CIFAR-10 with your
own InvertedResidual in every block of the library's network.

Needs exercise 03 first: the InvertedResidual imported below is yours, from
exercises/ex03_mobilenet_v2.py (`python -m pytest exercises -m ex03` must pass).

train_mobilenet_v2 is the training loop; confusion_matrix counts, for the evaluation, which
class the network takes each class for. Then train for real:
`python -m exercises.ex06_train_cifar10 --data PATH/TO/cifar-10-batches-py` (from the
repository's root). It prints the mean loss every 100 steps as it trains, then the test
accuracy and the confusion matrix. What to expect, measured with the reference solution
(`python -m exercises.solutions.ex06_train_cifar10 --data ...`, 2026-11-29, on the 2-core
machine this course is timed on, nothing else running): 2000 steps of batch 64 took 10 min
13 s in all, about 0.3 s per step; the mean loss of each 100 steps went from 2.41 (steps
1-100) to 1.87 (101-200), 1.37 (901-1000) and 1.09 (1901-2000); the test accuracy was
62.82 %, with cats and dogs most often confused. 2000 steps are under 3 epochs, so that is far
from the ~85 % of a full run (`minimobile train`, README). Yours should land within a few
points of it (your block's rounding can differ from the library's in the last bits) and take
about as long per step on a machine like it: time the first 100 steps and multiply by 20.

Check: `python -m pytest exercises -m ex06`. It runs your loop for a few steps on a tiny random
data set and compares every step's loss with a reference loop's (same seed, same model): the
first step that differs is named, with its likely cause.
"""

import argparse

import numpy as np

from exercises.ex03_mobilenet_v2 import InvertedResidual  # your block
from minimobile.data import Batches, load_cifar10  # noqa: F401
from minimobile.models import mobilenet_v2  # noqa: F401
from minimobile.ops import softmax_cross_entropy  # noqa: F401
from minimobile.optim import SGD  # noqa: F401
from minimobile.train import evaluate


def train_mobilenet_v2(data_root, steps=200, batch_size=64, width_mult=0.5, lr=0.05,
                       limit=None, augment=True, seed=0, print_every=None):
    """Train mobilenet_v2(num_classes=10, width_mult=width_mult, cifar=True, seed=seed,
    block=InvertedResidual) for `steps` minibatches; return (model, losses), one float per step.

    The contract the check's reference loop follows (so that your losses match it step for
    step): the data from load_cifar10(data_root, download=False), its first `limit` training
    images if limit is given; Batches(x, y, batch_size, augment=augment, drop_last=True,
    rng=np.random.default_rng(seed)), one epoch per iteration, as many epochs as it takes;
    softmax_cross_entropy for the loss; SGD(model.named_parameters(), lr, momentum=0.9,
    nesterov=True, weight_decay=5e-4). Call mobilenet_v2 by that name (the check watches
    the call). With print_every, print the mean loss of the last print_every steps every
    print_every steps, as training goes.
    """
    raise NotImplementedError("ex06: implement train_mobilenet_v2")


def confusion_matrix(y_true, y_pred, num_classes=10):
    """counts (num_classes, num_classes) int64: counts[i, j] is the number of images of class i
    predicted as class j (so the diagonal holds the correct ones). Without a Python loop over
    the images: np.bincount or np.add.at do it in one call."""
    raise NotImplementedError("ex06: implement confusion_matrix")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="CIFAR-10 folder or archive")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)
    model, _ = train_mobilenet_v2(args.data, args.steps, args.batch_size, args.width, args.lr,
                                  print_every=100)
    data = load_cifar10(args.data, download=False)
    result = evaluate(model, data.x_test, data.y_test)
    print(f"test accuracy {result.accuracy:.2%} (loss {result.loss:.4f})")
    counts = confusion_matrix(data.y_test, result.predictions)
    print("confusion matrix (rows: true class, columns: predicted), and each class's accuracy:")
    for i, (name, row) in enumerate(zip(data.classes, counts)):
        print(f"{name:>10} {' '.join(f'{v:5d}' for v in row)}   {row[i] / max(1, row.sum()):.1%}")


if __name__ == "__main__":
    main()
