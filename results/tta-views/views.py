"""Per-view logits of a checkpoint's EMA weights on the CIFAR-10 test set, for compare.py.

A view is the test images shifted by (dy, dx) pixels, the border filled by zero padding (as
the training crops fill it) or by reflect padding (as `--tta flip,translate` does), then
mirrored or not: shift first, mirror second, in train.tta_logits' order. The views are both
mirrorings of every zero-padded shift in {-REACH..REACH}^2, and of the two diagonal 1 px
shifts with reflect padding. Saves the logits (views, N, 10), the view names and the labels
to OUT.npz after every view (written to a temporary file, then renamed). Written for issue
20, to see whether more test-time views than the shipped six help.

    MINIMOBILE_DATA=../shared/cifar-10-batches-py python results/tta-views/views.py \\
        CHECKPOINT OUT.npz [REACH (default 1)]
"""
import os
import sys
import time

import numpy as np

from minimobile.data import load_cifar10, normalize
from minimobile.layers import no_grad
from minimobile.train import model_from_checkpoint

BATCH = 500
PAD = 2  # enough for every shift asked for; REACH must not exceed it

checkpoint, out = sys.argv[1], sys.argv[2]
reach = int(sys.argv[3]) if len(sys.argv) > 3 else 1
if not 0 <= reach <= PAD:
    raise SystemExit(f"REACH: expected 0..{PAD}, got {reach}")
config, model = model_from_checkpoint(checkpoint, ema=True)
model.eval()
test = load_cifar10(os.environ.get("MINIMOBILE_DATA"))
images, labels = test.x_test, test.y_test
height, width = images.shape[2:]


def logits_of(view_images):
    with no_grad():
        return np.concatenate([
            model.forward(normalize(view_images[start:start + BATCH]).astype(np.float32))
            for start in range(0, len(view_images), BATCH)])


def view(dy, dx, padding, mirrored):
    """out[i, j] = images[i + dy, j + dx] (the border filled by `padding`), then mirrored."""
    padded = np.pad(images, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)), mode=padding)
    shifted = padded[..., PAD + dy:PAD + dy + height, PAD + dx:PAD + dx + width]
    return np.ascontiguousarray(shifted[..., ::-1] if mirrored else shifted)


# The shipped six's views first (both paddings), then the rest of the zero-padded grid.
order = [("constant", 0, 0, mirrored) for mirrored in (False, True)]
order += [(padding, d, d, mirrored) for padding in ("constant", "reflect") for d in (-1, 1)
          for mirrored in (False, True)]
order += [("constant", dy, dx, mirrored) for mirrored in (False, True)
          for dy in range(-reach, reach + 1) for dx in range(-reach, reach + 1)
          if (dy, dx) not in ((0, 0), (-1, -1), (1, 1))]
all_logits, names = [], []
started = time.time()
for padding, dy, dx, mirrored in order:
    all_logits.append(logits_of(view(dy, dx, padding, mirrored)))
    names.append(f"{'zero' if padding == 'constant' else padding} f{int(mirrored)} {dy:+d}{dx:+d}")
    accuracy = (all_logits[-1].argmax(1) == labels).mean()
    print(f"{names[-1]}  {accuracy:.4f}  {time.time() - started:.0f} s", flush=True)
    np.savez(out + ".tmp.npz", logits=np.stack(all_logits), names=np.array(names), y=labels)
    os.replace(out + ".tmp.npz", out)
