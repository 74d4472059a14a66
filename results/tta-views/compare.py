"""The test accuracy of test-time augmentation schemes, from the per-view logits that views.py
saved: python compare.py OUT.npz. Logits are averaged, as `minimobile eval` does."""
import sys

import numpy as np

saved = np.load(sys.argv[1])
view = dict(zip(saved["names"], saved["logits"]))
y = saved["y"]


def accuracy(logits):
    return (logits.argmax(1) == y).mean()


def airbench_level_2(pad):
    """What --tta flip,translate computes: 1/2 on the unshifted pair, 1/4 on each pair shifted
    diagonally by 1 px, the shifted views padded with `pad` ("reflect" ships)."""
    unshifted = view["zero f0 +0+0"] + view["zero f1 +0+0"]
    shifted = sum(view[f"{pad} f{f} {d:+d}{d:+d}"] for f in (0, 1) for d in (-1, 1))
    return 0.25 * unshifted + 0.125 * shifted


zero_grid = [name for name in view if name.startswith("zero")]
axis = [name for name in zero_grid if name.split()[-1] in ("+0+0", "-1+0", "+1+0", "+0-1", "+0+1")]
rows = [
    ("one view", view["zero f0 +0+0"]),
    ("flip (2 views)", view["zero f0 +0+0"] + view["zero f1 +0+0"]),
    ("--tta flip,translate, reflect padding as shipped (6)", airbench_level_2("reflect")),
    ("the same, zero padding as in training (6)", airbench_level_2("zero")),
    (f"centre and 4 axis shifts x 2 flips, zero padding ({len(axis)})",
     sum(view[name] for name in axis)),
    (f"every zero-padded shift x 2 flips, uniform ({len(zero_grid)})",
     sum(view[name] for name in zero_grid)),
]
for label, logits in rows:
    print(f"{accuracy(logits):.4f}  {label}")
