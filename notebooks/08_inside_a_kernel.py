# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Inside a kernel: from loops to the fast version, and where the time goes
#
# Every op in `minimobile/kernels/` is a staircase of three rungs with one signature: `_loops`
# (plain Python, the definition), `_simple` (a short Numba kernel, parallel over one axis whose
# writes are disjoint) and `_fast` (what the engine runs, each change headed by what it changes
# and why). This notebook climbs the staircase for the depthwise conv and batch norm, times the
# rungs side by side at CIFAR shapes, then builds a **roofline** from measurements (the
# machine's memory bandwidth and arithmetic peak) and places every conv of V1 and V2 on it.
# Last, it measures why 4×4 and 2×2 maps need a different loop order.
#
# **Exercise**: the Numba kernels of part 3 of
# [`exercises/ex01_depthwise_separable.py`](../exercises/ex01_depthwise_separable.py)
# (`depthwise_conv2d_forward_simple` / `_backward_simple`): write the simple rung yourself, then
# `python -m exercises.ex01_depthwise_separable` times it against your NumPy version. Check with
# `pytest exercises -m ex01`.
#
# Timings depend on the machine and on what else runs on it; every one below is a median of
# repeated runs after a warm-up, with the spread shown.

# %%
# %load_ext autoreload
# %autoreload 2
import os

import matplotlib.pyplot as plt
import numpy as np

import minimobile as mm
from minimobile import experiments as ex

# Quick mode (MINIMOBILE_QUICK=1, set by tests/test_notebooks.py): small sizes, few repetitions,
# so that the test suite runs every notebook in seconds. Leave it unset to run the real thing.
QUICK = os.environ.get("MINIMOBILE_QUICK") == "1"
print("quick mode" if QUICK else "full mode", "| Numba threads:", mm.get_num_threads())

# %% [markdown]
# ## The staircase of the depthwise conv
#
# Notebook 01 showed the loops rung. The simple rung is the same loops compiled by Numba, each
# (image, channel) plane on one thread (`prange` over planes: no two threads write the same
# output):

# %%
from minimobile.kernels import depthwise

ex.show_source(depthwise.depthwise_conv2d_forward_simple)

# %% [markdown]
# The fast rung chooses between two loop orders by the output's size, with a threshold kept in
# `minimobile/tuning.py` with its measurement (the comments above each function in
# `minimobile/kernels/depthwise.py` say what each changes and why):

# %%
ex.show_source(depthwise.depthwise_conv2d_forward_fast)

# %% [markdown]
# ## Climbing it: each rung timed at CIFAR shapes
#
# Forward and backward of one layer, through `mm.ops` with every op on one rung
# (`mm.kernels.use`), at shapes like a CIFAR MobileNet's: the first two are V2 0.5's on 32×32
# images, and the rest go on as every MobileNet does, more channels on smaller maps, down to
# 2×2. The loops rung is pure Python, thousands of times slower, so it is timed on one image
# and reported per image like the others.

# %%
N = 4 if QUICK else 64
repeats = 2 if QUICK else 9
shapes = ([(8, 16, 1), (16, 4, 1)] if QUICK else
          [(48, 32, 1), (96, 16, 2), (144, 8, 1), (192, 4, 1), (384, 2, 1)])  # (C, map side, stride)
rng = np.random.default_rng(0)


def depthwise_step(x, w, stride):
    out, cache = mm.ops.depthwise_conv2d_forward(x, w, stride, 1)
    return mm.ops.depthwise_conv2d_backward(np.ones_like(out), cache)


