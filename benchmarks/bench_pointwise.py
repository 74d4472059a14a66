"""The 1x1 conv on small maps: which layout makes the product, timed layer by layer.

On maps of at least tuning.PER_IMAGE_MIN_PIXELS pixels the fast rung makes one product per
image, in place. Below that (4x4 and 2x2 at the end of a CIFAR network) a product per image
is too short for BLAS, and the images must be laid side by side first. This script times the
ways to do that, forward + backward, on every 1x1 conv of the networks named whose maps have
at most --max-pixels pixels (default 64, so that the 8x8 maps show where per-image products
start to win; batch 128, float32, the real layers' shapes):

- per_image       one product per image anyway (no copy, short products);
- channel_major   the whole batch copied to (C, N*H*W), one product split by rows, copied back;
- groups:COLS     each task copies COLS / (H*W) images side by side into a scratch matrix that
                  stays in its cache, makes one product and copies the result back;
- torch, torch_cl PyTorch's own 1x1 convolution and its backward (the two calls its autograd
                  makes, on the same threads), on NCHW or channels-last tensors: the peer's
                  kernels for the same layer, to tell whether a gap in a whole step comes from
                  these products or from around them. Needs PyTorch (the `torch` extra).

All variants of a layer are timed in turn inside each round, so a slow spell of this shared
machine hits them alike; the table gives each one's best round and its ratio to the first
variant, and the last rows the sum over each network's layers (a layer repeated in the network
counts as often as it appears). --gflops shows each cell's rate instead of its ratio
(GFLOP/s, 6 * N * C_in * C_out * H * W floating-point operations for forward + backward)
beside a reference: one large product (512 x 512 @ 512 x 2048) on the same threads and BLAS,
which is about as fast as this BLAS multiplies (and, with a torch variant, the same product
by torch.mm). --max-pixels 1024 covers every 1x1 conv of a CIFAR network (the per_image
variant is then what the fast rung runs on large maps). With a torch variant, PyTorch runs on
as many threads as Numba for the run and gets its own count back after it; its thread pool
and Numba's both spin a while after their work, so their variants alternate as the others
do and a slow first call after a switch shows in a round, not in the best one.

    python benchmarks/bench_pointwise.py [--models v1:0.5,v2:0.5,v3-small:1.0] [--rounds 7]
        [--variants channel_major,groups:128,groups:256,groups:512,per_image,torch_cl] [--gflops]
"""

import argparse
import collections
import os
import sys
import time

import numba
import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from minimobile import ops, tuning  # noqa: E402
from minimobile.kernels.matmul import matmul_rows  # noqa: E402
from minimobile.layers import PointwiseConv2d  # noqa: E402
from minimobile.models import build_model  # noqa: E402

try:
    import torch
except ImportError:
    torch = None

TORCH_VARIANTS = ("torch", "torch_cl")  # NCHW, channels-last


def small_map_layers(model_name, width, max_pixels):
    """Counter of (C_in, C_out, H, W) over the model's 1x1 convs on maps of at most max_pixels
    pixels, found by running one forward pass on a CIFAR-sized batch of 2."""
    model = build_model(model_name, width, cifar=True)
    seen = collections.Counter()
    for _, module in model.named_modules():
        if isinstance(module, PointwiseConv2d):
            # *args: in training, ConvBNActivation hands its conv an ops.BatchNormStatistics
            def spy(x, *args, forward=module.forward):
                out = forward(x, *args)
                N, C, H, W = x.shape
                if H * W <= max_pixels:
                    seen[(C, out.shape[1], H, W)] += 1
                return out
            module.forward = spy
    model.train()
    model.forward(np.zeros((2, 3, 32, 32), np.float32))
    return seen


def apply_variant(variant):
    """Set tuning for one variant; returns the values to restore."""
    saved = (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
             tuning.POINTWISE_GROUP_COLUMNS)
    if variant in TORCH_VARIANTS:
        if torch is None:
            raise SystemExit(f"--variants {variant}: needs PyTorch, which is not installed "
                             f"(pip install -e '.[torch]')")
        return saved  # PyTorch's layer: minimobile's tuning plays no part
    tuning.PER_IMAGE_MIN_PIXELS = 1 if variant == "per_image" else 10**9
    if variant == "channel_major":
        tuning.POINTWISE_SMALL_MAPS = "channel_major"
    elif variant.startswith("groups:") and variant[len("groups:"):].isdigit():
        tuning.POINTWISE_SMALL_MAPS = "groups"
        tuning.POINTWISE_GROUP_COLUMNS = int(variant[len("groups:"):])
    elif variant != "per_image":
        restore(saved)
        raise SystemExit(f"--variants: expected per_image, channel_major, groups:COLS, torch "
                         f"or torch_cl, got {variant!r}")
    return saved


def restore(saved):
    (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
     tuning.POINTWISE_GROUP_COLUMNS) = saved


def forward_backward(x, w, dout):
    out, cache = ops.pointwise_conv2d_forward(x, w)
    ops.pointwise_conv2d_backward(dout, cache)


def torch_forward_backward(x, w, dout):
    """PyTorch's 1x1 conv forward and the backward its autograd calls (dx and dw, no bias),
    on tensors already in the layout to time; returns (out, dx, dw)."""
    out = torch.nn.functional.conv2d(x, w)
    dx, dw, _ = torch.ops.aten.convolution_backward(dout, x, w, None, [1, 1], [0, 0], [1, 1],
                                                    False, [0, 0], 1, [True, True, False])
    return out, dx, dw


def torch_tensors(variant, x, w, dout):
    """x, w and dout as PyTorch tensors, channels-last for torch_cl (w too, as a model moved
    to channels-last holds it)."""
    layout = torch.channels_last if variant == "torch_cl" else torch.contiguous_format
    return [torch.from_numpy(a).contiguous(memory_format=layout) for a in (x, w, dout)]


