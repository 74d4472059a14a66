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
# # 02 · MobileNet V1
#
# MobileNet V1 (Howard et al. 2017, Table 1) is a 3×3 stem convolution followed by thirteen
# depthwise separable blocks (3×3 depthwise + batch norm + ReLU, then 1×1 pointwise + batch norm +
# ReLU), global average pooling and one fully connected layer. This notebook builds it, reads its
# per-layer cost table, finds where its multiply-adds and parameters go, and takes one block
# apart: forward, backward, and a gradient check.
#
# **Exercise**: [`exercises/ex02_mobilenet_v1.py`](../exercises/ex02_mobilenet_v1.py) (batch norm's forward, backward and running statistics, then the depthwise separable block and V1 from its table). Check your answers with `pytest exercises -m ex02`.

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
# ## Building it
#
# `mm.mobilenet_v1()` reads the architecture table `V1_SETTING` at the top of
# `minimobile/models.py`: one row `(out_channels, stride)` per block.

# %%
from minimobile.models import V1_SETTING
print("blocks (out_channels, stride):", V1_SETTING)
model = mm.mobilenet_v1(seed=0)  # ImageNet: 1000 classes, 224x224 inputs
print(model.features[1])  # the first depthwise separable block

# %% [markdown]
# ## The cost, block by block
#
# `mm.cost.profile` runs one 224×224 image through the network and records every leaf layer's
# output shape, parameters and multiply-adds: 85 rows for V1 (`minimobile summary v1` prints
# them all). Summed per block, with each block's depthwise and pointwise parts apart, they
# read more easily:

# %%
prof = mm.cost.profile(model, (3, 224, 224))
modules = dict(model.named_modules())
blocks = ["features.0"] + [f"features.{i}" for i in range(1, 14)] + ["classifier"]
names = ["stem"] + [str(i) for i in range(1, 14)] + ["fc"]
macs = {b: {"dw": 0, "pw": 0, "other": 0} for b in blocks}
params = {b: {"dw": 0, "pw": 0, "other": 0} for b in blocks}
shape = {}
for row in prof.rows:
    if not row.name.startswith(tuple(b + "." for b in blocks)):
        continue  # the pooling and flatten layers, which cost nothing
    block = next(b for b in blocks if row.name.startswith(b + "."))
    label = ex.layer_type_label(modules[row.name])
    part = "dw" if label == "Conv DW 3x3" else "pw" if label == "Conv 1x1" else "other"
    macs[block][part] += row.macs
    params[block][part] += row.params
    shape[block] = row.output_shape  # the block's last layer: its output
strides = [2] + [s for _, s in V1_SETTING] + ["-"]
print(f"{'block':<6} {'stride':>6} {'output':>15} {'dw MACs':>9} {'pw MACs':>9} {'other':>8} {'params':>10}")
for name, b, stride in zip(names, blocks, strides):
    m = macs[b]
    print(f"{name:<6} {stride:>6} {str(shape[b]):>15} {m['dw'] / 1e6:>8.2f}M {m['pw'] / 1e6:>8.2f}M "
          f"{m['other'] / 1e6:>7.2f}M {sum(params[b].values()):>10,}")
print(f"{'total':<6} {'':>6} {'':>15} {prof.macs / 1e6:>27.2f}M {prof.params:>10,}")
_, paper_macs, paper_params = ex.V1_TABLE_6[1.0]
print(f"\npaper (V1 Table 6, 1.0 MobileNet-224): {paper_macs} M multiply-adds, {paper_params} M parameters")

# %% [markdown]
# **The last block's stride.** The paper's Table 1 prints "s2" for the last depthwise layer,
# yet lists its input as 7×7 and its output feeding a 7×7 average pool. Which reading gives the
# paper's 569 M multiply-adds? Swap the last block for a stride-2 one and count again:

# %%
last = model.features[13]
at_s1 = mm.cost.profile(last, (1024, 7, 7)).macs
at_s2 = mm.cost.profile(mm.blocks.DepthwiseSeparable(1024, 1024, stride=2, rng=np.random.default_rng(0)),
                        (1024, 7, 7)).macs