print(f"depthwise 3x3, forward + backward, microseconds per image (batch {N}; loops: batch 1)")
print(f"{'C':>4} {'map':>5} {'s':>2} {'loops':>10} {'simple':>9} {'fast':>9} {'simple/fast':>11} {'spread':>7}")
dw_rows = []
for C, size, stride in shapes:
    x = rng.standard_normal((N, C, size, size)).astype(np.float32)
    w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    t = ex.time_on_rungs(lambda: depthwise_step(x, w, stride), ("simple", "fast"), repeats)
    t.update(ex.time_on_rungs(lambda: depthwise_step(x[:1], w, stride), ("loops",), 1, 0))
    with mm.kernels.use("simple"):
        reference = depthwise_step(x, w, stride)
    agree = all(np.allclose(a, b, rtol=1e-4, atol=1e-4) for a, b in zip(reference, depthwise_step(x, w, stride)))
    per_image = {r: 1e6 * t[r].median / (1 if r == "loops" else N) for r in t}
    spread = max((max(t[r].samples) - min(t[r].samples)) / t[r].median for r in ("simple", "fast"))
    dw_rows.append((C, size, stride, per_image))
    print(f"{C:>4} {size:>5} {stride:>2} {per_image['loops']:>10.0f} {per_image['simple']:>9.1f} "
          f"{per_image['fast']:>9.1f} {per_image['simple'] / per_image['fast']:>11.1f} {100 * spread:>6.0f}%"
          + ("" if agree else "  (rungs disagree!)"))

# %% [markdown]
# Batch norm in training mode, forward and backward, the same way:

# %%
def batchnorm_step(x, gamma, beta):
    out, cache = mm.ops.batchnorm2d_forward(x, gamma, beta)
    return mm.ops.batchnorm2d_backward(np.ones_like(out), cache)


print(f"batch norm, forward + backward, microseconds per image (batch {N}; loops: batch 1)")
print(f"{'C':>4} {'map':>5} {'loops':>10} {'simple':>9} {'fast':>9} {'simple/fast':>11} {'spread':>7}")
for C, size, _ in shapes:
    x = rng.standard_normal((N, C, size, size)).astype(np.float32)
    gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
    t = ex.time_on_rungs(lambda: batchnorm_step(x, gamma, beta), ("simple", "fast"), repeats)
    t.update(ex.time_on_rungs(lambda: batchnorm_step(x[:1], gamma, beta), ("loops",), 1, 0))
    per_image = {r: 1e6 * t[r].median / (1 if r == "loops" else N) for r in t}
    spread = max((max(t[r].samples) - min(t[r].samples)) / t[r].median for r in ("simple", "fast"))
    print(f"{C:>4} {size:>5} {per_image['loops']:>10.0f} {per_image['simple']:>9.1f} "
          f"{per_image['fast']:>9.1f} {per_image['simple'] / per_image['fast']:>11.1f} {100 * spread:>6.0f}%")

# %% [markdown]
# (The loops rung's batch-norm time at batch 1 is per image too, but batch norm's statistics
# span the batch, so the rungs do not do quite the same work per image there; the simple and
# fast columns are the comparison that matters.)
#
# ## A roofline, measured
#
# A layer's time is bounded two ways: by the arithmetic the cores can do (a *peak* in
# multiply-adds per second) and by the bytes memory can deliver (a *bandwidth*). A layer that
# does $I$ multiply-adds per byte it moves (its *arithmetic intensity*) can reach at most
# $\min(\text{peak},\ I \times \text{bandwidth})$. Both ceilings are measured here, not taken
# from a data sheet:
#
# - **bandwidth**: `ex.copy_bandwidth`, a plain copy, on a small array (in cache) and on arrays
#   larger than the last-level cache (DRAM);
# - **peak**: `ex.peak_matmul_gmacs`, a large float32 matrix product through BLAS on all of
#   Numba's threads, the best-optimised arithmetic on this machine.

# %%
llc = ex.last_level_cache_bytes()
big = 16 * 2**20 if QUICK else min(4 * llc if llc else 2**30, 2**30)
in_cache = ex.copy_bandwidth(2**20, repeats=max(repeats, 5))
dram = ex.copy_bandwidth(big, repeats=3 if QUICK else 7)
peak = ex.peak_matmul_gmacs(512 if QUICK else 2048, repeats=3 if QUICK else 7)
print(f"largest cache reported: {'unknown' if llc is None else f'{llc / 2**20:.0f} MiB'}")
print(f"copy of 1 MiB (in cache):        {in_cache.gbps:6.1f} GB/s "
      f"(runs {min(in_cache.samples):.1f}-{max(in_cache.samples):.1f})")
