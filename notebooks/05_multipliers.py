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
# # 05 · Width and resolution multipliers: multiply-adds, parameters and latency
#
# The V1 paper introduces two knobs (Section 3.3 and 3.4). The **width multiplier** $\alpha$
# scales every layer's channels ($C_{in} \to \alpha C_{in}$, $C_{out} \to \alpha C_{out}$; the
# paper's $M$ and $N$); the **resolution multiplier** $\rho$ scales the input image and so every
# map ($D_F \to \rho D_F$). A depthwise separable layer then costs
#
# $$D_K^2 \, \alpha C_{in} \, \rho^2 D_F^2 + \alpha C_{in} \, \alpha C_{out} \, \rho^2 D_F^2 ,$$
#
# about $\alpha^2 \rho^2$ times the original, since the pointwise term dominates. A layer's
# parameters shrink about $\alpha^2$ and do not depend on $\rho$ at all; whether a whole
# network's do depends on whether every layer is scaled (below: V2's are not).
#
# **Exercise**: [`exercises/ex05_multipliers.py`](../exercises/ex05_multipliers.py) (predict the cost of a width and resolution from the formula, then check with the counter). Check your answers with `pytest exercises -m ex05`.

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
# ## The V1 paper's Tables 6 and 7, counted
#
# minimobile rounds channels to multiples of 8 (`make_divisible`, as torchvision does); for V1's
# widths this gives exactly $\alpha$ times each channel count.

# %%
print("Table 6 (width, at 224)")
print(f"{'width':>6} {'M MACs':>9} {'paper':>6} {'M params':>9} {'paper':>6} {'MACs / alpha^2 MACs(1.0)':>25}")
base = mm.cost.profile(mm.mobilenet_v1(seed=0), (3, 224, 224))
for width, (_, paper_macs, paper_params) in ex.V1_TABLE_6.items():
    prof = mm.cost.profile(mm.mobilenet_v1(width_mult=width, seed=0), (3, 224, 224))
    print(f"{width:>6} {prof.macs / 1e6:>9.2f} {paper_macs:>6} {prof.params / 1e6:>9.2f} "
          f"{paper_params:>6} {prof.macs / (width ** 2 * base.macs):>25.3f}")
print("\nTable 7 (resolution, at width 1.0)")
print(f"{'res':>6} {'M MACs':>9} {'paper':>6} {'M params':>9} {'paper':>6} {'MACs / rho^2 MACs(224)':>25}")
for res, (_, paper_macs, paper_params) in ex.V1_TABLE_7.items():
    prof = mm.cost.profile(mm.mobilenet_v1(seed=0), (3, res, res))
    print(f"{res:>6} {prof.macs / 1e6:>9.2f} {paper_macs:>6} {prof.params / 1e6:>9.2f} "
          f"{paper_params:>6} {prof.macs / ((res / 224) ** 2 * base.macs):>25.3f}")

# %% [markdown]
# The counts agree with the paper's to within 1 M multiply-adds and 0.05 M parameters (the
# paper's rounding varies: it prints 568.74 M as 569 but 290.68 M as 290). The last column shows
# the $\alpha^2$ and $\rho^2$ rules are close but not exact: the depthwise term shrinks only as $\alpha$, and the
# classifier does not shrink with $\rho$, so small widths cost a little more than $\alpha^2$
# predicts.
#
# The $\alpha^2$ rule for parameters holds for V1, whose every layer is scaled. V2 and V3, as
# torchvision builds them and as minimobile copies, keep their last 1×1 conv (and so the
# classifier's input) at full width when $\alpha < 1$: a layer that does not shrink. Counted:

# %%
for name, build in (("v1", mm.mobilenet_v1), ("v2", mm.mobilenet_v2)):
    full = mm.cost.profile(build(seed=0), (3, 224, 224))
    small_model = build(width_mult=0.25, seed=0)
    small = mm.cost.profile(small_model, (3, 224, 224))
    fixed = sum(r.params for r in small.rows
                if r.name.startswith(("classifier", f"features.{len(small_model.features) - 1}.")))
    print(f"{name} at width 0.25: {small.params / 1e6:.2f} M of {full.params / 1e6:.2f} M parameters "
          f"({100 * small.params / full.params:.0f} %, alpha^2 = 6 %); its last block and "
          f"classifier hold {fixed / 1e6:.2f} M of them")

# %% [markdown]
# ## Latency on this CPU
#
# Multiply-adds are a proxy; what a user waits for is time. `ex.latency_sweep` builds each
# network at widths 0.25 to 1.4 (at 224×224) and at resolutions 128 to 192 (at width 1.0),
# counts its multiply-adds, and times one batch-1 inference (eval mode, `no_grad`), the median
# of several runs.

# %%
widths = [0.25, 0.5, 0.75, 1.0, 1.4]
resolutions = [128, 160, 192]  # 224 at width 1.0 is already among the widths
repeats, warmup = (1, 0) if QUICK else (7, 2)  # profile's forward already compiled the kernels
builders = {"v1": mm.mobilenet_v1, "v2": mm.mobilenet_v2,
            "v3-small": mm.mobilenet_v3_small, "v3-large": mm.mobilenet_v3_large}
rows = []
for name, build in builders.items():
    rows += ex.latency_sweep(build, name, widths, resolutions, repeats, warmup)
paper_ms = {(r[0], r[1], 224): r[4] for r in ex.V2_TABLE_4}
paper_ms.update({(r[0], r[1], r[2]): r[5] for r in ex.V3_TABLE_9})
paper_macs = {(r[0], r[1], 224): r[2] for r in ex.V2_TABLE_4}
paper_macs.update({(r[0], r[1], r[2]): r[3] for r in ex.V3_TABLE_9})
print(f"batch 1, float32, {mm.get_num_threads()} Numba threads, median of {repeats} "
      f"(after {warmup} warm-up runs), with the fastest and slowest run")
