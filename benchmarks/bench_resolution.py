"""The training step's cost at several widths and input resolutions, side by side in one run:
what does training a network on CIFAR-10 images resized to R x R (`minimobile train
--resolution R`, the V1 paper's resolution multiplier) cost per epoch, against V1 1.0 at the
stored 32x32? (Issue 20: a two-hour budget buys epochs at the step's speed, so a network that
learns more per epoch at a larger resolution is only worth it if that speed allows enough
epochs.)

Each network gets its own model and optimiser from the same seed, and each round times one
step of every network in turn (bench_batch_size.measure), so that a change of load on this
shared machine falls on all of them alike. Prints, per network, the median ms per step over
the rounds, the images per second, the seconds an epoch of CIFAR-10's 50,000 training images
takes at that speed (the step alone: the batches' preparation, the bilinear resize included,
and the evaluations come on top), and each round's step time over the first network's in the
same round (median and range): the cost of an epoch against the first network's. Random
images and labels: the time of a step does not depend on what the images show.

    python benchmarks/bench_resolution.py [--networks v1:1.0@32,v1:0.5@48,v1:0.75@40]
        [--batch-size 128] [--rounds 7] [--warmup 2]
"""

import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bench_batch_size import make_step, measure  # noqa: E402
from minimobile import memory  # noqa: E402
from minimobile.data import MAX_RESOLUTION, MIN_RESOLUTION  # noqa: E402
from minimobile.models import MAX_WIDTH, MODELS  # noqa: E402

TRAIN_IMAGES = 50_000  # CIFAR-10's training set


def parse_networks(text):
    """'v1:1.0@32,v1:0.5@48' -> [('v1', 1.0, 32), ('v1', 0.5, 48)]."""
    networks = []
    for item in text.split(","):
        model, _, resolution = item.strip().partition("@")
        name, _, width = model.partition(":")
        try:
            network = (name, float(width), int(resolution))
        except ValueError:
            network = None
        if (network is None or name not in MODELS or not 0 < network[1] <= MAX_WIDTH
                or not MIN_RESOLUTION <= network[2] <= MAX_RESOLUTION):
            raise SystemExit(f"--networks: expected NAME:WIDTH@RESOLUTION items such as "
                             f"v1:0.5@48 (NAME one of {', '.join(MODELS)}, RESOLUTION "
                             f"{MIN_RESOLUTION}-{MAX_RESOLUTION}), got {item!r}")
        networks.append(network)
    if len(set(networks)) != len(networks):
        raise SystemExit(f"--networks: expected distinct networks, got {text!r}")
    return networks


def label(network):
    name, width, resolution = network
    return f"{name} {width:g} @{resolution}"


def format_table(times, batch_size):
    """One row per network: ms per step, images/s, epoch seconds, cost against the first."""
    first = next(iter(times))
    lines = [f"{'network':<14} {'ms/step':>8} {'img/s':>6} {'epoch s':>8} "
             f"{'vs first':>9}  range"]
    for network, seconds in times.items():
        seconds = np.array(seconds)
        median = np.median(seconds)
        ratio = seconds / np.array(times[first])  # round by round: the same load on both
        lines.append(f"{label(network):<14} {1e3 * median:8.1f} {batch_size / median:6.0f} "
                     f"{TRAIN_IMAGES * median / batch_size:8.0f} {np.median(ratio):9.2f}  "
                     f"{ratio.min():.2f}-{ratio.max():.2f}")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", default="v1:1.0@32,v1:0.5@48,v1:0.75@40",
                        help="comma-separated NAME:WIDTH@RESOLUTION; the first is the one the "
                             "others are set against (default v1:1.0@32,v1:0.5@48,v1:0.75@40)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0 or args.batch_size < 1:
        raise SystemExit(f"--rounds and --batch-size: expected >= 1, --warmup >= 0; got "
                         f"{args.rounds}, {args.batch_size} and {args.warmup}")
    networks = parse_networks(args.networks)
    memory.keep_freed_memory()  # as minimobile.train.fit does
    steps = {network: make_step(network[0], network[1], args.batch_size,
                                resolution=network[2]) for network in networks}
    times = measure(steps, args.rounds, args.warmup)
    print(f"training step, batch {args.batch_size}, median of {args.rounds} rounds (each "
          f"round one step of every network in turn); epoch s: {TRAIN_IMAGES:,} images at "
          f"that speed, the step alone")
    print(format_table(times, args.batch_size))
    return times


if __name__ == "__main__":
    main()