print(f"copy of {dram.nbytes / 2**20:.0f} MiB:                {dram.gbps:6.1f} GB/s "
      f"(runs {min(dram.samples):.1f}-{max(dram.samples):.1f})"
      + ("" if llc is None or dram.nbytes >= 2 * llc else
         "  -- not much larger than the reported cache: read as an upper bound on DRAM"))
print(f"float32 matrix product:          {peak:6.1f} GMAC/s")

# %% [markdown]
# Now every conv of V1 and V2 (CIFAR variants, width 0.5, batch 32, float32, an inference
# forward): each timed alone on the input it gets in the network (`ex.layer_timings`), with its
# multiply-adds and the bytes it must at least move (its input, output and weights, once).

# %%
batch = 4 if QUICK else 32
x = np.random.default_rng(1).standard_normal((batch, 3, 32, 32)).astype(np.float32)
nets = {"V1": mm.mobilenet_v1(num_classes=10, width_mult=0.5, cifar=True, seed=0),
        "V2": mm.mobilenet_v2(num_classes=10, width_mult=0.5, cifar=True, seed=0)}
layers = {name: ex.layer_timings(net, x, repeats=2 if QUICK else 7, warmup=2)
          for name, net in nets.items()}

fig, ax = plt.subplots(figsize=(8, 5.5))
intensity = np.geomspace(0.05, 500, 200)
ax.plot(intensity, np.minimum(peak, intensity * dram.gbps), "k-", lw=1, label="roof with DRAM bandwidth")
ax.plot(intensity, np.minimum(peak, intensity * in_cache.gbps), "k--", lw=1, label="roof with in-cache bandwidth")
markers = {"V1": "o", "V2": "s"}
colors = {"Conv2d": "C2", "DepthwiseConv2d": "C3", "PointwiseConv2d": "C0"}
for name, rows in layers.items():
    for kind, color in colors.items():
        pts = [(r.macs / r.nbytes, r.macs / r.timing.median / 1e9) for r in rows if r.type == kind]
        if pts:
            ax.scatter(*zip(*pts), marker=markers[name], color=color, s=22, alpha=0.8,
                       label=f"{name} {kind}")
ax.set(xscale="log", yscale="log", xlabel="arithmetic intensity (multiply-adds per byte)",
       ylabel="GMAC/s reached", title=f"Every conv of V1 and V2 (CIFAR, width 0.5, batch {batch}) on a measured roofline")
ax.legend(fontsize=7, loc="lower right")
plt.show()

# %%
print(f"{'net':<3} {'layer':<22} {'type':<16} {'out map':>8} {'MAC/B':>6} {'GMAC/s':>7} "
      f"{'% of roof':>9} {'GB/s':>6}")
summary = {}
for name, rows in layers.items():
    for r in rows:
        i = r.macs / r.nbytes
        gmacs = r.macs / r.timing.median / 1e9
        roof = min(peak, i * dram.gbps)
        summary.setdefault(r.type, []).append((100 * gmacs / roof, r.nbytes / r.timing.median / 1e9))
        print(f"{name:<3} {r.name:<22} {r.type:<16} {r.output_shape[2]:>4}x{r.output_shape[3]:<3} "
              f"{i:>6.1f} {gmacs:>7.2f} {100 * gmacs / roof:>8.0f}% {r.nbytes / r.timing.median / 1e9:>6.1f}")
print()
for kind, values in summary.items():
    pct, gbps = zip(*values)
    print(f"{kind:<16} median {np.median(pct):4.0f} % of its roof, moving a median {np.median(gbps):5.1f} GB/s "
          f"(DRAM copy {dram.gbps:.1f}, in-cache copy {in_cache.gbps:.1f})")

