"""Do minimobile's tuned numbers fit this machine? Whole training steps, timed with one tuned
number changed, alternating with the values in minimobile/tuning.py, in one process.

minimobile/tuning.py holds every number that chooses a loop order or a task size, each with
the measurement behind it, taken on the development machine. Another CPU (other caches, other
vector widths) may prefer other values. This script answers for one machine: for each network
and each value asked for, it times a training step (forward, loss, backward, SGD, batch 128 by
default) with that value set, right beside the same step with today's values, in pairs, so a
slow spell of a shared machine hits both alike. It prints each variant's median ms and its
ratio to today's, taken pair by pair (median, and the range over rounds): below 1.0 the value
is faster here.

    python benchmarks/bench_tuning.py --models v1:1.0 \\
        --set BN_BY_IMAGE_MAX_PIXELS=64,1024 --set POINTWISE_GROUP_COLUMNS=128,512

A changed value may change the order of some sums (another loop order, other task shares), so
the steps' results can differ in the last bits; the results stay deterministic for any value.
"""

import argparse
import os
import sys

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from bench_train_step import minimobile_step  # noqa: E402
from minimobile import memory, tuning  # noqa: E402
from minimobile.experiments import time_callable  # noqa: E402
from minimobile.models import build_model  # noqa: E402
from minimobile.optim import SGD  # noqa: E402


# Read once, when minimobile is imported (libgomp reads its environment as it starts): a change
# in the running process does nothing. Compare it across processes with bench_versions.py's
# --old-env/--new-env or bench_contention.py.
READ_AT_IMPORT = {"GOMP_SPINCOUNT"}

# Tuned numbers that are words, with the words the kernels know.
CHOICES = {"POINTWISE_SMALL_MAPS": ("groups", "channel_major")}


def tunable_names():
    """The tuned numbers a variant may change: tuning.py's upper-case module constants that
    the kernels read at call time."""
    return sorted(k for k, v in vars(tuning).items()
                  if k.isupper() and isinstance(v, (int, str)) and not isinstance(v, bool)
                  and k not in READ_AT_IMPORT)


def parse_setting(text):
    """"NAME=V1,V2" -> [(NAME, V1), (NAME, V2)], each value of the type of today's value."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not values.strip():
        raise SystemExit(f"--set: expected NAME=VALUE[,VALUE...], got {text!r}")
    if name not in tunable_names():
        raise SystemExit(f"--set: expected one of the tuned numbers in minimobile/tuning.py "
                         f"({', '.join(tunable_names())}), got {name!r}")
    today = getattr(tuning, name)
    variants = []
    for value in values.split(","):
        value = value.strip()
        if isinstance(today, int):
            try:
                value = int(value)
            except ValueError:
                raise SystemExit(f"--set {name}: expected whole numbers (today's value is "
                                 f"{today}), got {value!r}") from None
            if value < 0:
                raise SystemExit(f"--set {name}: expected a number >= 0, got {value}")
        elif value not in CHOICES.get(name, (value,)):
            raise SystemExit(f"--set {name}: expected one of {', '.join(CHOICES[name])}, "
                             f"got {value!r}")
        variants.append((name, value))
    return variants


def time_steps(step, steps):
    return time_callable(step, steps, warmup=0).median


def with_setting(setting, fn):
    """Run fn with tuning's `setting` (NAME, value) in place, or as it is for None."""
    if setting is None:
        return fn()
    name, value = setting
    today = getattr(tuning, name)
    setattr(tuning, name, value)
    try:
        return fn()
    finally:
        setattr(tuning, name, today)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="v1:0.5,v1:1.0,v2:0.5,v3-small:1.0")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=V1[,V2...]",
                        dest="settings", help="a tuned number of minimobile/tuning.py and the "
                        "values to try (repeatable)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3, help="steps per variant and round; "
                        "the median is the round's time")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.settings:
        parser.error("expected at least one --set NAME=VALUE[,VALUE...]; the tuned numbers: "
                     + ", ".join(tunable_names()))
    variants = [v for text in args.settings for v in parse_setting(text)]
    for name, value in variants:
        if value == getattr(tuning, name):
            parser.error(f"--set {name}={value} is today's value: compare another")
    memory.keep_freed_memory()  # as minimobile.train.fit does
    numba.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.batch_size, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, args.batch_size)
    print(f"batch {args.batch_size}, {args.threads} threads, median of {args.steps} steps per "
          f"timing, {args.rounds} rounds; ratio = variant / today's values timed beside it")
    print(f"{'network':<14}{'tuned number':<36}{'today':>8}{'ms':>8}{'ratio':>7}{'range':>12}")
    for spec in args.models.split(","):
        name, width = spec.split(":")
        model = build_model(name, float(width), cifar=True, seed=0)
        opt = SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True,
                  weight_decay=5e-4)

        def step():
            minimobile_step(model, opt, x, y)
        for setting in [None] + variants:  # warm-up: compile each path, fault buffers in
            with_setting(setting, lambda: time_steps(step, 2))
        today, changed = [], {i: [] for i in range(len(variants))}
        for r in range(args.rounds):
            # Each variant is timed right beside a timing of today's values (a pair), first or
            # second by turns, so the machine's drift over a round cancels in the ratio; the
            # variants' order rotates from round to round.
            for i in [(r + k) % len(variants) for k in range(len(variants))]:
                pair = [None, variants[i]] if (r + i) % 2 == 0 else [variants[i], None]
                times = {s: with_setting(s, lambda: time_steps(step, args.steps)) for s in pair}
                today.append(times[None])
                changed[i].append((times[variants[i]], times[None]))
        print(f"{spec.replace(':', ' '):<14}{'(today)':<36}{'':>8}{1e3 * np.median(today):8.0f}"
              f"{1.0:7.2f}{'':>12}")
        for i, (tuned, value) in enumerate(variants):
            ratios = np.array([v / t for v, t in changed[i]])
            label = f"{tuned}={value}"
            print(f"{'':<14}{label:<36}{getattr(tuning, tuned)!s:>8}"
                  f"{1e3 * np.median([v for v, _ in changed[i]]):8.0f}{np.median(ratios):7.2f}"
                  f"{f'{ratios.min():.2f}-{ratios.max():.2f}':>12}", flush=True)


if __name__ == "__main__":
    main()
