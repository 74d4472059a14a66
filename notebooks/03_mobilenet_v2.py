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
# **Exercise**: [`exercises/ex03_mobilenet_v2.py`](../exercises/ex03_mobilenet_v2.py) (the inverted residual block, its backward, and V2). Check your answers with `pytest exercises -m ex03`.

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
rng = np.random.default_rng(0)
block = mm.blocks.InvertedResidual(24, 24, stride=1, expand_ratio=6, rng=rng)
print(block)
prof = mm.cost.profile(block, (24, 56, 56))
print(prof.format_table())

# %% [markdown]
# The 24-channel tensors at either end are what the network carries from block to block (and
# stores for the backward pass); the 144-channel expansion exists only inside the block.
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

# %%
points = ex.spiral(1000 if not QUICK else 300)
dims = [2, 3, 5, 15, 30]
rng = np.random.default_rng(0)
fig, axes = plt.subplots(1, len(dims) + 1, figsize=(3 * (len(dims) + 1), 3))
axes[0].scatter(*points.T, s=2, c=np.arange(len(points)), cmap="viridis")
axes[0].set_title("input spiral")
for ax, n in zip(axes[1:], dims):
    T = ex.random_embedding(n, rng)
    back = ex.relu_roundtrip(points, T)
    ok = ex.relu_recoverable(points, T)
    ax.scatter(*back[ok].T, s=2, c=np.arange(len(points))[ok], cmap="viridis")
    ax.scatter(*back[~ok].T, s=2, c="red")
    ax.set_title(f"n = {n}: {100 * ok.mean():.0f} % recoverable")
for ax in axes:
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
# readable version (`minimobile/reference.py`), then the function and derivative plotted, with
# the values taken at the kinks marked:

# %%
from minimobile import reference as ref

ex.show_source(ref.relu6_forward)
ex.show_source(ref.relu6_backward)
x = np.linspace(-2, 8, 1001)
kinks = np.array([0.0, 6.0])
fig, axes = plt.subplots(1, 2, figsize=(9, 3))
axes[0].plot(x, ref.relu6_forward(x))
axes[0].set_title("ReLU6")
axes[1].plot(x, ref.relu6_backward(np.ones_like(x), x), ".", ms=1)
axes[1].plot(kinks, ref.relu6_backward(np.ones(2), kinks), "o", mfc="white", color="C3",
             label="value at the kinks")
axes[1].set_title("its derivative (minimobile's convention)")
axes[1].legend(fontsize=8)
plt.show()
print("derivative at x = 0 and x = 6:", ref.relu6_backward(np.ones(2), kinks))

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
errors = ex.gradient_errors(lambda: ref.relu6_forward(x), {"x": (x, ref.relu6_backward(dout, x))}, dout)
print(f"ReLU6 gradient check: relative error {errors['x']:.1e}")
h = 1e-6
at_kink = (ref.relu6_forward(np.array([h])) - ref.relu6_forward(np.array([-h]))) / (2 * h)
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