# %% [markdown]
# Read the depthwise layers (red) against the roofs. Their intensity is low (about $K^2/8$
# multiply-adds per byte in float32: 9 multiply-adds for each 4-byte value read and written),
# so the roof over them is set by bandwidth. How close they get to it is the last lines' "% of
# roof" and GB/s: a layer near its roof is memory-bound; a layer far below it is limited by
# something else (loop overhead, work the vector units do not get), and a faster memory would
# not help it. At batch 32 the maps of these layers fit in the caches, so the dashed roof is
# the relevant one for them. The pointwise convs (blue) sit at higher intensity, where the
# roof is the arithmetic peak.
#
# ## Why small maps need another loop order
#
# The fast depthwise kernel walks large maps plane by plane ("phase planes": each (image,
# channel) plane copied into padded scratch, then $K^2$ vectorised passes over it, or for
# 3x3 filters the nine taps of each pixel summed in a register, as the last section shows) and small
# maps channels last (each image turned to (pixels, channels), so every tap is one vectorised
# pass over the channels). Below, both loop orders at the same total work (batch × channels ×
# pixels held constant) as the map shrinks, in nanoseconds per multiply-add:

# %%
from minimobile import tuning

total = 2**16 if QUICK else 2**21  # N * C * H * W
print(f"{'map':>5} {'planes':>7} {'pixels/plane':>12} {'phase planes ns/MAC':>20} {'channels last ns/MAC':>21}")
small_rows = []
for size in ([8, 2] if QUICK else [32, 16, 8, 4, 2]):
    C = 64
    n_img = max(1, total // (C * size * size))
    x = rng.standard_normal((n_img, C, size, size)).astype(np.float32)
    w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    out = np.empty_like(x)
    macs = x.size * 9
    ntasks = min(n_img * C, tuning.DEPTHWISE_TASKS_PER_THREAD * mm.get_num_threads())
    plain = depthwise.no_prologue(x)  # x read as it is, no batch norm applied on reading
    planes = ex.time_callable(lambda: depthwise.depthwise_conv2d_forward_phase_planes(
        out, x, w, 1, 1, ntasks, *plain), repeats, warmup=2)
    last = ex.time_callable(lambda: depthwise.depthwise_conv2d_forward_channels_last(
        out, x, w, 1, 1, ntasks, tuning.PIXEL_ORDER_MAX_PIXELS, *plain), repeats, warmup=2)
    small_rows.append((size, 1e9 * planes.median / macs, 1e9 * last.median / macs))
    print(f"{size:>3}x{size:<1} {n_img * C:>7} {size * size:>12} {small_rows[-1][1]:>20.3f} {small_rows[-1][2]:>21.3f}")
print(f"the fast rung switches to channels last at outputs of at most "
      f"{tuning.DEPTHWISE_CHANNELS_LAST_MAX_PIXELS} pixels (minimobile/tuning.py)")

# %% [markdown]
# Each plane costs the phase-plane order a fixed amount of setup (a copy into scratch, slice
# and loop starts) on top of the arithmetic; the table shows how the cost per multiply-add of
# that order changes as a plane goes from $32 \times 32 = 1024$ pixels to $2 \times 2 = 4$,
# while the channels-last order, whose inner loop runs over the channels whatever the map
# size, keeps its vector loops long. Where the two columns cross is where the tuned threshold
# should sit on this machine; `minimobile/tuning.py` records where it was measured.

# %% [markdown]
# ## One more step: nine taps in a register
#
# The $K^2$ passes of the phase-plane order each load and store a whole accumulator row to
# add one tap: for a 3x3 filter, nine loads and nine stores of the accumulator per output
# pixel, besides the nine loads of the input. Summing a pixel's nine taps in a register
# instead, and storing it once, leaves the nine input loads and one store. The sum runs in
# the same order from the same first product, so the result is the same bits
# (`tests/test_kernels.py` checks it). Whether the loop is vectorised is up to LLVM, and two
# details decide it (`kernels/depthwise.py`, `_taps_3x3`): the nine reads go through one
# slice, and their offsets are unsigned. The kernel keeps the passes behind a flag,
# `taps_in_registers=False`, so both can be timed side by side:

# %%
N, C, size = (8, 32, 32) if QUICK else (128, 96, 32)
x = rng.standard_normal((N, C, size, size)).astype(np.float32)
w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
out = np.empty_like(x)
ntasks = min(N * C, tuning.DEPTHWISE_TASKS_PER_THREAD * mm.get_num_threads())
plain = depthwise.no_prologue(x)
ways = {}
for registers in (False, True):
    ways[registers] = ex.time_callable(lambda: depthwise.depthwise_conv2d_forward_phase_planes(
        out, x, w, 1, 1, ntasks, *plain, registers), repeats, warmup=2)
    print(f"taps_in_registers={registers!s:<5}  {1e3 * ways[registers].median:7.2f} ms "
          f"for a {N}x{C}x{size}x{size} forward")
print(f"registers / passes: {ways[True].median / ways[False].median:.2f}")

# %% [markdown]
# On the AMD EPYC where this was measured (2026-11-30, docs/PERFORMANCE.md), the registers
# took 0.7-0.85 of the passes' time at stride 1 and about 0.9 at stride 2, where copying into
# the phases is a larger share.
#
# The backward gathers each input pixel's gradient the same way at stride 1. Its weight
# gradient is a different kind of loop: for each tap k, dw[k] is a *sum* over every pixel of
# every image, `total += g[q] * x[q + t_k]`. Written that way, LLVM will not vectorise it:
# a vectorised sum adds eight partial sums side by side and combines them at the end, a
# different order of additions, and floating-point addition is not associative, so the
# compiler may not reorder it unless told it may. The passes therefore kept one running sum
# per tap *and position* (a "lane"), `lanes[k, q] += g[q] * x[q + t_k]`: no reordering, fully
# vectorised, but a load and a store of a lane per tap and pixel, and a block of channels'
# lanes outgrows the L1 cache. The registers way compiles one small function,
# `_tap_sums_3x3`, with Numba's `fastmath={"reassoc"}` (reordering allowed, nothing else of
# fastmath): the nine sums of a plane stay in vector registers and are added into float64
# totals per channel. The order is still fixed by the compiled code, so a run gives the same
# bits every time and for any thread count; it is not the passes' order, so dw agrees with
# the passes to float32's rounding, not bit for bit (the test checks exactly that).


# %%
dout = rng.standard_normal(out.shape).astype(np.float32)
dx, dw = np.empty_like(x), np.empty_like(w)
block = max(1, min(tuning.DEPTHWISE_MAX_CHANNEL_BLOCK,
                   C // (tuning.DEPTHWISE_BLOCKS_PER_THREAD * mm.get_num_threads())))
backward_ways, weight_grads = {}, {}
for registers in (False, True):
    backward_ways[registers] = ex.time_callable(
        lambda: depthwise.depthwise_conv2d_backward_phase_planes(dx, dw, dout, x, w, 1, 1, block,
                                                                 *plain, registers),
        repeats, warmup=2)
    weight_grads[registers] = dw.copy()
    print(f"taps_in_registers={registers!s:<5}  {1e3 * backward_ways[registers].median:7.2f} ms "
          f"for the backward")
print(f"registers / passes: {backward_ways[True].median / backward_ways[False].median:.2f}")
difference = np.abs(weight_grads[True] - weight_grads[False]).max()
print(f"largest difference in dw, relative to its largest value: "
      f"{difference / np.abs(weight_grads[False]).max():.1e}")

# %% [markdown]
# `benchmarks/bench_depthwise_taps.py` times both ways in pairs on every phase-plane layer of
# V1 and V2: on the AMD EPYC the backward took 0.53-0.70 of the passes' time at stride 1 and
# about 0.9 at stride 2 (2026-11-30). Batch norm's backward sums (`_row_sums` in
# `kernels/batchnorm.py`) and the pooling of squeeze-excite took the same step.
#
# The channels-last order took the forward's step too: for each output pixel, the nine taps of a
# vector of channels are summed in a register and stored once (`_taps_3x3_channels_last`),
# and `depthwise_conv2d_forward_channels_last` keeps its passes behind the same flag. One
# more detail mattered there. With 1024 channels, every row of the scratch image and of the
# weights by tap lies a multiple of 4 KB from the next, so the nine rows read together share
# their low twelve address bits, and the registers ran slower than the passes until the rows
# were padded by a cache line (`CHANNELS_LAST_ROW_PAD`). The likely cause is "4K aliasing":
# the CPU compares those bits alone to decide whether a load may depend on an earlier store,
# and holds back loads that look as if they might. The benchmark above times the channels-last
# forward both ways too, on the small-map layers of V1 and V2.