print(f"last block at stride 1: {at_s1 / 1e6:.2f} M; at stride 2: {at_s2 / 1e6:.2f} M")
print(f"whole network: {prof.macs / 1e6:.2f} M with stride 1, "
      f"{(prof.macs - at_s1 + at_s2) / 1e6:.2f} M with stride 2; the paper prints {paper_macs} M")

# %% [markdown]
# Only stride 1 matches, so minimobile's table (`V1_SETTING` in `minimobile/models.py`) runs the
# last block at stride 1: the "s2" is a misprint.
#
# ## Where the multiply-adds and the parameters go
#
# The same sums as bars. The early blocks work on large maps with few channels, the late ones
# on small maps with many channels. A depthwise conv's multiply-adds grow with channels × map
# area ($D_K^2 C H W$), but a pointwise conv's grow with *input channels × output channels* ×
# map area ($C_{in} C_{out} H W$), while its parameters grow with $C_{in} C_{out}$ alone. So as
# the map shrinks by 4 and the channels double, a pointwise conv's multiply-adds stay about
# constant while its parameters grow fourfold: the two end up in different places.

# %%
fig, axes = plt.subplots(1, 2, figsize=(13, 4))
names = ["stem"] + [str(i) for i in range(1, 14)] + ["fc"]
for ax, table, unit, title in ((axes[0], macs, 1e6, "multiply-adds (M)"),
                               (axes[1], params, 1e6, "parameters (M)")):
    bottom = np.zeros(len(blocks))
    for part, label in (("dw", "depthwise 3x3"), ("pw", "pointwise 1x1"), ("other", "stem conv, FC, batch norm")):
        values = np.array([table[b][part] for b in blocks]) / unit
        ax.bar(names, values, bottom=bottom, label=label)
        bottom += values
    ax.set(title=f"MobileNet V1 at 224x224: {title} per block", xlabel="block")
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3)
plt.show()

shares = ex.cost_by_layer_type(model)
for s in shares:
    print(f"{s.label:<16} {s.macs_share:6.2f} % of multiply-adds, {s.params_share:6.2f} % of parameters")
late = sum(sum(params[b].values()) for b in blocks[12:])
print(f"blocks 12, 13 and the classifier hold {100 * late / prof.params:.1f} % of the parameters and "
      f"{100 * sum(sum(macs[b].values()) for b in blocks[12:]) / prof.macs:.1f} % of the multiply-adds")

# %% [markdown]
# The pointwise convolutions dominate both columns (notebook 01 compares these shares with the
# paper's Table 2). The depthwise convolutions are cheap in both.
#
# On CIFAR-10 the network runs on 32×32 images: minimobile's CIFAR variant (`cifar=True`) keeps
# the stem at stride 1 so the maps do not shrink to nothing. Its cost, at the width trained in
# the README:

# %%
cifar = mm.cost.profile(mm.mobilenet_v1(num_classes=10, width_mult=0.5, cifar=True, seed=0), (3, 32, 32))
print(f"V1 width 0.5, CIFAR variant, 32x32: {cifar.params:,} parameters, {cifar.macs / 1e6:.2f} M multiply-adds")

# %% [markdown]
# ### What the strides do: map size and receptive field
#
# Each stride-2 layer halves the map; each $K \times K$ layer widens the *receptive field*, the
# patch of the input one output value depends on, by $(K - 1)$ times the spacing of its inputs
# in image pixels (which doubles at every stride 2). `ex.receptive_fields` walks the convs in
# order. V1's five stride-2 layers take 224 to 7. The same strides on a 32×32 image end at
# 1×1: the five 512-channel blocks work on 2×2 maps, and the last two blocks, which hold more
# than a third of the parameters, on a single pixel per channel. The CIFAR variant runs the stem at stride 1 and ends at 2×2. Dropping a stride
# keeps the maps from collapsing; it does not keep the receptive field inside a 32×32 image
# (the printed ratios: in both 32×32 cases the last layers' fields are several times the image,
# mostly padding):

