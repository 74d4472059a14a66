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
# # 03 · MobileNet V2: the inverted residual and the linear bottleneck
#
# MobileNet V2 (Sandler et al. 2018, arXiv:1801.04381) keeps the depthwise convolution but wraps
# it differently. Each block **expands** a thin input with a 1×1 convolution (by the expansion
# ratio $t$, usually 6), filters it with a 3×3 depthwise convolution, and **projects** it back to
# a thin output with a 1×1 convolution that has *no activation*: the linear bottleneck. When the
# input and output have the same shape, a residual connection adds the input to the output,
# between the thin ends: the *inverted* residual (ResNet's bottleneck joins the wide ends).
#
# **Exercise**: [`exercises/ex03_mobilenet_v2.py`](../exercises/ex03_mobilenet_v2.py) (ReLU6, the inverted residual block and its backward). Check your answers with `pytest exercises -m ex03`.

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

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 5))
ex.plot_block_diagram(axes[0], [("input", 24), ("1x1 expand, BN, ReLU6", 144),
                                ("3x3 depthwise, BN, ReLU6", 144), ("1x1 project, BN (linear)", 24)],
                      skip=True, title="stride 1, C_in = C_out: with the skip")
ex.plot_block_diagram(axes[1], [("input", 24), ("1x1 expand, BN, ReLU6", 144),
                                ("3x3 depthwise stride 2, BN, ReLU6", 144),
                                ("1x1 project, BN (linear)", 32)],
                      title="stride 2 (or C_in != C_out): no skip")
fig.suptitle("V2's inverted residual, t = 6 (box widths: channels)", fontsize=10)
plt.show()

# %%
rng = np.random.default_rng(0)
block = mm.blocks.InvertedResidual(24, 24, stride=1, expand_ratio=6, rng=rng)
print(block)
prof = mm.cost.profile(block, (24, 56, 56))
print(prof.format_table())

# %% [markdown]
# The 24-channel tensors at either end are what the network carries from block to block (and
# stores for the backward pass); the 144-channel expansion exists only inside the block.
#
# **The block's cost.** The paper's Table 1 gives it for an $h \times w$ input with $d'$
# channels, expansion $t$, kernel $k$ and $d''$ output channels, at stride 1: the expansion
# costs $h w\, d' \cdot t d'$, the depthwise conv $h w \cdot t d' \cdot k^2$, the projection
# $h w \cdot t d' \cdot d''$, in all
#
# $$h \cdot w \cdot d' \cdot t \cdot (d' + k^2 + d'').$$
#
# Checked against the counter for the block above:

# %%
h, w_, d_in, t, k, d_out = 56, 56, 24, 6, 3, 24
formula = h * w_ * d_in * t * (d_in + k * k + d_out)
print(f"h w d' t (d' + k^2 + d'') = {formula:,}; counted by profile: {prof.macs:,}")
assert formula == prof.macs

# %% [markdown]
# **The network's table.** V2 is written as rows $(t, c, n, s)$: expansion factor, output
# channels, how many blocks, and the stride of the first of them (the others run at stride 1).
# minimobile keeps it as `V2_SETTING` in `minimobile/models.py`, the paper's Table 2; the input
# size of each row at 224×224 follows from the strides (the stem conv has stride 2):

# %%
from minimobile.models import V2_SETTING
size, channels = 112, 32
print(f"{'input':>14} {'t':>2} {'c':>4} {'n':>2} {'s':>2}")
for t, c, n, s in V2_SETTING:
    print(f"{f'{size}x{size}x{channels}':>14} {t:>2} {c:>4} {n:>2} {s:>2}")
    size, channels = size // s, c

# %% [markdown]
# **Memory.** Inference needs to keep in memory only what the next layer reads. The V2 paper's
# Section 5 argues that an inverted residual can be computed so that its wide expansion never
# exists whole: the expansion, depthwise conv and projection work channel by channel of the
# expanded tensor, so they can run in slices of it, adding each slice's contribution to the
# projection's output. Then the largest tensors that must exist are the thin ones *between*
# blocks. The picture below counts, for V1 and V2 at 224×224 in float32, the bytes of every
# layer's output (what `profile` records), V2's split into those between blocks and those
# inside them:

