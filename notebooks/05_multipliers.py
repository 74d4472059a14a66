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
# # 05 · Width and resolution multipliers: multiply-adds, parameters, latency and accuracy
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

# %% [markdown]
# ## Accuracy: the other half of Tables 6 and 7
#
# Everything above is cost. The paper's point is the trade: Table 6 gives up 20 points of
# ImageNet accuracy for a network 14 times cheaper (width 0.25), Table 7 only 6 points for 3
# times cheaper (resolution 128), and its Figure 4 plots all 16 combinations of the two: accuracy
# falls about linearly with the logarithm of the multiply-adds, with a jump down at width 0.25. To
# see the same trade on CIFAR-10, each width and resolution has to be *trained*: a grid of
# training runs, which `minimobile sweep` runs as Ray Tune trials (`docs/SWEEPS.md`). The grid
# is `results/sweep-v1/grid.toml`: V1 at widths 1.0 to 0.25 on 32×32, and V1 1.0 on CIFAR's
# images resized to 24, 20 and 16, each trained for the same 4 epochs. This cell reads its
# `results.csv`, committed under `results/sweep-v1/` with the command that made it, and sets
# each trial beside the paper's row in the same place. Without that file it shows nothing.

# %%
from pathlib import Path

from minimobile import sweep

SWEEP = Path("..", "results", "sweep-v1")
sweep_csv = SWEEP / sweep.RESULTS_CSV
swept = sweep.read_results(sweep_csv) if sweep_csv.is_file() else []
if not swept:
    print(f"No sweep results at {sweep_csv} yet, so no accuracy is shown. To make them (about 50 "
          "minutes on two cores, nothing else running; results/sweep-v1/README.md):\n"
          "  pip install -e \".[sweep]\"\n"
          "  minimobile sweep results/sweep-v1/grid.toml --data PATH/TO/cifar-10-batches-py "
          "--out runs/sweep-v1 --num-cpus 2 --cpus-per-trial 1\n"
          "  cp runs/sweep-v1/results.csv runs/sweep-v1/accuracy_vs_macs.png results/sweep-v1/")
else:
    epochs = sorted({r["epochs"] for r in swept})
    print(f"{len(swept)} trials from {sweep_csv}, {'/'.join(map(str, epochs))} "
          f"epoch{'s' if epochs != [1] else ''} each, "
          f"seed{'s' if len({r['seed'] for r in swept}) > 1 else ''} "
          f"{', '.join(str(s) for s in sorted({r['seed'] for r in swept}))}; "
          f"not done: {[r['folder'] for r in swept if r['status'] != 'done'] or 'none'}")

    def cifar_cells(row, full):
        if row is None:
            return f"{'(not in the sweep)':>33}"
        drop = "" if full is None else f"{100 * (row['accuracy'] - full['accuracy']):+.1f}"
        return (f"{100 * row['accuracy']:>7.2f}{drop:>7}{row['macs'] / 1e6:>8.2f}"
                f"{row['params'] / 1e6:>8.2f}{row['resolution']:>5}")

    header = (f"{'top-1':>7}{'vs 1.0':>7}{'M MACs':>8}{'M par':>8} | {'acc %':>7}{'vs 1.0':>7}"
              f"{'M MACs':>8}{'M par':>8}{'res':>5}")
    for table, title, name in (("width", "Table 6, width multiplier", "width"),
                               ("resolution", "Table 7, resolution multiplier (width 1.0)", "res")):
        pairs = ex.paper_beside_sweep(swept, table)
        full_paper, full_mine = pairs[0].paper, pairs[0].row
        print(f"\n{title}: the paper on ImageNet (224) | this sweep on CIFAR-10")
        print(f"{name:>6}" + header)
        for p in pairs:
            paper = (f"{'':>30}" if p.paper is None else
                     f"{p.paper[0]:>7.1f}{p.paper[0] - full_paper[0]:>+7.1f}{p.paper[1]:>8}"
                     f"{p.paper[2]:>8}")
            print(f"{'' if p.setting is None else f'{p.setting:g}':>6}{paper} | "
                  f"{cifar_cells(p.row, full_mine)}")
    others = [r for r in swept if not any(r is p.row for t in ("width", "resolution")
                                          for p in ex.paper_beside_sweep(swept, t))]
    for r in others:
        print(f"\noff both tables: {r['network']} {r['width']:g} at {r['resolution']}x"
              f"{r['resolution']}: {100 * r['accuracy']:.2f} %, {r['macs'] / 1e6:.2f} M MACs")
    print("\n'vs 1.0': points against the full network (width 1.0 at full resolution).")
    threads = sorted({r["threads"] for r in swept if r["threads"] is not None})
    print(f"seconds per epoch (width/resolution; Numba threads per trial: "
          f"{'/'.join(map(str, threads)) or 'not recorded'}):",
          ", ".join(f"{r['width']:g}/{r['resolution']} {r['seconds_per_epoch']:.0f} s"
                    for r in swept if r["seconds_per_epoch"] is not None))

