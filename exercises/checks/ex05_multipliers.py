"""Checks of exercise 05: V1's predicted multiply-adds against `minimobile.cost.profile` of the
library's model; the latency measurements judged by how they were taken (the check watches the
models the learner's code builds: eval mode, no_grad, warm-up, one image at the resolution
asked, the model's state unchanged) and by their unit (within a wide factor of the check's own
timing of the same model). Never the speed itself: that depends on the machine and its load."""

import time

import numpy as np

from minimobile import layers
from minimobile.cost import profile
from minimobile.models import mobilenet_v1

from .common import Hint, call, fail

WIDTHS = (0.25, 0.5)
ARCH = "v1"  # the cheapest network to build and run
RESOLUTION = 40  # not the default 32, so that a resolution left out shows
REPEATS = 3
UNIT_FACTOR = 100  # milliseconds for seconds is 1000x; a busy machine stays well inside 100x


def _watch(ex):
    """Replace ex.build_model by a spy; return (records, restore). Each record holds the model,
    its state dict when built, and (training, grad enabled, input shape, dtype) per forward
    the learner's code runs (not the ones inside ex.profile, which counts, not times)."""
    original, original_profile = ex.build_model, ex.profile
    records = []
    counting = [False]

    def profile(*args, **kwargs):
        counting[0] = True
        try:
            return original_profile(*args, **kwargs)
        finally:
            counting[0] = False

    def build_model(*args, **kwargs):
        model = original(*args, **kwargs)
        record = {"model": model, "state": model.state_dict(), "calls": []}
        forward = model.forward

        def watched(x, *a, **k):
            if not counting[0]:
                record["calls"].append((model.training, layers._grad_enabled, np.shape(x),
                                        getattr(x, "dtype", None)))
            return forward(x, *a, **k)
        model.forward = watched
        records.append(record)
        return model

    def restore():
        ex.build_model, ex.profile = original, original_profile

    ex.build_model, ex.profile = build_model, profile
    return records, restore


