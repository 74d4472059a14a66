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
# # 01 · The depthwise separable convolution: what it saves, on paper and in time
#
# A MobileNet V1 is a stack of *depthwise separable* convolutions. This notebook derives what
# they cost against a standard convolution, checks the formula against minimobile's
# multiply-add counter (`minimobile.cost.profile`), reproduces two tables of the V1 paper
# (Howard et al. 2017, arXiv:1704.04861), and then measures how much of the saving survives on a
# real CPU.
#
# **Exercise**: [`exercises/ex01_depthwise_separable.py`](../exercises/ex01_depthwise_separable.py) (count the multiply-adds, then write the depthwise and pointwise convolutions and their gradients yourself). Check your answers with `pytest exercises -m ex01`.

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
# ## The cost ratio
#
# A standard convolution with $C_{in}$ input channels, $C_{out}$ output channels and a $D_K \times D_K$
# kernel (the paper writes $M$ and $N$ for the channel counts; here, as in the code, $N$ is the
# batch size), on a $D_F \times D_F$ map (stride 1, 'same' padding), computes every output value as a
# sum over $D_K^2 C_{in}$ products:
#
# $$\text{standard} = D_K^2 \, C_{in} \, C_{out} \, D_F^2 .$$
#
# The depthwise separable convolution splits it in two. A **depthwise** convolution filters each
# input channel with its own $D_K \times D_K$ kernel ($D_K^2$ products per output value, $C_{in}$
# channels), then a **pointwise** ($1 \times 1$) convolution mixes the channels ($C_{in}$ products per
# output value, $C_{out}$ channels):
#
# $$\text{separable} = D_K^2 \, C_{in} \, D_F^2 + C_{in} \, C_{out} \, D_F^2 .$$
#
# Dividing,
#
# $$\frac{\text{separable}}{\text{standard}} = \frac{D_K^2 C_{in} D_F^2 + C_{in} C_{out} D_F^2}{D_K^2 C_{in} C_{out} D_F^2}
# = \frac{1}{C_{out}} + \frac{1}{D_K^2}.$$
#
# It depends on neither $C_{in}$ nor $D_F$. With $D_K = 3$ and a few hundred output channels the
# separable version needs between 8 and 9 times fewer multiply-adds, the paper's Section 3.1.
# The parameters follow the same ratio, with $D_F^2$ removed from both.
#
# The three kinds of filter, drawn for a small case (the V1 paper's Figure 2):

# %%
fig = ex.plot_conv_filters(C_in=6, C_out=4, K=3)
plt.show()

# %% [markdown]
# ### Channels do not mix until the 1×1 conv
#
# An image through a depthwise conv with a hand-set filter per colour channel (a horizontal
# edge detector on red, a vertical one on green, a blur on blue): each output channel is a
# filtered copy of its own input channel and of nothing else. Only the pointwise conv after it
# combines channels, here into their sum and the red-minus-green difference. The image is a
# CIFAR-10 test image if CIFAR-10 is on this machine, else the photograph that ships with
# matplotlib, shrunk to 64×64.

# %%
try:
    image = mm.data.load_cifar10(download=False).x_test[7] / 255.0  # (3, 32, 32)
    source = "CIFAR-10 test image 7"
except (FileNotFoundError, ValueError, OSError):
    import matplotlib.cbook
    photo = plt.imread(matplotlib.cbook.get_sample_data("grace_hopper.jpg")) / 255.0  # (H, W, 3)
    step = photo.shape[0] // 64
    image = photo[:64 * step:step, :64 * step:step].transpose(2, 0, 1)  # (3, 64, 64)
    source = "matplotlib's sample photograph (CIFAR-10 not found)"
