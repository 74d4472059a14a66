"""Batch norm's backward sums made by the conv that reads its output, against the batch norm
making its own (kernels/batchnorm.py, 3e; kernels/depthwise.py, 3d; kernels/matmul.py, 3e);
batch norm's dx made by the conv before it as it reads it, against the batch norm writing
it (kernels/batchnorm.py, 3f); and batch norm's forward statistics made by the conv before it
as it writes its output, against the batch norm reading that output back (3g).

A batch norm whose output a depthwise or 1x1 conv alone reads, normalised as it reads, gets
its gradient from that conv's backward. Its own backward then reads the gradient and its input
back from memory once to sum g = dout * act'(bn(x)) and g * (x - mean) per channel, and once
more to write dx. The conv's backward can make those sums as it writes each plane or image
of the gradient, while both are in cache; the batch norm then runs its second pass alone.
Both ways give the same bits (tests/test_kernels.py).

Inside a conv -> batch norm unit, the batch norm's dx goes to the conv's backward alone; the
batch norm can stop after its sums and hand the conv its own input and gradient, for the
conv to make dx as it reads each plane or image (ops.NormalizedGradient).

Inside a conv -> batch norm unit, the batch norm's statistics sum its whole input, the conv's
output, which the conv had in cache a plane or an image at a time just after making it. The
conv can make those sums there (ops.BatchNormStatistics), image 0 first for the shifts.

Six tables, each timing both ways back to back in every round, on the same arrays and the
same threads, with the medians and the paired ratio's median and range over rounds (this
machine is shared, and single timings move by 10-25 %). The "own" way is the engine without
the fusion: no conv makes the sums or statistics that the batch norm would then not use.

- the pair of backwards, the conv's then the batch norm's, at batch 128 on the layer shapes
  of the CIFAR variants where the sums are made (maps of at least
  tuning.BN_ROW_SUMS_MIN_PIXELS pixels: 32x32 down to 8x8), each with its network's
  activation: depthwise convs, then 1x1 convs;
- the pair of backwards, batch norm's then the conv's before it, dx written or made by the
  conv, on the depthwise and 1x1 convs' output shapes (GRADIENT_LAYERS);
- the pair of forwards, the conv's then its batch norm's (its output deferred to the next
  conv, as in the networks), the statistics summed by the batch norm or made by the conv, on
  the depthwise and 1x1 layer shapes of the first two tables (the conv reading its input
  normalised, as there);
- whole training steps (forward, loss, backward, SGD step) of each network in --models, with
  the conv's backward sums against the batch norm's own, then with the conv's forward
  statistics against the batch norm's own (the engine's other fusions as they are).

    python benchmarks/bench_fused_sums.py [--rounds 9] [--repeats 5] [--models v1:1.0,...]
"""

import argparse
import os
import sys

import numpy as np
from numba import get_num_threads

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from minimobile import experiments, memory, models, ops, optim  # noqa: E402

# (channels, input size, filter, stride, activation): the batch norm -> depthwise pairs of
# V1 (the stem's and the pointwise layers' outputs, ReLU), V2 0.5 (the expansions', ReLU6)
# and V3-Small (ReLU and hard-swish, 3x3 and 5x5), from 32x32 down to 8x8 maps.
LAYERS = [(32, 32, 3, 1, "relu"), (64, 32, 3, 2, "relu"), (128, 16, 3, 1, "relu"),
          (128, 16, 3, 2, "relu"), (256, 8, 3, 1, "relu"), (96, 32, 3, 1, "relu6"),
          (144, 16, 3, 1, "relu6"), (192, 8, 3, 1, "relu6"), (72, 16, 3, 2, "relu"),
          (96, 16, 5, 1, "hardswish"), (240, 8, 5, 1, "hardswish")]
# (input channels, output channels, size, activation): the batch norm -> 1x1 pairs of V1 (the
# depthwise layers' outputs), V2 0.5 (the projections') and V3-Small (ReLU and hard-swish).
POINTWISE_LAYERS = [(32, 64, 32, "relu"), (64, 128, 16, "relu"), (128, 128, 16, "relu"),
                    (256, 256, 8, "relu"), (96, 16, 32, "relu6"), (144, 24, 16, "relu6"),
                    (192, 32, 8, "relu6"), (88, 24, 16, "relu"), (240, 40, 8, "hardswish")]