def _own_latency(model, x):
    with layers.no_grad():
        model.forward(x)
        times = []
        for _ in range(5):
            start = time.perf_counter()
            model.forward(x)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def check_measurements(ex):
    what = "ex05 measure_inference_time"
    args = dict(width_mults=WIDTHS, arch=ARCH, resolution=RESOLUTION, repeats=REPEATS, seed=0)
    where = "for " + ", ".join(f"{k}={v!r}" for k, v in args.items())
    records, restore = _watch(ex)
    try:
        rows = call(what, ex.measure_inference_time, **args)
    finally:
        restore()
    if rows is None or len(rows) != len(WIDTHS):
        fail(f"{what} returned {None if rows is None else len(rows)} measurements {where}; "
             f"expected {len(WIDTHS)}", "one Measurement per width multiplier, in order")
    if len(records) != len(WIDTHS):
        fail(f"{what} built {len(records)} models through build_model {where}; expected one "
             "per width", "build each model with build_model(arch, width=..., cifar=..., "
             "seed=seed), by that name (imported at the top of the file): the check watches it")
    for width, row, record in zip(WIDTHS, rows, records):
        model, calls = record["model"], list(record["calls"])  # the learner's calls only
        changed = [name for name, value in model.state_dict().items()
                   if not np.array_equal(value, record["state"][name])]
        if not isinstance(row, ex.Measurement):
            fail(f"{what} returned a {type(row).__name__} {where}; expected Measurement")
        if row.width_mult != width:
            fail(f"{what}: measurement for width {width} says width_mult={row.width_mult} "
                 f"{where}", "keep the order of width_mults")
        cost = profile(model, (3, RESOLUTION, RESOLUTION))
        if (row.params, row.macs) != (cost.params, cost.macs):
            fail(f"{what}: width {width} reports {row.params:,} params and {row.macs:,} MACs "
                 f"{where}; minimobile.cost.profile counts {cost.params:,} and {cost.macs:,} "
                 "for the model it built", "profile(model, (3, resolution, resolution)): the "
                 "resolution asked, one image")
        forwards = [c for c in calls if c[2][1:] == (3, RESOLUTION, RESOLUTION)]
        if not forwards:
            shapes = sorted({c[2] for c in calls})
            fail(f"{what}: width {width} never ran a forward at {RESOLUTION} x {RESOLUTION} "
                 f"{where}; its inputs had shapes {shapes}",
                 "time a random float32 image of shape (1, 3, resolution, resolution)")
        for training, grad, shape, dtype in forwards:
            if shape[0] != 1:
                fail(f"{what}: width {width} timed a batch of {shape[0]} {where}",
                     "latency is the time of one image: a batch of 1")
            if dtype != np.float32:
                fail(f"{what}: width {width} ran a {dtype} input {where}",
                     "the models are float32: .astype(np.float32)")
            if training:
                fail(f"{what}: width {width} ran its forward in training mode {where}",
                     "inference runs in eval mode: model.eval() before timing (in training "
                     "mode batch norm uses the batch's statistics and updates running ones)")
            if grad:
                fail(f"{what}: width {width} ran its forward with gradients enabled {where}",
                     "wrap the timing in `with no_grad():` (inference keeps no caches)")
        if len(forwards) < REPEATS + 1:
            fail(f"{what}: width {width} ran {len(forwards)} forwards for repeats={REPEATS} "
                 f"{where}: no warm-up", "run the model at least once before timing: the "
                 "first calls load or compile kernels and are slower")
        if changed:
            fail(f"{what}: width {width}: measuring changed the model's {changed[0]} {where}",
                 "time in eval mode, where batch norm leaves its running statistics alone")
        if not (isinstance(row.seconds, (float, np.floating)) and np.isfinite(row.seconds)
                and row.seconds > 0):
            fail(f"{what}: width {width} took seconds={row.seconds!r} {where}; expected a "
                 "positive number of seconds", "time.perf_counter() after minus before")
        rng = np.random.default_rng(0)
        x = rng.standard_normal((1, 3, RESOLUTION, RESOLUTION)).astype(np.float32)
        mine = _own_latency(model, x)
        ratio = row.seconds / mine
        if not 1 / UNIT_FACTOR <= ratio <= UNIT_FACTOR:
            fail(f"{what}: width {width} reports {row.seconds:.3g} s; the check times the same "
                 f"model at {mine:.3g} s per image ({ratio:.3g} times as much) {where}",
                 Hint("report seconds, per forward of one image, as a median",
                      "seconds = np.median([t1 - t0 for each timed run]) with t = "
                      "time.perf_counter(); no * 1000, no division by the batch"))


# (width_mult, resolution): the full width, a smaller one, an odd resolution, and widths where
# make_divisible changes channel counts (32 * 0.35 = 11.2 -> 16). Small resolutions, since
# the counter runs a forward pass; tests/test_cost.py checks 224.
V1_CASES = [(1.0, 64), (0.5, 160), (0.25, 127), (0.35, 96), (0.75, 128)]


def check_v1_prediction(ex):
    for width, resolution in V1_CASES:
        what = "ex05 v1_multiply_adds"
        got = call(what, ex.v1_multiply_adds, width_mult=width, resolution=resolution)
        counted = profile(mobilenet_v1(width_mult=width, seed=0), (3, resolution, resolution))
        if got != counted.macs:
            fail(f"{what}(width_mult={width}, resolution={resolution}) returned {got:,}; "
                 f"minimobile.cost.profile counts {counted.macs:,} (off by "
                 f"{got - counted.macs:+,})",
                 Hint(f"compare layer by layer with `minimobile summary v1 --width {width} "
                      f"--resolution {resolution}`",
                      "the stem is a standard 3x3 conv at stride 2; each block's pointwise conv "
                      "runs at the depthwise conv's output size; channels are "
                      "make_divisible(c * width_mult), not int(c * width_mult); the Linear adds "
                      "in_features * num_classes"))
