"""The fast depthwise conv on large maps (kernels/depthwise.py, 3a), 3x3 filters: the nine
taps of each output pixel summed in registers (forward), and each input pixel's gradient
gathered from its nine taps (backward, stride 1), against nine passes over a wide grid.

Both give the same bits (tests/test_kernels.py checks the order of the sum), so the only
question is time. Each round times the two ways back to back on the same arrays (forward,
then backward; the backward at stride 2 is the same code both ways), at batch
128, on the depthwise layers of MobileNet's CIFAR variants whose outputs take the
phase-plane path (more than tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS pixels), and prints
the median of each and of their ratio, with the range of the ratio over rounds: this
machine is shared, and single timings move by 10-25 %.

    python benchmarks/bench_depthwise_taps.py [--rounds 9] [--repeats 5]
"""

import argparse
import os
import sys

import numpy as np
from numba import get_num_threads

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from minimobile import experiments, tuning  # noqa: E402
from minimobile.kernels import depthwise  # noqa: E402

# (channels, input size, stride) of V1 0.5's, V2 0.5's and V1 1.0's layers on maps of 16x16
# and more (the 3x3 depthwise convs that take the phase-plane path at batch 128).
LAYERS = [(32, 32, 1), (64, 32, 2), (128, 16, 1), (96, 32, 1), (96, 32, 2), (48, 32, 1),
          (144, 16, 1), (96, 16, 1)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5, help="timings per way and round")
    parser.add_argument("--batch", type=int, default=128)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(f"3x3 depthwise conv on phase planes, batch {args.batch}, float32, "
          f"{get_num_threads()} threads; median of {args.repeats} per way and round, "
          f"{args.rounds} rounds; ms")
    print(f"{'':>14}{'forward':^39}{'backward':^39}")
    print(f"{'C':>4} {'map':>6} {'s':>2}" + f" {'passes':>8} {'registers':>10} {'ratio':>7} "
          f"{'range':>11}" * 2)
    for C, H, s in LAYERS:
        x = rng.standard_normal((args.batch, C, H, H)).astype(np.float32)
        w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
        Ho = (H - 1) // s + 1
        out = np.empty((args.batch, C, Ho, Ho), np.float32)
        ntasks = min(args.batch * C, tuning.DEPTHWISE_TASKS_PER_THREAD * get_num_threads())
        plain = depthwise.no_prologue(x)

        dout = rng.standard_normal(out.shape).astype(np.float32)
        dx, dw = np.empty_like(x), np.empty_like(w)
        block = max(1, min(tuning.DEPTHWISE_MAX_CHANNEL_BLOCK,
                           C // (tuning.DEPTHWISE_BLOCKS_PER_THREAD * get_num_threads())))

        def forward(registers):
            depthwise.depthwise_conv2d_forward_phase_planes(out, x, w, s, 1, ntasks, *plain,
                                                            registers)

        def backward(registers):
            depthwise.depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, s, 1, block,
                                                             *plain, registers)
        row = f"{C:>4} {H:>3}x{H:<2} {s:>2}"
        for fn in (forward, backward):
            times = np.array([[experiments.time_callable(lambda: fn(registers), args.repeats,
                                                         warmup=1).median
                               for registers in (False, True)] for _ in range(args.rounds)])
            ratios = times[:, 1] / times[:, 0]
            row += (f" {1e3 * np.median(times[:, 0]):>8.2f} {1e3 * np.median(times[:, 1]):>10.2f}"
                    f" {np.median(ratios):>7.2f} {ratios.min():>5.2f}-{ratios.max():<5.2f}")
        print(row, flush=True)


if __name__ == "__main__":
    main()