# %%
fig, ax = plt.subplots(figsize=(12, 3.5))
for name, build in (("V1", mm.mobilenet_v1), ("V2", mm.mobilenet_v2)):
    model_ = build(seed=0)
    rows_ = [r for r in mm.cost.profile(model_, (3, 224, 224)).rows if len(r.output_shape) == 3]
    mib = np.array([4 * np.prod(r.output_shape) / 2**20 for r in rows_])
    ax.plot(np.linspace(0, 1, len(mib)), mib, label=f"{name}: every layer's output", lw=1)
    if name == "V2":
        block_of = [".".join(r.name.split(".")[:2]) for r in rows_]
        ends = {b: m for b, m in zip(block_of, mib)}  # each block's last layer: its output
        between = list(ends.values())
        x_ends = [np.linspace(0, 1, len(mib))[len(block_of) - 1 - block_of[::-1].index(b)] for b in ends]
        ax.plot(x_ends, between, "o", ms=4, label="V2: tensors between blocks (block outputs)")
    print(f"{name}: largest layer output {mib.max():.2f} MiB")
print(f"V2: largest tensor between blocks {max(between):.2f} MiB")
ax.set(xlabel="depth (fraction of the network's layers)", ylabel="MiB per image (float32)",
       title="Activation memory per layer at 224x224", yscale="log")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# The printed maxima are the memory argument in numbers: V2's largest layer outputs are
# expansions that, computed in slices as Section 5 describes, need never exist whole, while
# the tensors it must keep between blocks are smaller than V1's largest. (minimobile computes
# each expansion whole, for simplicity and for the backward pass, which needs it anyway.)
#
# ## Why the projection must be linear: the V2 paper's Figure 1
#
# The paper's argument: the information a layer carries lies on a low-dimensional manifold
# inside its channels. Figure 1 embeds a 2-D spiral into $n$ dimensions with a random matrix $T$,
# applies ReLU, and projects back with $T^{-1}$ (the pseudo-inverse for $n > 2$). For small $n$
# the ReLU destroys part of the spiral; for $n = 15$ or $30$ the shape survives.
#
# The reason is exact: from $y = \mathrm{ReLU}(Tx)$ the point $x$ can be recovered whenever the
# rows of $T$ that $x$ activates ($T_i x > 0$) still span the plane, because those coordinates
# are linear in $x$. `ex.relu_recoverable` tests that for every point; points where it fails are
# drawn in red below.
#
# Two different maps back are drawn. The top row is the paper's Figure 1,
# $T^{+}\,\mathrm{ReLU}(Tx)$ (`ex.relu_roundtrip`): it applies the pseudo-inverse to the
# ReLU's output as if its zeros were data, so even where every point is recoverable the
# picture is distorted. The bottom row is the recovery the percentage is about
# (`ex.relu_recover`): each point solved from its active coordinates alone, exact wherever it
# exists.

# %%
points = ex.spiral(1000 if not QUICK else 300)
dims = [2, 3, 5, 15, 30]
rng = np.random.default_rng(0)
fig, axes = plt.subplots(2, len(dims) + 1, figsize=(3 * (len(dims) + 1), 6))
for ax in axes[:, 0]:
    ax.scatter(*points.T, s=2, c=np.arange(len(points)), cmap="viridis")
    ax.set_title("input spiral")
for col, n in enumerate(dims, start=1):
    T = ex.random_embedding(n, rng)
    ok = ex.relu_recoverable(points, T)
    back = ex.relu_roundtrip(points, T)
    recovered = ex.relu_recover(points, T)
    top, bottom = axes[0, col], axes[1, col]
    top.scatter(*back[ok].T, s=2, c=np.arange(len(points))[ok], cmap="viridis")
    top.scatter(*back[~ok].T, s=2, c="red")
    top.set_title(f"n = {n}: T+ ReLU(Tx)\nerror {ex.roundtrip_error(points, back):.2f}", fontsize=9)
    bottom.scatter(*recovered[ok].T, s=2, c=np.arange(len(points))[ok], cmap="viridis")
    bottom.set_title(f"exact recovery: {100 * ok.mean():.0f} % of points\nerror on them "
                     f"{ex.roundtrip_error(points[ok], recovered[ok]) if ok.any() else float('nan'):.0e}",
                     fontsize=9)
for ax in axes.flat:
    ax.set_aspect("equal")
    ax.set_xticks([]); ax.set_yticks([])
plt.show()