# %%
cases = [("ImageNet V1 at 224", mm.mobilenet_v1(seed=0), 224),
         ("ImageNet strides at 32", mm.mobilenet_v1(seed=0), 32),
         ("CIFAR variant at 32", mm.mobilenet_v1(num_classes=10, cifar=True, seed=0), 32)]
fig, axes = plt.subplots(1, 2, figsize=(12, 3.8))
for label, net, size in cases:
    rf = ex.receptive_fields(net, size)
    axes[0].plot([r.size for r in rf], "o-", ms=3, label=label)
    axes[1].plot([r.field / size for r in rf], "o-", ms=3, label=label)
    print(f"{label:<24} final map {rf[-1].size}x{rf[-1].size}, receptive field {rf[-1].field} px "
          f"= {rf[-1].field / size:.1f} x the image side")
axes[0].set(yscale="log", xlabel="spatial conv (stem, then each block's depthwise)",
            ylabel="map side (pixels)", title="map size through the network")
axes[1].set(yscale="log", xlabel="spatial conv (stem, then each block's depthwise)",
            ylabel="receptive field / image side", title="receptive field, relative to the image")
axes[1].axhline(1, color="gray", lw=0.5)
for ax in axes:
    ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## Batch norm in training mode, derived
#
# Every conv of V1 is followed by batch norm, and in training mode its backward is the hardest
# one in the network, because every output of a channel depends on every input of that channel
# through the batch statistics. Fix one channel and call its $M = N H W$ values $x_1 \dots x_M$:
#
# $$\mu = \frac1M \sum_i x_i, \qquad \sigma^2 = \frac1M \sum_i (x_i - \mu)^2, \qquad
# \hat x_i = \frac{x_i - \mu}{\sqrt{\sigma^2 + \varepsilon}}, \qquad y_i = \gamma \hat x_i + \beta .$$
#
# The graph: $x \to \mu$, $(x, \mu) \to \sigma^2$, $(x, \mu, \sigma^2) \to \hat x \to y$. With
# $g_i = \partial L / \partial y_i$ and $s = \sqrt{\sigma^2 + \varepsilon}$, the parameters are
# easy, $\;\partial L/\partial\beta = \sum_i g_i$, $\;\partial L/\partial\gamma = \sum_i g_i \hat x_i$,
# and $\partial L/\partial \hat x_i = \gamma g_i$. The input $x_i$ reaches the loss along
# **three paths**:
#
# 1. **directly** through its own $\hat x_i$: $\;\dfrac{\gamma g_i}{s}$;
# 2. **through the mean** (every $\hat x_j$ subtracts $\mu$, and $\partial\mu/\partial x_i = 1/M$):
#    $\;-\dfrac{1}{M s} \sum_j \gamma g_j$ (the mean's effect through $\sigma^2$ is zero, since
#    $\sum_j (x_j - \mu) = 0$);
# 3. **through the variance** ($\partial L/\partial\sigma^2 = -\frac{1}{2 s^3}\sum_j \gamma g_j (x_j - \mu)$
#    and $\partial\sigma^2/\partial x_i = \frac{2}{M}(x_i - \mu)$):
#    $\;-\dfrac{\hat x_i}{M s} \sum_j \gamma g_j \hat x_j$.
#
# Summed, the formula the library uses:
#
# $$\frac{\partial L}{\partial x_i} = \frac{\gamma}{M s}\Big(M g_i - \sum_j g_j - \hat x_i \sum_j g_j \hat x_j\Big).$$
#
# The library's readable version, the loops rung of `minimobile/kernels/batchnorm.py`, computes
# exactly this, one channel at a time (on maps flattened to $P = HW$ pixels; `g` first goes
# through the slope of an activation fused after batch norm, 1 when there is none):

# %%
ex.show_source(mm.kernels.batchnorm.batchnorm2d_backward_loops)