x_img = np.ascontiguousarray(image[None], dtype=np.float64)  # (1, 3, H, W)
sobel = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float64)
w_dw = np.stack([sobel, sobel.T, np.full((3, 3), 1 / 9)])[:, None]  # (3, 1, 3, 3)
w_pw = np.array([[1.0, 1.0, 1.0], [1.0, -1.0, 0.0]])[:, :, None, None]  # (2, 3, 1, 1)
dw_out, _ = mm.ops.depthwise_conv2d_forward(x_img, w_dw, stride=1, padding=1)
pw_out, _ = mm.ops.pointwise_conv2d_forward(dw_out, w_pw)
fig, axes = plt.subplots(3, 3, figsize=(8, 8))
rows = [("input", x_img[0], ["red", "green", "blue"]),
        ("depthwise", dw_out[0], ["red: horizontal edges", "green: vertical edges", "blue: blur"]),
        ("pointwise", pw_out[0], ["sum of the three", "red - green", None])]
for ax_row, (stage, maps, names) in zip(axes, rows):
    for ax, m, name in zip(ax_row, maps, names):
        ax.imshow(m, cmap="gray")
        ax.set_title(f"{stage}: {name}", fontsize=8)
    for ax in ax_row:
        ax.axis("off")
fig.suptitle(source, fontsize=9)
plt.show()

# %% [markdown]
# ## Counted against the formula
#
# `ex.separable_cost` builds a `Conv2d` and a `DepthwiseConv2d` + `PointwiseConv2d` pair and runs
# `minimobile.cost.profile` on both, which counts what every layer actually computes in a forward
# pass. The ratio is compared as an exact fraction, so "agree" means equal, not close.

# %%
c_outs = [16, 32, 64, 128, 256, 512, 1024]
kernel_sizes = [3, 5, 7]
grid = ex.separable_cost_grid(c_outs, kernel_sizes, C_in=32, size=8)
print(f"{'K':>2} {'C_out':>6} {'standard MACs':>14} {'separable MACs':>15} {'counted':>9} {'1/C_out + 1/K^2':>16}")
for c in grid:
    print(f"{c.K:>2} {c.C_out:>6} {c.standard_macs:>14,} {c.separable_macs:>15,} "
          f"{float(c.counted_ratio):>9.5f} {float(c.theoretical_ratio):>16.5f}")
assert all(c.counted_ratio == c.theoretical_ratio for c in grid)
print("counted == theoretical, exactly, for all", len(grid), "settings")

# %%
fig, ax = plt.subplots(figsize=(7, 4))
for K in kernel_sizes:
    rows = [c for c in grid if c.K == K]
    n = np.geomspace(16, 1024, 200)
    line, = ax.plot(n, 1 / n + 1 / K**2, label=f"1/C_out + 1/{K * K} (K={K})")
    ax.plot([c.C_out for c in rows], [float(c.counted_ratio) for c in rows], "o",
            color=line.get_color(), label=f"counted by profile, K={K}")
ax.set(xscale="log", yscale="log", xlabel="output channels C_out", ylabel="separable / standard MACs",
       title="Cost ratio: counted against theory")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## The V1 paper's Table 3: one 14×14×512 layer
#
# Table 3 of the paper follows one internal layer ($D_K = 3$, $C_{in} = C_{out} = 512$, $D_F = 14$) through
# the changes the paper makes, each row adding to the one before: the standard conv, the
# depthwise separable conv, width multiplier $\alpha = 0.75$ (384 channels), and resolution
# multiplier $\rho = 0.714$ (10×10 maps). The counter's numbers, in millions, beside the paper's:

# %%
table_3 = {
    "Convolution": ex.separable_cost(512, 512, 3, 14),
    "Depthwise Separable Conv": ex.separable_cost(512, 512, 3, 14),
    "alpha = 0.75": ex.separable_cost(384, 384, 3, 14),
    "rho = 0.714": ex.separable_cost(384, 384, 3, 10),
}
print(f"{'V1 Table 3 row':<26} {'M MACs':>9} {'paper':>7} {'M params':>9} {'paper':>7}")
for row, c in table_3.items():
    macs, params = ((c.standard_macs, c.standard_params) if row == "Convolution"
                    else (c.separable_macs, c.separable_params))
    paper_macs, paper_params = ex.V1_TABLE_3[row]
    print(f"{row:<26} {macs / 1e6:>9.2f} {paper_macs:>7} {params / 1e6:>9.3f} {paper_params:>7}")