# %%
seeds = 5 if QUICK else 50
print(f"share of the spiral's points recoverable after ReLU, mean over {seeds} random T:")
for n in dims:
    kept = [ex.relu_recoverable(points, ex.random_embedding(n, np.random.default_rng(s))).mean()
            for s in range(seeds)]
    print(f"  n = {n:>2}: {100 * np.mean(kept):5.1f} %")
T = ex.random_embedding(2, np.random.default_rng(0))
print("without ReLU (a linear map), n = 2: round-trip error",
      ex.roundtrip_error(points, ex.relu_roundtrip(points, T, relu=False)))

# %% [markdown]
# So a ReLU is safe in the *wide* part of the block (after the expansion, where the manifold
# occupies a small part of many channels), and destroys information in the *narrow* part. V2
# therefore applies ReLU6 after the expansion and after the depthwise conv, and none after the
# projection to the bottleneck: in minimobile, `InvertedResidual.conv` ends with a
# `PointwiseConv2d` and a `BatchNorm2d`, and nothing after them.
#
# ## The linear bottleneck, measured: a small ablation
#
# The spiral is an argument, not a measurement of accuracy. The paper's ablation (Sandler et
# al. 2018, Section 6.4 and Figure 6a) trains V2 on ImageNet with and without a ReLU6 after the
# projection and reports higher accuracy for the linear bottleneck, although the non-linear
# variant can represent everything the linear one can (it need only scale and shift its
# activations into ReLU6's linear range): what the linear bottleneck helps is training, not
# expressiveness. That gap was measured with full ImageNet runs. Here is the same comparison at
# a size this machine trains in about four minutes: V2 at width 0.25 (the CIFAR variant), 200
# steps of 64 images drawn from the first 6,400 training images (two epochs of them; the
# library's defaults otherwise: SGD with Nesterov momentum, cosine learning rate after a
# quarter-epoch warm-up, label smoothing, crops and flips), tested on the first 2,000 test
# images.
#
# The two variants differ by the block alone: `mm.blocks.NonlinearBottleneck` is the library's
# `InvertedResidual` with a ReLU6 appended after the projection's batch norm, passed to
# `mm.mobilenet_v2` as `block=`. The ReLU6 has no parameters, so with the same seed both start
# from the same weights and see the same batches: each seed is a paired comparison, and three
# seeds show how far the result moves with the seed alone. (Quick mode trains a few steps on a
# tiny random stand-in for CIFAR-10, so its numbers mean nothing.)

# %%
import tempfile
from pathlib import Path

VARIANTS = {"linear (V2)": mm.blocks.InvertedResidual,
            "ReLU6 after projection": mm.blocks.NonlinearBottleneck}
SEEDS = (0, 1, 2)
WIDTH, EPOCHS, BATCH, TRAIN_IMAGES, TEST_IMAGES = 0.25, 2, 64, 6400, 2000
if QUICK:
    SEEDS, EPOCHS, BATCH, TRAIN_IMAGES, TEST_IMAGES = (0, 1), 1, 32, None, None
    fake_root = tempfile.mkdtemp()
    mm.data.write_fake_cifar10(fake_root, n_train_per_batch=20, n_test=40)
    data = mm.data.load_cifar10(fake_root, download=False)
else:
    data = mm.data.load_cifar10()  # $MINIMOBILE_DATA, else ~/.cache/minimobile
runs_root = Path(tempfile.mkdtemp())  # fit writes checkpoints; these are thrown away

ablation = {label: [] for label in VARIANTS}  # one fit history per seed
for seed in SEEDS:
    for label, block in VARIANTS.items():
        config = mm.train.TrainConfig(
            model="v2", width=WIDTH, epochs=EPOCHS, batch_size=BATCH, warmup_epochs=0.25,
            limit_train=TRAIN_IMAGES, limit_test=TEST_IMAGES, eval_every=EPOCHS, seed=seed,
            out=str(runs_root / f"{block.__name__}-seed{seed}"))
        model = mm.mobilenet_v2(width_mult=WIDTH, cifar=True, seed=seed, block=block)
        history = mm.train.fit(config, model=model, data=data, progress=False, log=False)
        ablation[label].append(history[-1])
        print(f"seed {seed}  {label:<23} test accuracy {100 * history[-1]['test_acc']:5.2f} %   "
              f"last epoch's training loss {history[-1]['train_loss']:.3f}   "
              f"{sum(h['epoch_seconds'] for h in history):.0f} s")

