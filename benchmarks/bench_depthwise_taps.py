"""The fast depthwise conv, 3x3 filters: the nine taps of each output pixel summed in
registers, against nine passes. On large maps (kernels/depthwise.py, 3a, phase planes) the
forward, and the backward (dx gathered from its taps, `_gather_3x3` at stride 1 and
`_gather_3x3_stride2` at stride 2, and dw's nine sums in registers, `_tap_sums_3x3`),
against nine passes over a wide grid; on small maps (3b, channels last) the forward, against
nine passes over each output pixel's row of channels, and the backward (dw's sums four
output pixels at a time, `_tap_sums_channels_last`, and dx at stride 1 summed in a register,
`_gather_3x3_channels_last`), against its sums pixel by pixel.

The forward and dx give the same bits both ways (tests/test_kernels.py checks the order of
the sum); dw's sums in registers are reordered (fastmath's "reassoc"), so dw agrees with the
passes' up to float32 rounding. Each round times the two ways back to back on the same
arrays (forward, then backward, at stride 1 and 2), at batch 128, on the depthwise layers
of MobileNet's CIFAR variants whose outputs take the phase-plane path (more than
tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS pixels), and prints the median of
each and of their ratio, with the range of the ratio over rounds: this machine is shared,
and single timings move by 10-25 %.

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
# The same for the layers whose outputs take the channels-last path: V1 1.0's and V2 0.5's
# at 8x8, 4x4 and 2x2 (their inputs, and strides).
CHANNELS_LAST_LAYERS = [(256, 8, 1), (192, 8, 1), (288, 8, 1), (96, 16, 2), (512, 4, 1),
                        (480, 4, 1), (1024, 2, 1)]


def _timed_pairs(fn, rounds, repeats):
    """'passes registers ratio range' columns: fn(False) and fn(True) timed back to back in
    each round, medians over rounds, and the range of the ratio."""
    times = np.array([[experiments.time_callable(lambda: fn(registers), repeats,
                                                 warmup=1).median
                       for registers in (False, True)] for _ in range(rounds)])
    ratios = times[:, 1] / times[:, 0]
    return (f" {1e3 * np.median(times[:, 0]):>8.2f} {1e3 * np.median(times[:, 1]):>10.2f}"
            f" {np.median(ratios):>7.2f} {ratios.min():>5.2f}-{ratios.max():<5.2f}")


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
            row += _timed_pairs(fn, args.rounds, args.repeats)
        print(row, flush=True)

    print()
    print("3x3 depthwise conv channels last (small maps); the backward's 'passes' are its sums "
          "pixel by pixel")
    print(f"{'':>14}{'forward':^39}{'backward':^39}")
    print(f"{'C':>4} {'map':>6} {'s':>2}" + f" {'passes':>8} {'registers':>10} {'ratio':>7} "
          f"{'range':>11}" * 2)
    for C, H, s in CHANNELS_LAST_LAYERS:
        x = rng.standard_normal((args.batch, C, H, H)).astype(np.float32)
        w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
        Ho = (H - 1) // s + 1
        out = np.empty((args.batch, C, Ho, Ho), np.float32)
        ntasks = min(args.batch, tuning.DEPTHWISE_TASKS_PER_THREAD * get_num_threads())
        plain = depthwise.no_prologue(x)
        dout = rng.standard_normal(out.shape).astype(np.float32)
        dx, dw = np.empty_like(x), np.empty_like(w)

        def forward(registers):
            depthwise.depthwise_conv2d_forward_channels_last(
                out, x, w, s, 1, ntasks, tuning.PIXEL_ORDER_MAX_PIXELS, *plain, registers)

        def backward(registers):
            depthwise.depthwise_conv2d_backward_channels_last(
                dx, dw, dout, x, w, s, 1, tuning.PIXEL_ORDER_MAX_PIXELS, tuning.SUM_TASKS,
                *plain, registers, tuning.DEPTHWISE_GATHER_MIN_PIXELS)
        row = f"{C:>4} {H:>3}x{H:<2} {s:>2}"
        for fn in (forward, backward):
            row += _timed_pairs(fn, args.rounds, args.repeats)
        print(row, flush=True)


if __name__ == "__main__":
    main()