# %%
if swept:
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for r in swept:
        if r["accuracy"] is None:
            continue
        marker = "o" if r["resolution"] == 32 else "s"
        axes[0].plot(r["macs"] / 1e6, 100 * r["accuracy"], marker, color="C0" if
                     r["resolution"] == 32 else "C1")
        axes[0].annotate(f"{r['width']:g}/{r['resolution']}",
                         (r["macs"] / 1e6, 100 * r["accuracy"]), textcoords="offset points",
                         xytext=(4, 4), fontsize=8)
    for table, color, label in ((ex.V1_TABLE_6, "C0", "width (Table 6)"),
                                (ex.V1_TABLE_7, "C1", "resolution (Table 7)")):
        points = sorted((macs, acc, setting) for setting, (acc, macs, _) in table.items())
        axes[1].plot([p[0] for p in points], [p[1] for p in points], "o-", color=color,
                     label=label)
        for macs, acc, setting in points:
            axes[1].annotate(f"{setting:g}", (macs, acc), textcoords="offset points",
                             xytext=(4, -10), fontsize=8)
    axes[0].plot([], [], "o", color="C0", label="width, at 32x32")
    axes[0].plot([], [], "s", color="C1", label="smaller resolution")
    axes[0].set(xscale="log", xlabel="multiply-adds per image (M, log scale)",
                ylabel="CIFAR-10 test accuracy (%)",
                title=f"this sweep: V1 on CIFAR-10, {'/'.join(map(str, epochs))} "
                      f"epoch{'s' if epochs != [1] else ''}\n"
                      "(labels: width/resolution)")
    axes[1].set(xscale="log", xlabel="multiply-adds per image (M, log scale)",
                ylabel="ImageNet top-1 accuracy (%)",
                title="the V1 paper: ImageNet, full training\n(Tables 6 and 7, as in its Figure 4)")
    plain = plt.FuncFormatter(lambda value, _: f"{value:g}")  # 20, not 2 x 10^1
    for ax in axes:
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    plt.show()
else:
    print("no plot without sweep results (see above)")

# %% [markdown]
# What to look for, once the sweep is there: does accuracy fall with the logarithm of the
# multiply-adds, as on the paper's Figure 4, and which knob costs less accuracy for the same
# saving? The sweep has two pairs of equal cost to answer the second: V1 1.0 at 16×16 against
# V1 0.5 at 32×32 (11.6 M and 12.2 M multiply-adds), and V1 0.5 at 16×16 against V1 0.25 at
# 32×32 (3.05 M and 3.33 M). On the right, the paper's two curves answer the same question on
# ImageNet. A CIFAR-10 sweep need not agree with them, and here is why:
#
# - **The data.** CIFAR-10 has 10 classes and 32×32 images; ImageNet 1000 classes at 224×224.
#   Ten classes are easier, so every accuracy is higher and the gaps between networks smaller.
# - **Resolution by resizing.** The paper feeds the network larger or smaller *photographs*;
#   here CIFAR's 32×32 images are shrunk to 24, 20 or 16 pixels, which throws detail away that
#   a larger network cannot get back. Nothing here goes above 32, where the paper's 224 is.
# - **The strides.** The CIFAR variant of V1 halves its maps four times, so at 20×20 they go
#   20, 10, 5, 3, 2 and the last 512-channel stage works on 3×3 maps, as at 24×24: 20 costs
#   almost what 24 does (26.0 M against 28.9 M). The paper's 224/192/160/128 are multiples of
#   32, its network's total stride, so its multiply-adds follow $\rho^2$ exactly.
# - **The budget.** 4 epochs each, where the paper trained to convergence. A short budget
#   need not rank the networks as a full one would (larger networks usually gain more from
#   longer training), so read the sweep as "after 4 epochs", not as each network's best.
# - **One seed.** Each point is one run. Two runs of the same network with different seeds
#   differ by an amount this sweep does not measure, so a difference smaller than that spread
#   says nothing. Rerunning with `seeds = [0, 1, 2]` in the grid would measure it, at three
#   times the cost.
# - **Parameters are not the same trade.** Width shrinks the parameters (about $\alpha^2$);
#   resolution leaves them as they are (3.2 M at every input here, 4.2 M in Table 7). A point
#   bought with resolution keeps its memory footprint.

# %% [markdown]
# The two pairs of equal cost, read from the CSV: for each, which knob kept more accuracy.

# %%
def swept_point(width, resolution):
    return next((r for r in swept if r["network"] == "v1" and r["width"] == width
                 and r["resolution"] == resolution and r["accuracy"] is not None), None)


for narrow, low in (((0.5, 32), (1.0, 16)), ((0.25, 32), (0.5, 16))):
    a, b = swept_point(*narrow), swept_point(*low)
    if a is None or b is None:
        print(f"pair {narrow} / {low}: not in the sweep")
        continue
    winner = "width" if a["accuracy"] > b["accuracy"] else "resolution"
    print(f"width {narrow[0]:g} at {narrow[1]}: {100 * a['accuracy']:.2f} % for "
          f"{a['macs'] / 1e6:.2f} M MACs | width {low[0]:g} at {low[1]}: "
          f"{100 * b['accuracy']:.2f} % for {b['macs'] / 1e6:.2f} M MACs -> the cheaper knob "
          f"was {winner}, by {100 * abs(a['accuracy'] - b['accuracy']):.2f} points")

# %% [markdown]
# In the sweep committed on 2026-11-29 (4 epochs, seed 0), narrowing won both pairs: at the
# same cost, a narrower network on the full 32×32 images beat a wider one on shrunk images, by
# several points. On ImageNet the paper's curves sit much closer together (Figure 4: width 0.5
# at 224 and width 1.0 at 128 are within a point of each other at about the same cost). The
# likeliest reason is the second bullet above: shrinking a 32-pixel image to 16 throws away
# half of its detail in each direction, where shrinking a 224-pixel photograph to 128 keeps
# plenty. The sweep also shows the budget at work: width 0.75 ended level with width 1.0 after
# 4 epochs (the table above), where Table 6 has it 2.2 points behind after full training.