# %% [markdown]
# Below, the three paths are computed one by one, summed and compared with the op's backward
# on the loops rung; then that backward is checked against central differences. The check goes
# through the pure op (`mm.ops.batchnorm2d_forward`), not the layer, so that probing does not
# move the running statistics.

# %%
rng = np.random.default_rng(0)
eps = 1e-5
x = rng.normal(1.0, 2.0, (4, 3, 5, 5))
gamma, beta = rng.uniform(0.5, 1.5, 3), rng.normal(0, 0.5, 3)
with mm.kernels.use("loops"):
    out, cache = mm.ops.batchnorm2d_forward(x, gamma, beta, eps)
    dout = rng.standard_normal(out.shape)
    dx, dgamma, dbeta = mm.ops.batchnorm2d_backward(dout, cache)
mean, var = cache.mean, cache.var  # the batch statistics, biased variance

M = x.shape[0] * x.shape[2] * x.shape[3]
c4 = (None, slice(None), None, None)  # a (C,) vector broadcast over (N, C, H, W)
s = np.sqrt(var + eps)[c4]
xhat = (x - mean[c4]) / s
dxhat = gamma[c4] * dout
direct = dxhat / s
through_mean = -dxhat.sum(axis=(0, 2, 3))[c4] / (M * s)
through_var = -xhat * (dxhat * xhat).sum(axis=(0, 2, 3))[c4] / (M * s)
print("max |dx - (direct + through mean + through variance)| =",
      np.abs(dx - (direct + through_mean + through_var)).max())
for name, path in (("direct", direct), ("through the mean", through_mean),
                   ("through the variance", through_var)):
    print(f"  path {name:<21} largest |contribution| {np.abs(path).max():.3f}")
with mm.kernels.use("loops"):
    errors = ex.gradient_errors(lambda: mm.ops.batchnorm2d_forward(x, gamma, beta, eps)[0],
                                {"x": (x, dx), "gamma": (gamma, dgamma), "beta": (beta, dbeta)},
                                dout)
print({name: f"{e:.1e}" for name, e in errors.items()})
assert max(errors.values()) < 1e-7

# %% [markdown]
# **Why $\sum_i \partial L/\partial x_i = 0$ per channel.** Add the same constant $t$ to every
# value of a channel: the mean moves by $t$, $\hat x$ does not move, so neither does the loss.
# The derivative of the loss along that direction, $\sum_i \partial L/\partial x_i$, is
# therefore zero; in the formula, $\sum_i \hat x_i = 0$ makes the three terms cancel.
#
# **Why $\sum_i \hat x_i\, \partial L/\partial x_i \approx 0$.** Stretch a channel about its
# mean, $x_i \to \mu + (1+t)(x_i - \mu)$: with $\varepsilon = 0$, $\hat x$ would not move
# either, so the derivative along $x_i - \mu \propto \hat x_i$ would be zero. With
# $\varepsilon > 0$ it is not exactly zero: from the formula and $\sum_i \hat x_i^2 = M\sigma^2/s^2$,
# $\sum_i \hat x_i\, \partial L/\partial x_i = \gamma\, \varepsilon \sum_i g_i \hat x_i / s^3$,
# small when $\sigma^2 \gg \varepsilon$. Measured, per channel:

# %%
sum_dx = dx.sum(axis=(0, 2, 3))
sum_dx_xhat = (dx * xhat).sum(axis=(0, 2, 3))
predicted = gamma * eps * (dout * xhat).sum(axis=(0, 2, 3)) / np.sqrt(var + eps) ** 3
print("sum(dx) per channel:          ", sum_dx)
print("sum(dx * xhat) per channel:   ", sum_dx_xhat)
print("gamma eps sum(g xhat) / s^3:  ", predicted)
tiny = 1e-12  # the op refuses eps = 0, which would divide by zero on a constant channel
dx0, _, _ = mm.ops.batchnorm2d_backward(dout, mm.ops.batchnorm2d_forward(x, gamma, beta, tiny)[1])
xhat0 = (x - mean[c4]) / np.sqrt(var + tiny)[c4]
print("the same sum with eps = 1e-12:", (dx0 * xhat0).sum(axis=(0, 2, 3)))
assert np.allclose(sum_dx, 0, atol=1e-12) and np.allclose(sum_dx_xhat, predicted, atol=1e-12)