# %% [markdown]
# ## The V1 paper's Table 2: where a whole MobileNet's multiply-adds are
#
# The paper's Table 2 sums the cost of the full network (224×224, width 1.0) by layer type and
# finds about 95 % of the multiply-adds in the 1×1 convolutions. `ex.cost_by_layer_type` does the
# same sum over `profile`'s rows (batch norm's parameters left out, as in the paper, whose four
# rows are the only ones):

# %%
shares = ex.cost_by_layer_type(mm.mobilenet_v1(seed=0))
print(f"{'layer type':<16} {'MACs %':>8} {'paper':>7} {'params %':>9} {'paper':>7}")
for s in shares:
    paper_macs, paper_params = ex.V1_TABLE_2[s.label]
    print(f"{s.label:<16} {s.macs_share:>8.2f} {paper_macs:>7} {s.params_share:>9.2f} {paper_params:>7}")
print(f"{'sum':<16} {sum(s.macs_share for s in shares):>8.2f} "
      f"{sum(m for m, _ in ex.V1_TABLE_2.values()):>7.2f}")

# %% [markdown]
# The 1×1, depthwise and fully connected rows agree with the paper to its two decimals. The
# 3×3 row (the stem) does not: the paper prints 1.19 %, but then its column sums to 99.29 %
# (printed above); the count gives the same digits in the other order, and its column sums to
# 100 %. The parameter shares differ in the second decimal because minimobile counts the
# classifier's 1,000 biases, which the paper's shares leave out.

# %% [markdown]
# ## The depthwise convolution's backward, derived
#
# Write one channel of one image (the batch index $n$ and channel $c$ are fixed; every channel
# is its own small problem, which is what "depthwise" means). With the input zero-padded by $p$
# to $x^p$, a $K \times K$ kernel $w$ and stride $s$,
#
# $$\text{out}_{ij} = \sum_{a=0}^{K-1} \sum_{b=0}^{K-1} w_{ab}\, x^p_{si+a,\; sj+b}.$$
#
# **The gradient with respect to the input.** Each padded input value $x^p_{uv}$ appears in
# every output whose window covers it, with weight $w_{u-si,\,v-sj}$, so
#
# $$\frac{\partial L}{\partial x^p_{uv}} = \sum_{i,j} \text{dout}_{ij}\, w_{u-si,\; v-sj}
# \quad (\text{terms with } 0 \le u-si,\, v-sj < K).$$
#
# Spread $\text{dout}$ onto the stride-1 grid, putting $\text{dout}_{ij}$ at $(si, sj)$ and
# zeros between (for stride 2 this *dilates* dout: a zero between every two values); call it
# $D$. Then $\partial L/\partial x^p_{uv} = \sum_{u',v'} D_{u'v'}\, w_{u-u',\,v-v'}$: a *full*
# convolution of $D$ with $w$, which is the same as a correlation (what the forward computes) of
# $D$, zero-padded by $K-1$, with the kernel flipped in both directions,
# $\tilde w_{ab} = w_{K-1-a,\,K-1-b}$.
#
# **Padding's role.** The forward read $x^p$, whose border of width $p$ is zeros and not part of
# $x$. The gradient of those zeros is computed and thrown away: $dx$ is $dx^p$ with the border
# cropped. Padding is also why $D$ needs the $K - 1$ zeros around it: near the border, fewer
# than $K^2$ outputs saw a given input value.
#
# **The gradient with respect to the kernel.** $w_{ab}$ multiplies $x^p_{si+a,\,sj+b}$ in
# every output of every image of the batch:
#
# $$\frac{\partial L}{\partial w_{ab}} = \sum_n \sum_{i,j} \text{dout}_{n,ij}\; x^p_{n,\,si+a,\; sj+b},$$
#
# a correlation of the padded input with (the dilated) dout, summed over the batch: the weights
# are shared by all $N$ images, so their gradients add.
#
# The library's readable version, the *loops* rung of `minimobile/kernels/depthwise.py` (the
# rung the faster kernels above it are tested against), loops over exactly these sums: each
# tap of each output sends $\text{dout} \cdot w$ back to the pixel it read and
# $\text{dout} \cdot \text{pixel}$ to its weight, and a tap that falls in the padding has no
# pixel to send to:

# %%
ex.show_source(mm.kernels.depthwise.depthwise_conv2d_backward_loops)