# (conv, input channels, output channels, input size, stride, activation after the batch
# norm): V1's depthwise and 1x1 units from 32x32 to 4x4, and V2 0.5's expansion and
# projection at 32x32.
GRADIENT_LAYERS = [("depthwise", 32, 32, 32, 1, "relu"), ("depthwise", 64, 64, 32, 2, "relu"),
                   ("depthwise", 128, 128, 16, 1, "relu"), ("depthwise", 256, 256, 8, 1, "relu"),
                   ("depthwise", 512, 512, 4, 1, "relu"), ("pointwise", 32, 64, 32, 1, "relu"),
                   ("pointwise", 64, 128, 16, 1, "relu"), ("pointwise", 256, 256, 8, 1, "relu"),
                   ("pointwise", 512, 512, 4, 1, "relu"), ("pointwise", 16, 96, 32, 1, "relu6"),
                   ("pointwise", 96, 16, 32, 1, None)]
MODELS = "v1:0.5,v1:1.0,v2:0.5,v2:1.0,v3-small:1.0,v3-large:1.0"


class _Switch:
    """Turns one fusion on or off through its holder's class switch (`enabled`):
    ops.BatchNormGradientSums (the backward's sums) or ops.BatchNormStatistics (the forward's
    statistics). Off, no conv makes them and every batch norm makes its own."""

    def __init__(self, holder):
        self.holder = holder
        self.before = holder.enabled

    def use(self, fused):
        self.holder.enabled = fused

    def restore(self):
        self.holder.enabled = self.before


def _columns(times):
    """'own fused ratio range' from times (rounds, 2), own first."""
    ratios = times[:, 1] / times[:, 0]
    return (f" {1e3 * np.median(times[:, 0]):>8.2f} {1e3 * np.median(times[:, 1]):>8.2f}"
            f" {np.median(ratios):>7.2f} {ratios.min():>5.2f}-{ratios.max():<5.2f}")


def _pair(rng, sums, batch, C, H, activation, conv, rounds, repeats):
    """Both ways of batch norm (C channels, H x H) and conv(map) -> (out, backward): the
    forwards made once per way, with the sums' holder (fused) or without (own)."""
    x = (rng.standard_normal((batch, C, H, H)) * 2 + 0.5).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    backwards = []
    for fused in (False, True):
        sums.use(fused)
        normalized, bn_cache = ops.batchnorm2d_activation_forward(x, gamma, beta, 1e-5,
                                                                  activation, defer=True)
        out, conv_backward = conv(normalized)
        dout = np.random.default_rng(1).standard_normal(out.shape).astype(np.float32)
        backwards.append(lambda conv_backward=conv_backward, dout=dout, bn_cache=bn_cache:
                         ops.batchnorm2d_backward(conv_backward(dout)[0], bn_cache))
    sums.restore()
    times = np.empty((rounds, 2))
    for r in range(rounds):
        for way in (0, 1) if r % 2 == 0 else (1, 0):
            times[r, way] = experiments.time_callable(backwards[way], repeats, warmup=1).median
    return times