# %%
acc = {label: 100 * np.array([h["test_acc"] for h in runs]) for label, runs in ablation.items()}
linear, nonlinear = acc.values()
diff = linear - nonlinear  # seed by seed: same start, same batches
spread = max(np.ptp(linear), np.ptp(nonlinear))  # largest seed-to-seed range of a variant
for label, a in acc.items():
    print(f"{label:<23} mean {a.mean():5.2f} %   seeds {a.min():.2f} to {a.max():.2f} %")
print(f"linear minus ReLU6, seed by seed: {', '.join(f'{d:+.2f}' for d in diff)} points; "
      f"mean {diff.mean():+.2f}")
# Each seed trains both variants from the same start on the same batches, so the paired
# difference is what to judge. If the variants were equally good, each seed would favour
# either one with probability 1/2, and all seeds would agree by chance 2 x (1/2)^n of the time.
wins, losses = int(np.sum(diff > 0)), int(np.sum(diff < 0))
same_sign = len(diff) in (wins, losses)  # a tie is no evidence either way
by_chance = 2 * 0.5 ** len(diff)
print(f"Paired, seed by seed: the linear bottleneck is ahead at {wins} of {len(diff)} seeds, by "
      f"{diff.min():+.2f} to {diff.max():+.2f} points; each variant's own seed-to-seed range is "
      f"up to {spread:.2f} points.")
if same_sign:
    print(f"Every seed favours the {'linear' if wins else 'ReLU6'} bottleneck; equal variants "
          f"would do that {by_chance:.0%} of the time, so with {len(diff)} seeds this is a hint, "
          f"not proof. More seeds would settle it.")
else:
    print("The seeds disagree on which is better: at this budget the run cannot tell the two "
          "apart.")

fig, ax = plt.subplots(figsize=(5, 3.5))
for k, seed in enumerate(SEEDS):
    ax.plot([0, 1], [linear[k], nonlinear[k]], "o-", color=f"C{k}", label=f"seed {seed}")
ax.axhline(10, color="gray", ls=":", lw=1, label="chance (10 %)")
ax.set_xticks([0, 1], list(acc))
ax.set_xlim(-0.4, 1.4)
ax.set_ylabel("test accuracy (%)")
ax.set_title(f"V2 {WIDTH:g}, {EPOCHS} epochs of {TRAIN_IMAGES or len(data.x_train)} images",
             fontsize=10)
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# How to read it: a line per seed joins the two variants trained from the same start. Lines
# that slope the same way at every seed are a hint that the difference is real; lines that
# cross are no evidence either way; the printed verdict says which case this run is. Either way, 200
# steps on 32×32 images at width 0.25 are not the paper's experiment (full-width networks
# trained to the end on ImageNet): this run can show a gap at its own budget, or show that its
# budget is too small to see one, but it cannot confirm or refute the paper's.

# %% [markdown]
# ## ReLU6 and its derivative
#
# V2's activation is $\mathrm{ReLU6}(x) = \min(\max(x, 0), 6)$ (the paper keeps the cap at 6 for
# robustness in low-precision arithmetic). Its derivative is 1 on $(0, 6)$ and 0 outside:
#
# $$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y}\cdot
# \begin{cases} 1 & 0 < x < 6 \\ 0 & \text{otherwise.}\end{cases}$$
#
# At the two kinks, $x = 0$ and $x = 6$, the derivative does not exist; any value between the
# one-sided slopes (0 and 1) is a valid subgradient. minimobile takes PyTorch's choice, **0 at
# both kinks** (the open interval), so that gradients agree with PyTorch bit for bit. The
# readable version (the loops rung of `minimobile/kernels/elementwise.py`, on flattened
# arrays), then the function and derivative plotted from the op on that rung, with the values
# taken at the kinks marked:

# %%
ex.show_source(mm.kernels.elementwise.relu6_forward_loops)
ex.show_source(mm.kernels.elementwise.relu6_backward_loops)
x = np.linspace(-2, 8, 1001)
kinks = np.array([0.0, 6.0])
with mm.kernels.use("loops"):
    y, cache = mm.ops.relu6_forward(x)
    slope = mm.ops.relu6_backward(np.ones_like(x), cache)
    at_kinks = mm.ops.relu6_backward(np.ones(2), mm.ops.relu6_forward(kinks)[1])
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(x, y)
axes[0].set_title("ReLU6")
axes[1].plot(x, slope, ".", ms=1)
axes[1].plot(kinks, at_kinks, "o", mfc="white", color="C3", label="value at the kinks")
axes[1].set_title("its derivative (minimobile's convention)")
axes[1].legend(fontsize=8)
plt.show()
print("derivative at x = 0 and x = 6:", at_kinks)