# %% [markdown]
# A learner's backward that fails these two sums is wrong, whatever else it gets right; they
# are cheap to test.
#
# **Running statistics.** In evaluation mode batch norm cannot use batch statistics (a single
# image has none worth having), so `BatchNorm2d` keeps running averages, updated after each
# training batch from the statistics the op cached, with **PyTorch's convention**:
# $\text{running} \leftarrow (1 - m)\,\text{running} + m \cdot \text{batch}$, $m = 0.1$, and
# the variance averaged is the *unbiased* batch variance $\sigma^2 M / (M - 1)$, while the
# normalisation itself uses the biased $\sigma^2$. CS231n's assignments write
# $m \cdot \text{running} + (1 - m) \cdot \text{batch}$, the same update with $m \to 1 - m$: a
# momentum of 0.9 there is 0.1 here. The layer's code, then one step checked:

# %%
ex.show_source(mm.BatchNorm2d.forward)
bn = mm.BatchNorm2d(3, dtype=np.float64)
bn.train()
bn.forward(x)
print("running mean:", bn.buffers["running_mean"], "= 0.9 * 0 + 0.1 * batch mean", 0.1 * mean)
print("running var: ", bn.buffers["running_var"], "= 0.9 * 1 + 0.1 * unbiased var",
      0.9 + 0.1 * var * M / (M - 1))
assert np.allclose(bn.buffers["running_var"], 0.9 + 0.1 * var * M / (M - 1))

# %% [markdown]
# **Exercise**: `batchnorm2d_forward`, `batchnorm2d_backward` and `update_running_statistics`
# (parts 1 to 3 of [`exercises/ex02_mobilenet_v1.py`](../exercises/ex02_mobilenet_v1.py)):
# `pytest exercises -m ex02`.
#
# ## One block, forward and backward
#
# A `DepthwiseSeparable` block holds two `ConvBNActivation` children, `dw` and `pw`. Its forward
# is `pw(dw(x))`; its backward runs the children's backwards in reverse:
# `dx = dw.backward(pw.backward(dout))`. In float64 (for the gradient check below), with batch
# norm given a random affine map (`randomize_batchnorm`: at the initial γ = 1, β = 0 some
# gradients are too small to measure against rounding):

# %%
rng = np.random.default_rng(0)
block = mm.blocks.DepthwiseSeparable(32, 64, stride=2, rng=rng, dtype=np.float64)
mm.gradcheck.randomize_batchnorm(block, rng)
x = rng.standard_normal((4, 32, 8, 8))
h = block.dw.forward(x)
out = block.pw.forward(h)
print("x", x.shape, "-> after dw", h.shape, "-> after pw", out.shape)
assert np.array_equal(out, block.forward(x))

dout = rng.standard_normal(out.shape)
dx = block.backward(dout)
print("dx", dx.shape)
for name, p, g in block.named_parameters():
    print(f"  {name:<14} param {str(p.shape):<16} grad {str(g.shape):<16} |grad| max {np.abs(g).max():.3g}")

# %% [markdown]
# ## The gradient check
#
# Is that backward right? `ex.gradient_check_module` compares it with central differences of
# $\sum f(x) \odot d\text{out}$ (the gradient a backward pass must return) for the input and for
# every parameter, at sampled entries, and reports the relative error of each (largest absolute
# difference over largest magnitude; `minimobile.gradcheck`). A correct float64 backward gives
# errors around 1e-8 or below; a wrong one, errors of order 1.

# %%
errors = ex.gradient_check_module(block, x, rng, count=10 if QUICK else 40)
for name, err in errors.items():
    print(f"{name:<14} relative error {err:.2e}")
assert max(errors.values()) < 1e-6
