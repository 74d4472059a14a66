"""Per-view logits of a checkpoint's EMA weights on the CIFAR-10 test set: both flips of every
zero-padded shift in {-REACH..REACH}^2 (the training crops pad with zeros), plus the diagonal
1 px pair with reflect padding (what `--tta flip,translate` uses). Saves the logits
(views, N, 10), the view names and the labels to OUT.npz after every view; compare.py reads
it. Written for issue 20, to see whether more test-time views than the shipped six help."""
import os
import sys
import time

import numpy as np

from minimobile.data import load_cifar10, normalize
from minimobile.layers import no_grad
from minimobile.train import model_from_checkpoint

# python views.py CHECKPOINT OUT.npz [REACH]; the data from MINIMOBILE_DATA.
ckpt, out = sys.argv[1], sys.argv[2]
config, model = model_from_checkpoint(ckpt, ema=True)
model.eval()
d = load_cifar10(os.environ.get("MINIMOBILE_DATA"))
x, y = d.x_test, d.y_test
N, C, H, W = x.shape
views, names = [], []

def run(images):
    outs = []
    with no_grad():
        for s in range(0, N, 500):
            outs.append(model.forward(normalize(images[s:s + 500]).astype(np.float32)))
    return np.concatenate(outs)

def shift(images, dy, dx, mode):
    p = 2
    padded = np.pad(images, ((0, 0), (0, 0), (p, p), (p, p)), mode=mode)
    return np.ascontiguousarray(padded[..., p + dy:p + dy + H, p + dx:p + dx + W])

t = time.time()
# The most informative views first: the airbench-2 six in both paddings, then the rest of the
# training crops' 50. Saved after every view, so a starved run still leaves what it did.
order = [(f, 0, 0, "constant") for f in (0, 1)]
order += [(f, d, d, m) for m in ("constant", "reflect") for d in (-1, 1) for f in (0, 1)]
reach = int(sys.argv[3]) if len(sys.argv) > 3 else 2  # largest shift of the zero-padded grid
order += [(f, dy, dx, "constant") for f in (0, 1) for dy in range(-reach, reach + 1)
          for dx in range(-reach, reach + 1) if (dy, dx) not in ((0, 0), (-1, -1), (1, 1))]
for flip, dy, dx, mode in order:
    base = x[..., ::-1] if flip else x
    views.append(run(shift(base, dy, dx, mode)))
    names.append(f"{'zero' if mode == 'constant' else mode} f{flip} {dy:+d}{dx:+d}")
    print(names[-1], f"{(views[-1].argmax(1) == y).mean():.4f}", f"{time.time()-t:.0f}s", flush=True)
    np.savez(out + ".tmp.npz", logits=np.stack(views), names=np.array(names), y=y)
    os.replace(out + ".tmp.npz", out)
