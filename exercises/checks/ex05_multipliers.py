"""Checks of exercise 05: V1's predicted multiply-adds against `minimobile.cost.profile` of the
library's model; the measurements' shape and sanity, with parameters and multiply-adds against
the same counter. Never the speed: timings depend on the machine and its load."""

import numpy as np

from minimobile.cost import profile
from minimobile.models import mobilenet_v1
from minimobile.train import build_model

from .common import call, fail

WIDTHS = (0.25, 0.5)
ARCH = "v1"  # the cheapest network to build and run


def check_measurements(ex):
    what = "ex05 measure_inference_time"
    rows = call(what, ex.measure_inference_time, width_mults=WIDTHS, arch=ARCH, batch_size=2,
                resolution=32, repeats=2, seed=0)
    where = f"for width_mults={WIDTHS}, arch={ARCH!r}, batch_size=2, resolution=32, repeats=2"
    if rows is None or len(rows) != len(WIDTHS):
        fail(f"{what} returned {None if rows is None else len(rows)} measurements {where}; "
             f"expected {len(WIDTHS)}", "one Measurement per width multiplier, in order")
    for width, row in zip(WIDTHS, rows):
        if not isinstance(row, ex.Measurement):
            fail(f"{what} returned a {type(row).__name__} {where}; expected Measurement")
        if row.width_mult != width:
            fail(f"{what}: measurement for width {width} says width_mult={row.width_mult} "
                 f"{where}", "keep the order of width_mults")
        cost = profile(build_model(ARCH, width=width, cifar=True, seed=0), (3, 32, 32))
        if (row.params, row.macs) != (cost.params, cost.macs):
            fail(f"{what}: width {width} reports {row.params:,} params and {row.macs:,} MACs "
                 f"{where}; minimobile.cost.profile counts {cost.params:,} and {cost.macs:,}",
                 "profile(model, (3, resolution, resolution)) gives .params and .macs of one "
                 "image; build with cifar=True at resolution 32")
        if not (isinstance(row.seconds, (float, np.floating)) and np.isfinite(row.seconds)
                and row.seconds > 0):
            fail(f"{what}: width {width} took seconds={row.seconds!r} {where}; expected a "
                 "positive number of seconds", "time.perf_counter() after minus before")


# (width_mult, resolution): the full width, a smaller one, and an odd resolution (small
# resolutions, since the counter runs a forward pass; tests/test_cost.py checks 224).
V1_CASES = [(1.0, 64), (0.5, 160), (0.25, 127)]


def check_v1_prediction(ex):
    for width, resolution in V1_CASES:
        what = "ex05 v1_multiply_adds"
        got = call(what, ex.v1_multiply_adds, width_mult=width, resolution=resolution)
        counted = profile(mobilenet_v1(width_mult=width, seed=0), (3, resolution, resolution))
        if got != counted.macs:
            fail(f"{what}(width_mult={width}, resolution={resolution}) returned {got:,}; "
                 f"minimobile.cost.profile counts {counted.macs:,} (off by "
                 f"{got - counted.macs:+,})",
                 f"compare layer by layer with `minimobile summary v1 --width {width} "
                 f"--resolution {resolution}`: the stem is a standard 3x3 conv at stride 2, "
                 "each block's pointwise conv runs at the depthwise conv's output size, and "
                 "the Linear adds in_features * num_classes")