print(f"{'network':<9} {'width':>5} {'res':>4} {'M MACs':>8} {'M params':>9} {'ms':>8} {'runs':>15} "
      f"{'paper ms':>8} {'paper M MACs':>12}")
for r in rows:
    key = (r.network, r.width, r.resolution)
    paper = paper_ms.get(key)
    runs = f"{min(r.samples_ms):.2f}-{max(r.samples_ms):.2f}"
    print(f"{r.network:<9} {r.width:>5} {r.resolution:>4} {r.macs / 1e6:>8.1f} {r.params / 1e6:>9.2f} "
          f"{r.ms:>8.2f} {runs:>15} {'' if paper is None else paper:>8} "
          f"{'' if paper is None else paper_macs[key]:>12}")
print("paper ms: V2 paper Table 4 (v1 and v2), V3 paper Table 9 (v3); one large core of a Pixel 1, "
      "TF-Lite, where the paper lists that width and resolution")
differ = [(r, paper_macs[(r.network, r.width, r.resolution)]) for r in rows
          if (r.network, r.width, r.resolution) in paper_macs]
gaps = [100 * (r.macs / 1e6 - p) / p for r, p in differ]
print(f"where a paper latency is shown, minimobile's network has {min(gaps):+.0f} % to {max(gaps):+.0f} % "
      f"of the paper's multiply-adds: the papers timed networks that are not exactly these")
for name in builders:
    by_res = sorted((r for r in rows if r.network == name and r.width == 1.0), key=lambda r: r.resolution)
    for a, b in zip(by_res, by_res[1:]):
        if b.ms < a.ms and repeats > 1:
            overlap = max(b.samples_ms) >= min(a.samples_ms)
            print(f"{name}: {b.resolution} px measured faster than {a.resolution} px "
                  f"({b.ms:.2f} < {a.ms:.2f} ms); the runs {'overlap: noise' if overlap else 'do not overlap'}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 5))
for name in builders:
    mine = [r for r in rows if r.network == name]
    axes[0].plot([r.macs / 1e6 for r in mine], [r.ms for r in mine], "o", label=name)
    paper = sorted((macs, ms) for (net, _, _), ms, macs in
                   [((r[0], r[1], 224), r[4], r[2]) for r in ex.V2_TABLE_4]
                   + [((r[0], r[1], r[2]), r[5], r[3]) for r in ex.V3_TABLE_9] if net == name)
    if paper:
        axes[1].plot(*zip(*paper), "o", label=name)
axes[0].set(xscale="log", yscale="log", xlabel="multiply-adds (M)", ylabel="ms per image",
            title="minimobile on this CPU (batch 1)")
axes[1].set(xscale="log", yscale="log", xlabel="multiply-adds (M)", ylabel="ms per image",
            title="papers: Pixel 1, one large core, TF-Lite\n(V2 Table 4; V3 Table 9)")
for ax in axes:
    ax.legend()
plt.show()

# %% [markdown]
# Read the two panels side by side. Latency is expected to grow with multiply-adds; the question
# is whether the four networks fall on one line. The V1 paper prints no latency; the V2 paper's
# Table 4 gives V1's beside V2's. The papers timed TF-Lite on a phone core, so compare shapes
# and ratios between networks, not milliseconds.
#
# ## Overhead against work
#
# Dividing time by multiply-adds mixes two things: work that grows with the multiply-adds,
# and a cost every inference pays whatever its size (each layer's Python dispatch, Numba's
# threads waking up, small arrays allocated), which grows with the number of *layers*, not
# their size. A straight line per network, $\text{ms} = a + b \cdot \text{MACs}$, fitted over
# its widths and resolutions, separates the two (`ex.fit_overhead_and_work`): $a$ is the
# fixed part, $b$ the time per million multiply-adds.

# %%
print(f"{'network':<9} {'layers':>6} {'a: fixed ms':>11} {'b: ms per M MACs':>16} {'worst residual ms':>17}")
for name in builders:
    mine = [r for r in rows if r.network == name]
    a, b, worst = ex.fit_overhead_and_work([r.macs for r in mine], [r.ms for r in mine])
    layers = sum(1 for r in mm.cost.profile(builders[name](seed=0), (3, 64, 64)).rows)
    print(f"{name:<9} {layers:>6} {a:>11.2f} {b:>16.4f} {worst:>17.2f}")

# %% [markdown]
# A large $a$ beside a small worst residual says the line fits and the fixed cost is real: it is
# per-inference overhead, spread over the layers, not memory-bound arithmetic (which would grow
# with the maps and so sit in $b$). Networks with more layers are expected to pay more of it.
# The ratio the papers' tables invite, time per multiply-add at width 1.0, mixes both:

# %%
print("microseconds per million multiply-adds at width 1.0, 224x224 (lower is more efficient):")
for name in builders:
    r = next(r for r in rows if (r.network, r.width, r.resolution) == (name, 1.0, 224))
    paper = paper_ms.get((name, 1.0, 224))
    paper_macs = next((p[2] for p in ex.V2_TABLE_4 if p[:2] == (name, 1.0)), None) or \
        next((p[3] for p in ex.V3_TABLE_9 if p[:3] == (name, 1.0, 224)), None)
    print(f"  {name:<9} minimobile {1e3 * r.ms / (r.macs / 1e6):7.2f} us/M"
          + ("" if paper is None else f"   paper {1e3 * paper / paper_macs:7.2f} us/M"))
