"""Exercise 05, with notebooks/05_multipliers.ipynb: what width and resolution cost, and what the
width multiplier buys in time.

1. v1_multiply_adds predicts V1's multiply-adds for a width multiplier and a resolution from
   the architecture table alone; the test checks it against the counter, `minimobile.cost`.
2. measure_inference_time builds one network per width multiplier, counts its parameters and
   multiply-adds with `minimobile.cost.profile`, and measures its latency: the time of one
   forward pass of one image, in eval mode. Then run `python -m exercises.ex05_multipliers`
   and compare time with multiply-adds: the V1 paper's cost falls roughly with the square of
   the multiplier; does your time? (Probably not quite: at batch 1 and 32 x 32 the narrow
   networks are so small that each layer's fixed cost, a Python call and a kernel launch,
   weighs as much as its arithmetic, so time falls more slowly than multiply-adds.)

Check: `python -m pytest exercises -m ex05` (this exercise needs no other). It judges how you
measure (eval mode, no_grad, warm-up, one image at the resolution asked, seconds), never how
fast your machine is: your time only has to be within a wide factor of the check's own.
"""

from typing import NamedTuple

import numpy as np

from minimobile.cost import profile  # noqa: F401
from minimobile.layers import no_grad  # noqa: F401
from minimobile.models import V1_SETTING, V1_STEM_CHANNELS, make_divisible  # noqa: F401
from minimobile.models import build_model  # noqa: F401


class Measurement(NamedTuple):
    width_mult: float
    params: int  # trainable parameters
    macs: int  # multiply-adds of one image, from minimobile.cost.profile
    seconds: float  # median wall time of one forward pass of one image (batch 1), in seconds


def measure_inference_time(width_mults=(0.25, 0.5, 0.75, 1.0), arch="v2", resolution=32,
                           repeats=20, seed=0):
    """One Measurement per width multiplier, in the order given: batch-1 latency.

    For each multiplier: build_model(arch, width=width_mult, cifar=resolution <= 64, seed=seed)
    (call it by that name: the check watches the models it builds); profile it at
    (3, resolution, resolution); then time model.forward on one random float32 image
    (1, 3, resolution, resolution) with time.perf_counter, as inference runs: in eval mode and
    under no_grad(). Run it before timing too (the first calls load or compile kernels and
    are slower) and report the median of `repeats` timed runs, in seconds.
    """
    raise NotImplementedError("ex05: implement measure_inference_time")


def v1_multiply_adds(width_mult=1.0, resolution=224, num_classes=1000):
    """Multiply-adds of one image through MobileNet V1 (not the CIFAR variant), predicted from
    the architecture table alone: no model, no forward pass.

    Walk V1_SETTING (minimobile.models): the 3x3 stem conv from 3 to make_divisible(32 *
    width_mult) channels at stride 2 and padding 1, then per block a 3x3 depthwise conv
    (C_in * 9 per output pixel) at the block's stride and a pointwise conv (C_in * C_out per
    output pixel), channels make_divisible(c * width_mult), and the final Linear. A 3x3 conv
    with padding 1 at stride s turns size H into (H - 1) // s + 1. Count as minimobile.cost
    does: convs and the Linear, nothing else.
    """
    raise NotImplementedError("ex05: implement v1_multiply_adds")


def print_measurements(measurements):
    """A table of the measurements, with time and multiply-adds relative to the widest net."""
    widest = max(measurements, key=lambda m: m.width_mult)
    print(f"{'width':>6} {'params':>11} {'MACs':>13} {'ms':>9} {'MACs ratio':>11} "
          f"{'time ratio':>11}")
    for m in measurements:
        print(f"{m.width_mult:>6.2f} {m.params:>11,} {m.macs:>13,} {m.seconds * 1e3:>9.3f} "
              f"{m.macs / widest.macs:>11.3f} {m.seconds / widest.seconds:>11.3f}")


if __name__ == "__main__":
    print_measurements(measure_inference_time())