# %% [markdown]
# The two readings agree: below, $dx$ is recomputed as the correlation of the dilated, padded
# dout with the flipped kernel (with the library's own depthwise *forward*, at stride 1), and
# $dw$ as the correlation of $x^p$ with the dilated dout summed over the batch. Then both are
# checked against central differences (`minimobile.gradcheck`), at stride 2 with an odd map
# size, so that the dilation shows up. `mm.kernels.use("loops")` makes every op run on the
# loops rung, so what is checked is the code shown.

# %%
rng = np.random.default_rng(0)
N, C, H, W, K, stride, padding = 2, 3, 7, 7, 3, 2, 1
x = rng.standard_normal((N, C, H, W))
w = rng.standard_normal((C, 1, K, K))
with mm.kernels.use("loops"):
    out, cache = mm.ops.depthwise_conv2d_forward(x, w, stride, padding)
    dout = rng.standard_normal(out.shape)
    dx, dw = mm.ops.depthwise_conv2d_backward(dout, cache)

Hp, Wp = H + 2 * padding, W + 2 * padding
D = np.zeros((N, C, Hp - K + 1, Wp - K + 1))  # every stride-1 window position
D[:, :, ::stride, ::stride][:, :, :out.shape[2], :out.shape[3]] = dout  # dilated dout
flipped = np.ascontiguousarray(w[:, :, ::-1, ::-1])
dxp, _ = mm.ops.depthwise_conv2d_forward(D, flipped, stride=1, padding=K - 1)  # (N, C, Hp, Wp)
dx_formula = dxp[:, :, padding:padding + H, padding:padding + W]  # crop the padding
xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
windows = np.lib.stride_tricks.sliding_window_view(xp, D.shape[2:], axis=(2, 3))  # (N, C, K, K, ., .)
dw_formula = np.einsum("ncabuv,ncuv->cab", windows, D)[:, None]  # summed over the batch
print("max |dx - flipped-kernel correlation| =", np.abs(dx - dx_formula).max())
print("max |dw - correlation of x with dout| =", np.abs(dw - dw_formula).max())

with mm.kernels.use("loops"):
    errors = ex.gradient_errors(lambda: mm.ops.depthwise_conv2d_forward(x, w, stride, padding)[0],
                                {"x": (x, dx), "w": (w, dw)}, dout)
print({name: f"{e:.1e}" for name, e in errors.items()})
assert np.allclose(dx, dx_formula) and np.allclose(dw, dw_formula) and max(errors.values()) < 1e-7

# %% [markdown]
# The exercise asks for the same thing written as a loop over the $K^2$ taps instead of the
# pixels (each tap is then one vectorised multiply-add over whole maps), then as a Numba kernel.
#
# ## The pointwise convolution as matrix products
#
# A 1×1 convolution mixes channels at each pixel on its own. Lay one image's input out as a
# matrix $X$ of $C_{in}$ rows and $HW$ columns, and the weights as $W$ ($C_{out} \times C_{in}$):
#
# $$\text{Out} = W X + b\,\mathbf 1^\top, \qquad
# dX = W^\top\, d\text{Out}, \qquad dW = \sum_n d\text{Out}_n\, X_n^\top, \qquad
# db = \sum_n d\text{Out}_n\, \mathbf 1 .$$
#
# (Differentiate $\text{Out}_{oq} = \sum_c W_{oc} X_{cq}$: $X_{cq}$ appears with $W_{oc}$ for
# every $o$, and $W_{oc}$ with $X_{cq}$ for every pixel $q$ of every image.) All three are
# matrix products, so a pointwise conv runs at the speed of BLAS, which keeps blocks of $W$
# and $X$ in registers and cache and reuses each loaded value many times: every weight is used
# at $N H W$ pixels and every input value by $C_{out}$ filters. The loops rung
# (`minimobile/kernels/matmul.py`, on maps flattened to $P = HW$ pixels) makes the same sums
# explicit:

# %%
ex.show_source(mm.kernels.matmul.pointwise_conv2d_backward_loops)