# %% [markdown]
# A central difference at a kink straddles it and measures the average of the two slopes
# (1/2 here), matching neither convention; the gradient check therefore draws inputs away
# from 0 and 6, as the tests do:

# %%
rng = np.random.default_rng(0)
x = rng.uniform(-2, 8, (3, 4, 5))
x[np.abs(x) < 0.1] += 0.2  # keep every probe at least 0.1 from a kink
x[np.abs(x - 6) < 0.1] += 0.2
dout = rng.standard_normal(x.shape)
with mm.kernels.use("loops"):
    dx = mm.ops.relu6_backward(dout, mm.ops.relu6_forward(x)[1])
    errors = ex.gradient_errors(lambda: mm.ops.relu6_forward(x)[0], {"x": (x, dx)}, dout)
print(f"ReLU6 gradient check: relative error {errors['x']:.1e}")
h = 1e-6
at_kink = (mm.ops.relu6_forward(np.array([h]))[0] - mm.ops.relu6_forward(np.array([-h]))[0]) / (2 * h)
print(f"a central difference at x = 0 itself gives {at_kink[0]:.3f}")
assert errors["x"] < 1e-7

# %% [markdown]
# **Exercise**: `relu6_forward` / `relu6_backward`, part 1 of
# [`exercises/ex03_mobilenet_v2.py`](../exercises/ex03_mobilenet_v2.py).
#
# ## The residual and its gradient
#
# With `use_res_connect` (stride 1, same channels) the block computes $y = x + F(x)$. The
# gradient reaches $x$ along both paths and the two add:
#
# $$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} + \Big(\frac{\partial F}{\partial x}\Big)^{\!\top} \frac{\partial L}{\partial y}.$$
#
# In code (`minimobile/blocks.py`), the backward runs the branch's children in reverse, then
# adds the skip's share, which is `dout` itself because the identity's Jacobian is the identity.
# Checked directly, then against central differences:

# %%
ex.show_source(mm.blocks.InvertedResidual.backward)
rng = np.random.default_rng(1)
block = mm.blocks.InvertedResidual(16, 16, stride=1, expand_ratio=6, rng=rng, dtype=np.float64)
mm.gradcheck.randomize_batchnorm(block, rng)
x = rng.standard_normal((4, 16, 6, 6))
dout = rng.standard_normal((4, 16, 6, 6))
print("use_res_connect:", block.use_res_connect)
block.forward(x)
dx = block.backward(dout)
block.forward(x)
d_branch = block.conv.backward(dout)  # the gradient through F alone
print("max |dx - (dout + d_branch)| =", np.abs(dx - (dout + d_branch)).max())
assert np.allclose(dx, dout + d_branch)

count = 10 if QUICK else 40
for b in (block, mm.gradcheck.randomize_batchnorm(
        mm.blocks.InvertedResidual(16, 24, stride=2, expand_ratio=6, rng=rng, dtype=np.float64), rng)):
    errors = ex.gradient_check_module(b, x, rng, count=count)
    print(f"stride {b.stride}, use_res_connect={b.use_res_connect}: largest relative error "
          f"{max(errors.values()):.2e} over {len(errors)} arrays (input and {len(errors) - 1} parameters)")
    assert max(errors.values()) < 1e-6

# %% [markdown]
# ## The whole network
#
# V2 stacks 17 such blocks (its table is `V2_SETTING` in `minimobile/models.py`). Its cost at
# 224×224 beside the paper's Table 4:

# %%
prof = mm.cost.profile(mm.mobilenet_v2(seed=0), (3, 224, 224))
paper = next(row for row in ex.V2_TABLE_4 if row[:2] == ("v2", 1.0))
print(f"minimobile: {prof.macs / 1e6:.2f} M multiply-adds, {prof.params / 1e6:.2f} M parameters")
print(f"V2 paper, Table 4: {paper[2]} M multiply-adds, {paper[3]} M parameters")
