"""Checks of exercise 05: the measurements' shape and sanity, with parameters and multiply-adds
against `minimobile.cost.profile`. Never the speed: timings depend on the machine and its load."""

import numpy as np

from minimobile.cost import profile
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