# %%
C_in, C_out = 5, 4
x = rng.standard_normal((2, C_in, 3, 4))
w = rng.standard_normal((C_out, C_in, 1, 1))
b = rng.standard_normal(C_out)
with mm.kernels.use("loops"):
    out, cache = mm.ops.pointwise_conv2d_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    dx, dw, db = mm.ops.pointwise_conv2d_backward(dout, cache)
Wm = w[:, :, 0, 0]  # (C_out, C_in)
X = x.reshape(2, C_in, -1)  # (N, C_in, H*W), one matrix per image
G = dout.reshape(2, C_out, -1)  # (N, C_out, H*W)
print("forward  = W X + b:", np.allclose(out.reshape(2, C_out, -1), Wm @ X + b[:, None]))
print("dx = W^T dout:     ", np.allclose(dx.reshape(2, C_in, -1), Wm.T @ G))
print("dw = sum dout X^T: ", np.allclose(dw[:, :, 0, 0], (G @ X.transpose(0, 2, 1)).sum(0)))
with mm.kernels.use("loops"):
    errors = ex.gradient_errors(lambda: mm.ops.pointwise_conv2d_forward(x, w, b)[0],
                                {"x": (x, dx), "w": (w, dw), "b": (b, db)}, dout)
print({name: f"{e:.1e}" for name, e in errors.items()})
assert max(errors.values()) < 1e-7

# %% [markdown]
# **Exercise**: `depthwise_conv2d_forward` / `_backward` (part 2 of
# [`exercises/ex01_depthwise_separable.py`](../exercises/ex01_depthwise_separable.py), then
# their Numba kernels in part 3) and `pointwise_conv2d_forward` / `_backward` (part 4, as
# matrix products): `pytest exercises -m ex01`.
#
# ## Does time fall as far as the multiply-adds?
#
# Now the same two layers, timed: forward, and forward + backward (what a training step pays),
# in float32 on a batch of images, with minimobile's Numba kernels and BLAS. Each time is the
# median of several runs (`ex.time_callable`), after a warm-up run; the spread of the runs is
# kept to show how far a single number can be trusted.

# %%
if QUICK:
    N, size, C_in, timed_c_outs, repeats = 2, 8, 16, [16, 64], 2
else:
    N, size, C_in, timed_c_outs, repeats = 16, 16, 128, [16, 32, 64, 128, 256, 512, 1024], 7
K = 3
rng = np.random.default_rng(0)
x = rng.standard_normal((N, C_in, size, size)).astype(np.float32)
timings = []
for C_out in timed_c_outs:
    standard = ex.standard_conv(C_in, C_out, K, rng)
    separable = ex.depthwise_separable_conv(C_in, C_out, K, rng)
    std_f, std_fb = ex.time_forward_backward(standard, x, repeats)
    sep_f, sep_fb = ex.time_forward_backward(separable, x, repeats)
    dw_f, _ = ex.time_forward_backward(separable[0], x, repeats)
    pw_f, _ = ex.time_forward_backward(separable[1], x, repeats)
    timings.append(dict(C_out=C_out, flop_ratio=float(ex.theoretical_ratio(C_out, K)),
                        std_f=std_f.ms, std_fb=std_fb.ms, sep_f=sep_f.ms, sep_fb=sep_fb.ms,
                        dw_f=dw_f.ms, pw_f=pw_f.ms,
                        spread=max((max(t.samples) - min(t.samples)) / t.median
                                   for t in (std_f, std_fb, sep_f, sep_fb))))
print(f"batch N = {N}, {C_in} input channels, {size}x{size} maps, K={K}, median of {repeats}; ms")
print(f"{'C_out':>6} {'std fwd':>8} {'sep fwd':>8} {'std f+b':>8} {'sep f+b':>8} "
      f"{'MAC ratio':>9} {'fwd ratio':>9} {'f+b ratio':>9} {'spread':>7}")
for t in timings:
    print(f"{t['C_out']:>6} {t['std_f']:>8.2f} {t['sep_f']:>8.2f} {t['std_fb']:>8.2f} "
          f"{t['sep_fb']:>8.2f} {t['flop_ratio']:>9.3f} {t['sep_f'] / t['std_f']:>9.3f} "
          f"{t['sep_fb'] / t['std_fb']:>9.3f} {100 * t['spread']:>6.0f}%")