def time_layer(shape, batch, variants, rounds, rng):
    """Best forward+backward seconds of each variant on one layer shape."""
    C_in, C_out, H, W = shape
    x = rng.standard_normal((batch, C_in, H, W)).astype(np.float32)
    w = rng.standard_normal((C_out, C_in, 1, 1)).astype(np.float32)
    dout = rng.standard_normal((batch, C_out, H, W)).astype(np.float32)
    best = {v: float("inf") for v in variants}
    arguments = {v: torch_tensors(v, x, w, dout) if v in TORCH_VARIANTS else (x, w, dout)
                 for v in variants}
    for round_ in range(rounds + 1):  # round 0 compiles and warms up
        for variant in variants:
            saved = apply_variant(variant)
            run = torch_forward_backward if variant in TORCH_VARIANTS else forward_backward
            try:
                start = time.perf_counter()
                run(*arguments[variant])
                elapsed = time.perf_counter() - start
            finally:
                restore(saved)
            if round_:
                best[variant] = min(best[variant], elapsed)
    return best


def flops(shape, batch):
    """Floating-point operations of a 1x1 conv's forward + backward: out = W @ x is 2 *
    C_out * C_in per pixel, the backward's dW and dx twice that."""
    C_in, C_out, H, W = shape
    return 6 * batch * C_in * C_out * H * W


def reference_gflops(rounds, rng, m=512, k=512, n=2048):
    """GFLOP/s of one large product (m x k @ k x n, rows split into tuning.SUM_TASKS
    products on Numba's threads, as the fast rung splits its own): the BLAS's speed when
    the shapes suit it, best of `rounds`."""
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    out = np.empty((m, n), np.float32)
    best = float("inf")
    for round_ in range(rounds + 1):  # round 0 compiles and warms up
        start = time.perf_counter()
        matmul_rows(out, a, b, tuning.SUM_TASKS)
        if round_:
            best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def torch_reference_gflops(rounds, rng, m=512, k=512, n=2048):
    """The same large product by PyTorch (torch.mm, on as many threads as Numba's), best of
    `rounds`."""
    a, b = (torch.from_numpy(rng.standard_normal(s).astype(np.float32))
            for s in ((m, k), (k, n)))
    out = torch.empty((m, n))
    best = float("inf")
    for round_ in range(rounds + 1):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        if round_:
            best = min(best, time.perf_counter() - start)
    return 2 * m * k * n / best / 1e9


def _cell(seconds, first, work, gflops):
    second = work / seconds / 1e9 if gflops else seconds / first
    return f"{1e3 * seconds:8.2f} {second:5.{0 if gflops else 2}f} "


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="v1:0.5,v2:0.5,v3-small:1.0",
                        help="comma-separated NAME:WIDTH (default %(default)s)")
    parser.add_argument("--variants",
                        default="channel_major,groups:128,groups:256,groups:512,per_image")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--max-pixels", type=int, default=64)
    parser.add_argument("--gflops", action="store_true",
                        help="GFLOP/s instead of the ratio, beside one large product's")
    args = parser.parse_args(argv)
    variants = args.variants.split(",")
    for variant in variants:
        restore(apply_variant(variant))  # rejects a bad name before any timing
    torch_threads = None
    if any(v in TORCH_VARIANTS for v in variants):
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(numba.get_num_threads())  # the same threads as minimobile's
    try:
        print_tables(args, variants)
    finally:
        if torch_threads is not None:  # as it was: a caller in the same process keeps its own
            torch.set_num_threads(torch_threads)


def print_tables(args, variants):
    """The reference line(s), then a table per network: each layer's cells and the total."""
    rng = np.random.default_rng(0)
    print(f"1x1 conv forward + backward, batch {args.batch}, float32, best of {args.rounds} "
          f"rounds (ms); " + ("then GFLOP/s" if args.gflops else
                              f"ratio = the variant's time / {variants[0]}'s"))
    if args.gflops:
        print(f"one large product (512 x 512 @ 512 x 2048) on the same threads: "
              f"{reference_gflops(args.rounds, rng):.0f} GFLOP/s")
        if any(v in TORCH_VARIANTS for v in variants):
            print(f"the same product by PyTorch {torch.__version__} (torch.mm): "
                  f"{torch_reference_gflops(args.rounds, rng):.0f} GFLOP/s")
    header = f"{'layer':<26}" + "".join(f"{v:>15}" for v in variants)
    timed = {}
    totals = {}
    for spec in args.models.split(","):
        name, width = spec.split(":")
        layers = small_map_layers(name, float(width), args.max_pixels)
        print(f"\n{name} {width}: {sum(layers.values())} 1x1 convs on maps of at most "
              f"{args.max_pixels} pixels")
        print(header)
        total = dict.fromkeys(variants, 0.0)
        total_work = 0
        for shape, count in sorted(layers.items(), key=lambda item: -item[0][2]):
            if shape not in timed:
                timed[shape] = time_layer(shape, args.batch, variants, args.rounds, rng)
            best = timed[shape]
            C_in, C_out, H, W = shape
            label = f"{C_in}->{C_out} {H}x{W} (x{count})"
            work = flops(shape, args.batch)
            print(f"{label:<26}" + "".join(_cell(best[v], best[variants[0]], work, args.gflops)
                                           for v in variants))
            for v in variants:
                total[v] += count * best[v]
            total_work += count * work
        totals[spec] = total
        print(f"{'total':<26}" + "".join(_cell(total[v], total[variants[0]], total_work,
                                               args.gflops) for v in variants))


if __name__ == "__main__":
    main()
