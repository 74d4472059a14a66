"""Exercise 05, with notebooks/05_multipliers.ipynb: what the width multiplier buys in time.

measure_inference_time builds one network per width multiplier, counts its parameters and
multiply-adds with `minimobile.cost.profile`, and times its forward pass in evaluation mode.
Then run `python -m exercises.ex05_multipliers` and compare time with multiply-adds: the V1
paper's cost falls roughly with the square of the multiplier; does your time?

Check: `pytest exercises -m ex05` (it checks what you return, never how fast it is).
"""

from typing import NamedTuple

import numpy as np

from minimobile.cost import profile  # noqa: F401
from minimobile.layers import no_grad  # noqa: F401
from minimobile.train import build_model  # noqa: F401


class Measurement(NamedTuple):
    width_mult: float
    params: int  # trainable parameters
    macs: int  # multiply-adds of one image, from minimobile.cost.profile
    seconds: float  # median wall time of one forward pass of a batch


def measure_inference_time(width_mults=(0.25, 0.5, 0.75, 1.0), arch="v2", batch_size=16,
                           resolution=32, repeats=5, seed=0):
    """One Measurement per width multiplier, in the order given.

    For each multiplier: build_model(arch, width=width_mult, cifar=resolution <= 64, seed=seed);
    profile it at (3, resolution, resolution); then time model.forward on a random float32
    batch (batch_size, 3, resolution, resolution) with time.perf_counter, in eval mode and
    under no_grad() (inference keeps no caches). Run it twice before timing (the first calls
    load or compile kernels and are slower) and report the median of `repeats` timed runs.
    """
    raise NotImplementedError("ex05: implement measure_inference_time")


def print_measurements(measurements):
    """A table of the measurements, with time and multiply-adds relative to the widest net."""
    widest = max(measurements, key=lambda m: m.width_mult)
    print(f"{'width':>6} {'params':>11} {'MACs':>13} {'ms':>9} {'MACs ratio':>11} "
          f"{'time ratio':>11}")
    for m in measurements:
        print(f"{m.width_mult:>6.2f} {m.params:>11,} {m.macs:>13,} {m.seconds * 1e3:>9.2f} "
              f"{m.macs / widest.macs:>11.3f} {m.seconds / widest.seconds:>11.3f}")


if __name__ == "__main__":
    print_measurements(measure_inference_time())