def _statistics_pair(rng, batch, conv, C, C_out, H, K, stride, activation, rounds, repeats):
    """Both ways of conv (reading a deferred batch norm's output, C channels, H x H) ->
    batch norm (deferred): the statistics summed by the batch norm, or made by the conv."""
    x = (rng.standard_normal((batch, C, H, H)) * 2 + 0.5).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    normalized, _ = ops.batchnorm2d_activation_forward(x, gamma, beta, 1e-5, activation,
                                                       defer=True)
    if conv == "depthwise":
        w = (rng.standard_normal((C, 1, K, K)) * 0.3).astype(np.float32)
    else:
        w = (rng.standard_normal((C_out, C, 1, 1)) * 0.1).astype(np.float32)
    gamma_out = rng.uniform(0.5, 1.5, w.shape[0]).astype(np.float32)
    beta_out = rng.standard_normal(w.shape[0]).astype(np.float32)

    def forwards(made):
        statistics = ops.BatchNormStatistics() if made else None
        if conv == "depthwise":
            out, _ = (ops.depthwise_conv2d_forward_with_statistics(normalized, w, stride,
                                                                   K // 2, statistics)
                      if made else ops.depthwise_conv2d_forward(normalized, w, stride, K // 2))
        else:
            out, _ = (ops.pointwise_conv2d_forward_with_statistics(normalized, w, None,
                                                                   statistics)
                      if made else ops.pointwise_conv2d_forward(normalized, w))
        ops.batchnorm2d_activation_forward(out, gamma_out, beta_out, 1e-5, activation, True,
                                           statistics)

    times = np.empty((rounds, 2))
    for r in range(rounds):
        for way in (0, 1) if r % 2 == 0 else (1, 0):
            times[r, way] = experiments.time_callable(lambda: forwards(way == 1), repeats,
                                                      warmup=1).median
    return times


def _gradient_pair(rng, batch, conv, C, C_out, H, stride, activation, rounds, repeats):
    """Both ways of conv -> batch norm's backward: dx written, or made by the conv."""
    x = rng.standard_normal((batch, C, H, H)).astype(np.float32)
    if conv == "depthwise":
        w = (rng.standard_normal((C, 1, 3, 3)) * 0.3).astype(np.float32)
        y, cache = ops.depthwise_conv2d_forward(x, w, stride, 1)

        def conv_backward(dy):
            ops.depthwise_conv2d_backward(dy, cache)
    else:
        w = (rng.standard_normal((C_out, C, 1, 1)) * 0.1).astype(np.float32)
        y, cache = ops.pointwise_conv2d_forward(x, w)

        def conv_backward(dy):
            ops.pointwise_conv2d_backward(dy, cache)
    gamma = rng.uniform(0.5, 1.5, C_out).astype(np.float32)
    beta = rng.standard_normal(C_out).astype(np.float32)
    out, bn_cache = ops.batchnorm2d_activation_forward(y, gamma, beta, 1e-5, activation)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    times = np.empty((rounds, 2))
    for r in range(rounds):
        for way in (0, 1) if r % 2 == 0 else (1, 0):
            times[r, way] = experiments.time_callable(
                lambda: conv_backward((ops.batchnorm2d_backward_deferred if way == 1
                                       else ops.batchnorm2d_backward)(dout, bn_cache)[0]),
                repeats, warmup=1).median
    return times


def _steps(spec, switch, batch, rounds):
    name, width = spec.split(":")
    model = models.build_model(name, width=float(width), cifar=True, seed=0)
    model.train()
    optimizer = optim.SGD(model.named_parameters(), lr=0.01, momentum=0.9, nesterov=True)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, batch)

    def step():
        logits = model.forward(x)
        _, dlogits = ops.softmax_cross_entropy(logits, y)
        model.backward(dlogits)
        optimizer.step()

    times = np.empty((rounds, 2))
    for r in range(rounds):
        for way in (0, 1) if r % 2 == 0 else (1, 0):
            switch.use(fused=way == 1)
            times[r, way] = experiments.time_callable(step, 1, warmup=1 if r == 0 else 0).median
    switch.restore()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5,
                        help="timings of the pair of backwards per way and round")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--models", default=MODELS,
                        help=f"NAME:WIDTH,... for the whole steps, '' for none (default {MODELS})")
    args = parser.parse_args()
    memory.keep_freed_memory()  # as training does (minimobile.train.fit)
    rng = np.random.default_rng(0)
    sums = _Switch(ops.BatchNormGradientSums)
    statistics = _Switch(ops.BatchNormStatistics)
    try:
        print(f"depthwise backward then batch norm backward, batch {args.batch}, float32, "
              f"{get_num_threads()} threads; median of {args.repeats} per way and round, "
              f"{args.rounds} rounds, the ways alternating first; ms")
        print(f"{'C':>4} {'map':>6} {'K':>2} {'s':>2} {'activation':>10}"
              f" {'own':>8} {'fused':>8} {'ratio':>7} {'range':>11}")
        for C, H, K, stride, activation in LAYERS:
            w = (rng.standard_normal((C, 1, K, K)) * 0.3).astype(np.float32)

            def depthwise(normalized):
                out, cache = ops.depthwise_conv2d_forward(normalized, w, stride, K // 2)
                return out, lambda dout: ops.depthwise_conv2d_backward(dout, cache)
            times = _pair(rng, sums, args.batch, C, H, activation, depthwise, args.rounds,
                          args.repeats)
            print(f"{C:>4} {H:>3}x{H:<2} {K:>2} {stride:>2} {activation:>10}" + _columns(times),
                  flush=True)
        print()
        print("1x1 conv backward then batch norm backward, the same way")
        print(f"{'C':>4} {'map':>6} {'C_out':>5} {'activation':>10}"
              f" {'own':>8} {'fused':>8} {'ratio':>7} {'range':>11}")
        for C, C_out, H, activation in POINTWISE_LAYERS:
            w = (rng.standard_normal((C_out, C, 1, 1)) * 0.1).astype(np.float32)

            def pointwise(normalized):
                out, cache = ops.pointwise_conv2d_forward(normalized, w)
                return out, lambda dout: ops.pointwise_conv2d_backward(dout, cache)
            times = _pair(rng, sums, args.batch, C, H, activation, pointwise, args.rounds,
                          args.repeats)
            print(f"{C:>4} {H:>3}x{H:<2} {C_out:>5} {activation:>10}" + _columns(times),
                  flush=True)
        print()
        print("batch norm backward then the conv's before it: dx written, or made by the conv "
              "as it reads (ops.NormalizedGradient)")
        print(f"{'conv':>9} {'C':>4} {'C_out':>5} {'map':>6} {'s':>2} {'activation':>10}"
              f" {'written':>8} {'made':>8} {'ratio':>7} {'range':>11}")
        for conv, C, C_out, H, stride, activation in GRADIENT_LAYERS:
            times = _gradient_pair(rng, args.batch, conv, C, C_out, H, stride, activation,
                                   args.rounds, args.repeats)
            print(f"{conv:>9} {C:>4} {C_out:>5} {H:>3}x{H:<2} {stride:>2} {str(activation):>10}"
                  + _columns(times), flush=True)
        print()
        print("conv forward then batch norm forward (deferred): the statistics summed by the "
              "batch norm, or made by the conv as it writes (ops.BatchNormStatistics)")
        print(f"{'conv':>9} {'C':>4} {'C_out':>5} {'map':>6} {'K':>2} {'s':>2} {'activation':>10}"
              f" {'own':>8} {'made':>8} {'ratio':>7} {'range':>11}")
        cases = ([("depthwise", C, C, H, K, s, act) for C, H, K, s, act in LAYERS]
                 + [("pointwise", C, C_out, H, 1, 1, act)
                    for C, C_out, H, act in POINTWISE_LAYERS])
        for conv, C, C_out, H, K, stride, activation in cases:
            times = _statistics_pair(rng, args.batch, conv, C, C_out, H, K, stride, activation,
                                     args.rounds, args.repeats)
            print(f"{conv:>9} {C:>4} {C_out:>5} {H:>3}x{H:<2} {K:>2} {stride:>2} {activation:>10}"
                  + _columns(times), flush=True)
        specs = [s for s in args.models.split(",") if s]
        for switch, what in ((sums, "the backward's sums"),
                             (statistics, "the forward's statistics")):
            if not specs:
                break
            print()
            print(f"training step, batch {args.batch}, one step per way and round, "
                  f"{args.rounds} rounds, {what} made by the batch norm (own) or the conv "
                  f"(fused); ms")
            print(f"{'network':<14} {'own':>8} {'fused':>8} {'ratio':>7} {'range':>11}")
            for spec in specs:
                times = _steps(spec, switch, args.batch, args.rounds)
                print(f"{spec.replace(':', ' '):<14}" + _columns(times), flush=True)
    finally:
        sums.restore()
        statistics.restore()


if __name__ == "__main__":
    main()
