"""Images per second of minimobile's training step at several batch sizes, side by side in one
run: does a smaller batch, whose maps stay in the CPU's caches, train faster per image than
batch 128, whose 32x32 maps do not? (Issue 20: the two-hour budget buys epochs at the step's
speed per image, whatever the batch.)

Each batch size gets its own network and optimiser, built from the same seed (so one size's
updates do not change the weights another size steps from), and each round times one step of
every batch size in turn, so that a change of load on this shared machine falls on all of
them alike. Prints, per batch size, the median ms per step over the rounds, the images per
second that gives, and the ratio of each round's images per second to batch 128's in the same
round (median and range). glibc keeps freed memory, as in `minimobile train`
(minimobile.memory). Random images and labels: the time of a step does not depend on what
the images show.

    python benchmarks/bench_batch_size.py [--model v1:1.0] [--batch-sizes 32,64,128,256]
        [--rounds 7] [--warmup 2]
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bench_train_step import minimobile_step  # noqa: E402
from minimobile import memory  # noqa: E402
from minimobile.models import build_model  # noqa: E402
from minimobile.optim import SGD  # noqa: E402

REFERENCE_BATCH = 128


def parse_model(text):
    """'v1:1.0' -> ('v1', 1.0)."""
    name, _, width = text.partition(":")
    try:
        return name, float(width or 1.0)
    except ValueError:
        raise SystemExit(f"--model: expected NAME:WIDTH such as v1:1.0, got {text!r}") from None


def parse_batch_sizes(text):
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        sizes = []
    if not sizes or min(sizes) < 1 or len(set(sizes)) != len(sizes):
        raise SystemExit(f"--batch-sizes: expected distinct integers >= 1 such as 32,64,128, "
                         f"got {text!r}")
    return sizes


def make_step(name, width, batch_size, seed=0, resolution=32):
    """One training step of `name` at `width` on a fixed random batch of resolution x
    resolution images, as a function."""
    model = build_model(name, width, seed=seed)
    model.train()
    optimizer = SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True,
                    weight_decay=5e-4)  # as bench_train_step.py
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch_size, 3, resolution, resolution)).astype(np.float32)
    y = rng.integers(0, 10, batch_size)
    return lambda: minimobile_step(model, optimizer, x, y)


def measure(steps, rounds, warmup):
    """{key: [seconds of one step, per round]} for steps {key: step}, which take turns each
    round (the keys are batch sizes here, networks in bench_resolution.py)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            start = time.perf_counter()
            step()
            times[key].append(time.perf_counter() - start)
    return times


def format_table(times, reference=REFERENCE_BATCH):
    header = f"{'batch':>5}  {'ms/step':>8}  {'img/s':>6}"
    lines = [header + (f"  {f'vs {reference}':>8}  range" if reference in times else "")]
    for batch, seconds in times.items():
        seconds = np.array(seconds)
        line = f"{batch:>5}  {1e3 * np.median(seconds):8.1f}  {batch / np.median(seconds):6.0f}"
        if reference in times:
            # images per second relative to the reference batch, round by round
            ratio = (batch / seconds) / (reference / np.array(times[reference]))
            line += f"  {np.median(ratio):8.2f}  {ratio.min():.2f}-{ratio.max():.2f}"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="v1:1.0", help="NAME:WIDTH (default v1:1.0)")
    parser.add_argument("--batch-sizes", default="32,64,128,256",
                        help="comma-separated (default 32,64,128,256)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.warmup < 0:
        raise SystemExit(f"--rounds: expected >= 1 and --warmup >= 0, got {args.rounds} and "
                         f"{args.warmup}")
    memory.keep_freed_memory()  # as minimobile.train.fit does
    name, width = parse_model(args.model)
    sizes = parse_batch_sizes(args.batch_sizes)
    steps = {batch: make_step(name, width, batch) for batch in sizes}
    times = measure(steps, args.rounds, args.warmup)
    print(f"{name} {width:g}, training step at 32x32, median of {args.rounds} rounds "
          f"(each round one step of every batch size in turn)")
    print(format_table(times))
    return times


if __name__ == "__main__":
    main()
