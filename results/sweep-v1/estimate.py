"""How long the sweep in grid.toml takes on this 2-core machine, estimated before running it.

An epoch of V1 (batch 128, 2 threads, quiet machine) is modelled as a + b * MACs: a fixed cost
per step (Python dispatch per layer, small arrays, data) plus work that grows with the
multiply-adds, fitted through two measured epochs (V1 0.5 and V1 1.0 at 32x32; the figures are
below, with where they come from). A 1-CPU trial is assumed to run the fixed part at the same
speed and the work at half speed (one thread instead of two). Ray starts the trials most
multiply-adds first and gives each free slot the next one; this replays that, on this
machine's 2 cores and on more.

    python results/sweep-v1/estimate.py [--epoch-seconds 73,200]
"""

import argparse
from pathlib import Path

from minimobile import sweep

HERE = Path(__file__).resolve().parent
# Seconds per epoch of V1 0.5 and V1 1.0 at 32x32, batch 128, 2 threads. Default: the training
# steps of docs/PERFORMANCE.md (214 and 554 ms, bench_train_step.py, 2026-11-26) x 391 steps.
STEP_EPOCHS = (0.214 * 391, 0.554 * 391)
EVAL_SHARE = 1 / 3 * 10_000 / 50_000  # a test pass: 10k forwards, a forward ~1/3 of a step


def makespan(seconds, slots):
    """Wall time of jobs started in the given order, each on the first free slot."""
    free = [0.0] * slots
    for s in seconds:
        free[free.index(min(free))] += s
    return max(free)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epoch-seconds", default=",".join(f"{s:.0f}" for s in STEP_EPOCHS),
                        help="V1 0.5 and V1 1.0 epochs at 32x32, 2 threads (default %(default)s)")
    args = parser.parse_args()
    t_half, t_full = map(float, args.epoch_seconds.split(","))
    m_half, m_full = (sweep.cost_of("v1", w, 32)[1] / 1e6 for w in (0.5, 1.0))
    b = (t_full - t_half) / (m_full - m_half)
    a = t_half - b * m_half
    grid = sweep.load_grid(HERE / "grid.toml")
    configs = sweep.trial_configs(grid, "/tmp/unused")
    trials = sorted(((c, sweep.cost_of(c.model, c.width, c.resolution)[1] / 1e6)
                     for c in configs), key=lambda t: -t[1])
    print(f"epoch (2 threads) = {a:.1f} s + {b:.2f} s per million multiply-adds")
    print(f"{'trial':<17}{'M MACs':>8}{'s/epoch 2 thr':>15}{'s/epoch 1 thr':>15}")
    two, one = [], []
    for c, macs in trials:
        evals = len(range(c.eval_every, c.epochs + 1, c.eval_every)) + (c.epochs % c.eval_every > 0)
        scale = c.epochs + evals * EVAL_SHARE
        two.append(scale * (a + b * macs))
        one.append(scale * (a + 2 * b * macs))
        print(f"{Path(c.out).name:<17}{macs:>8.2f}{a + b * macs:>15.0f}{a + 2 * b * macs:>15.0f}")
    print(f"{len(trials)} trials x {grid.epochs} epochs, {EVAL_SHARE:.3f} of an epoch per test pass")
    print(f"one at a time, 2 CPUs each:  {makespan(two, 1) / 60:5.1f} min")
    print(f"two at a time, 1 CPU each:   {makespan(one, 2) / 60:5.1f} min "
          f"(if 2 threads were exactly twice as fast as 1: {makespan([2 * s for s in two], 2) / 60:.1f})")
    print("plus about 1 min: Ray's start-up, each trial's imports, the kernels' compilation "
          "if this checkout has not compiled them yet")
    print("on more 1-CPU slots (a cluster's cores, as fast as these):",
          ", ".join(f"{n}: {makespan(one, n) / 60:.0f} min" for n in (1, 2, 4, 8)),
          f"(the longest trial alone: {max(one) / 60:.0f} min)")


if __name__ == "__main__":
    main()