for key, what in (("f", "forward"), ("fb", "forward+backward")):
    above = [t["C_out"] for t in timings if t[f"sep_{key}"] / t[f"std_{key}"] > t["flop_ratio"]]
    print(f"{what}: time ratio above the MAC ratio (saves less time than arithmetic) at "
          f"C_out = {above}; at or below it at "
          f"{[t['C_out'] for t in timings if t['C_out'] not in above]}")

# %% [markdown]
# "spread" is the largest (slowest − fastest) / median over the four timings of a row: where it
# is large, a ratio's last digit is noise. Read the two summary lines above rather than a
# single row: they list the channel counts where the pair saves less time than arithmetic
# (time ratio above the MAC ratio) and those where it saves as much or more, separately for
# the forward and for forward + backward, which need not agree. Time does not simply follow
# $1/C_{out} + 1/D_K^2$ in either direction.
#
# PyTorch, if it is installed (it is optional: `pip install -e ".[torch]"`), times the same
# shapes with its own kernels, on the same number of threads. It is an independent
# implementation, so it tells whether the gap between time and multiply-adds is a property of
# minimobile's kernels or of the two layer types:

# %%
try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None
    print("PyTorch is not installed: its column is skipped")
if torch is not None:
    torch.set_num_threads(mm.get_num_threads())

    def torch_times(C_out):
        xt = torch.from_numpy(x).requires_grad_()
        w_std = torch.randn(C_out, C_in, K, K, requires_grad=True)
        w_dw = torch.randn(C_in, 1, K, K, requires_grad=True)
        w_pw = torch.randn(C_out, C_in, 1, 1, requires_grad=True)
        standard = lambda: F.conv2d(xt, w_std, padding=K // 2)
        separable = lambda: F.conv2d(F.conv2d(xt, w_dw, padding=K // 2, groups=C_in), w_pw)
        out = {}
        for name, f in (("std", standard), ("sep", separable)):
            dout = torch.randn(N, C_out, size, size)
            out[name + "_f"] = ex.time_callable(lambda: f().detach(), repeats).ms
            out[name + "_fb"] = ex.time_callable(lambda: f().backward(dout), repeats).ms
        return out

    for t in timings:
        t["torch"] = torch_times(t["C_out"])
    print(f"{'C_out':>6} {'MAC ratio':>9} {'mm f+b ratio':>12} {'torch f+b ratio':>15}")
    for t in timings:
        p = t["torch"]
        print(f"{t['C_out']:>6} {t['flop_ratio']:>9.3f} {t['sep_fb'] / t['std_fb']:>12.3f} "
              f"{p['sep_fb'] / p['std_fb']:>15.3f}")
    torch_ratios = [t["torch"]["sep_fb"] / t["torch"]["std_fb"] for t in timings]
    over = [r / t["flop_ratio"] for r, t in zip(torch_ratios, timings)]
    print(f"PyTorch's separable pair takes {min(over):.1f} to {max(over):.1f} times the time the "
          f"MAC ratio predicts")

# %% [markdown]
# If PyTorch's time ratios also sit well above the MAC ratio, the gap belongs to the layers,
# not to minimobile: a mature library with its own depthwise kernels does not get the
# $1/C_{out} + 1/D_K^2$ saving in time either. The plot puts both against the MAC ratio, on
# axes fitted to the points:

# %%
fig, ax = plt.subplots(figsize=(6, 5))
flop = [t["flop_ratio"] for t in timings]
series = [([t["sep_f"] / t["std_f"] for t in timings], "o-", "minimobile, forward"),
          ([t["sep_fb"] / t["std_fb"] for t in timings], "s-", "minimobile, forward+backward")]
if torch is not None:
    series.append((torch_ratios, "^--", "PyTorch, forward+backward"))
for ratios, style, label in series:
    ax.plot(flop, ratios, style, label=label)
    for f, r, t in zip(flop, ratios, timings):
        if style == "o-":
            ax.annotate(f"{t['C_out']}", (f, r), textcoords="offset points", xytext=(4, 4), fontsize=7)
every = flop + [r for ratios, _, _ in series for r in ratios]
ax.plot([min(flop), max(flop)], [min(flop), max(flop)], "k:", label="time ratio = MAC ratio")
ax.set(xscale="log", yscale="log", xlim=(min(flop) * 0.95, max(flop) * 1.05),
       ylim=(min(every) * 0.8, max(every) * 1.25), xlabel="separable / standard multiply-adds",
       ylabel="separable / standard time",
       title="Measured time ratio against MAC ratio (labels: C_out)")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# ## What the separable pair's time is made of
#
# Split the pair into its halves, at every channel count: the depthwise conv's share of the
# pair's multiply-adds against its share of the pair's forward time. With only $D_K^2 = 9$
# multiply-adds per input value, the depthwise conv is a small share of the arithmetic; if its
# share of the time is much larger, it is the reason the pair saves less time than arithmetic.

# %%
pixels = N * size * size
print(f"{'C_out':>6} {'dw % of MACs':>12} {'dw % of time':>12} {'dw GMAC/s':>9} {'pw GMAC/s':>9} {'std GMAC/s':>10}")
for t in timings:
    dw_macs, pw_macs = pixels * C_in * K * K, pixels * C_in * t["C_out"]
    std_macs = pw_macs * K * K
    print(f"{t['C_out']:>6} {100 * dw_macs / (dw_macs + pw_macs):>12.1f} "
          f"{100 * t['dw_f'] / (t['dw_f'] + t['pw_f']):>12.1f} {dw_macs / t['dw_f'] / 1e6:>9.2f} "
          f"{pw_macs / t['pw_f'] / 1e6:>9.2f} {std_macs / t['std_f'] / 1e6:>10.2f}")

# %% [markdown]
# **Is the depthwise conv memory-bound?** A common explanation says yes: it does so little
# arithmetic per byte that memory cannot feed it. That is a claim to measure, not to assert.
# The bytes it must move at least once are its input and output maps and its weights; divided
# by its time, that is the bandwidth it uses. Compare with what memory can deliver: the rate of
# a plain copy (`ex.copy_bandwidth`), once on an array the size of these maps (which fits in
# the CPU's caches) and once on arrays several times larger than the last-level cache, if
# memory allows (which measures DRAM):

# %%
dw_bytes = 4 * (2 * x.size + C_in * K * K)  # float32 input and output maps, and the weights
dw_gbps = dw_bytes / np.median([t["dw_f"] for t in timings]) / 1e6
llc = ex.last_level_cache_bytes()
sizes = [x.nbytes] + ([] if QUICK else [64 * 2**20, 512 * 2**20])
print(f"maps: {x.nbytes / 2**20:.1f} MiB; largest cache reported: "
      f"{'unknown' if llc is None else f'{llc / 2**20:.0f} MiB'}")
copies = [ex.copy_bandwidth(n, repeats=max(repeats, 5)) for n in sizes]
for b in copies:
    print(f"copy of {b.nbytes / 2**20:>6.1f} MiB: {b.gbps:>5.1f} GB/s "
          f"(runs from {min(b.samples):.1f} to {max(b.samples):.1f})")
print(f"depthwise conv forward: {dw_gbps:.1f} GB/s, {100 * dw_gbps / copies[0].gbps:.0f} % of "
      f"the copy at the same size")

# %% [markdown]
# A layer is memory-bound when its bandwidth comes close to what memory delivers *from where its
# data are*. These maps fit in cache, so the ceiling is the in-cache copy: if the depthwise
# conv's GB/s is a small fraction of it (the last line above), the layer is **not**
# memory-bound at this size. Its limit is then the work its loops do per value: nine scattered
# multiply-adds, with less reuse of registers and vector lanes than a matrix product gets from
# BLAS, so its GMAC/s (table above) stays far below the pointwise and standard convs'. The
# separable pair therefore replaces one efficient matrix product by a smaller one plus a pass
# whose multiply-adds each cost more time. Notebook 08 takes the depthwise kernel apart and
# places every layer of V1 and V2 on a measured roofline. (Timings depend on the machine and on
# what else runs on it: rerun the cells to see the spread.)
