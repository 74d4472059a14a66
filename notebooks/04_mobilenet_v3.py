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
# # 04 · MobileNet V3: hard-swish, squeeze-excite and the bneck block
#
# MobileNet V3 (Howard et al. 2019, arXiv:1905.02244) keeps V2's inverted residual, adds
# squeeze-and-excite to some blocks, and replaces ReLU by **hard-swish** in the deeper half. Its
# two networks, Large and Small, were found by architecture search and then hand-tuned.
#
# **Exercise**: [`exercises/ex04_mobilenet_v3.py`](../exercises/ex04_mobilenet_v3.py) (hard-swish, hard-sigmoid, squeeze-excite and the bneck block). Check your answers with `pytest exercises -m ex04`.

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
# ## Hard-swish against swish, hard-sigmoid against sigmoid
#
# Swish is $x \, \sigma(x)$. Its sigmoid is costly on mobile hardware, so V3 replaces it by a
# piecewise-linear version, $\mathrm{hsigmoid}(x) = \mathrm{ReLU6}(x + 3)/6$, and
# $\mathrm{hswish}(x) = x \, \mathrm{ReLU6}(x + 3)/6$. Below, minimobile's ops
# (`mm.ops.hardswish_forward` and `_backward`, likewise hard-sigmoid), beside the smooth
# functions written out with NumPy:

# %%
x = np.linspace(-6, 6, 1201)
ones = np.ones_like(x)
hswish, cache = mm.ops.hardswish_forward(x)
d_hswish = mm.ops.hardswish_backward(ones, cache)
hsig, cache = mm.ops.hardsigmoid_forward(x)
d_hsig = mm.ops.hardsigmoid_backward(ones, cache)
sig = 1 / (1 + np.exp(-x))
swish, d_swish, d_sig = x * sig, sig + x * sig * (1 - sig), sig * (1 - sig)

fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharex=True)
for ax, (hard, smooth, title) in zip(axes.flat, [
        (hswish, swish, "hard-swish and swish"), (hsig, sig, "hard-sigmoid and sigmoid"),
        (d_hswish, d_swish, "derivatives: hard-swish and swish"),
        (d_hsig, d_sig, "derivatives: hard-sigmoid and sigmoid")]):
    ax.plot(x, smooth, label="smooth", lw=2, alpha=0.6)
    ax.plot(x, hard, label="hard (minimobile.ops)", lw=1.5)
    ax.set_title(title)
    ax.axvline(-3, color="gray", lw=0.5); ax.axvline(3, color="gray", lw=0.5)
    ax.legend(fontsize=8)
plt.show()
print(f"largest |hard-swish - swish| on [-6, 6]: {np.abs(hswish - swish).max():.3f}")
print(f"largest |hard-sigmoid - sigmoid| on [-6, 6]: {np.abs(hsig - sig).max():.3f}")

# %% [markdown]
# The hard versions are exact zeros left of −3 and the identity (hard-swish) or 1 (hard-sigmoid)
# right of +3; between, hard-swish is a parabola and hard-sigmoid a line of slope 1/6. Their
# derivatives are piecewise constant or linear, with jumps at ±3: gradient checks must keep
# their inputs away from those kinks (`minimobile.gradcheck`'s docstring).

# %% [markdown]
# ### The derivatives and their kink conventions
#
# Differentiating piece by piece,
#
# $$\mathrm{hswish}'(x) = \begin{cases} 0 & x < -3 \\ \dfrac{2x + 3}{6} = \dfrac{x}{3} + \dfrac12 & -3 \le x \le 3 \\ 1 & x > 3 \end{cases}
# \qquad
# \mathrm{hsigmoid}'(x) = \begin{cases} \dfrac16 & -3 < x < 3 \\ 0 & \text{otherwise.} \end{cases}$$
#
# Both functions are continuous at $\pm 3$ but their slopes jump, so the value *at* a kink is a
# convention. minimobile takes PyTorch's, so that gradients match it exactly: hard-swish uses
# the middle formula on the **closed** interval $[-3, 3]$ (giving $-1/2$ at $x = -3$, the
# right-hand slope, and $3/2$ at $x = 3$, the left-hand one); hard-sigmoid uses $1/6$ on the
# **open** interval (0 at both kinks). The readable versions (the loops rung of
# `minimobile/kernels/elementwise.py`) and the values the ops give at the kinks, on the loops
# rung and on the fast one:

# %%
for f in (mm.kernels.elementwise.hardswish_backward_loops,
          mm.kernels.elementwise.hardsigmoid_backward_loops):
    ex.show_source(f)
kinks = np.array([-3.0, 3.0])
for rung in ("loops", "fast"):
    with mm.kernels.use(rung):
        print(f"{rung:<5}: hard-swish' at -3, 3:",
              mm.ops.hardswish_backward(np.ones(2), mm.ops.hardswish_forward(kinks)[1]),
              "  hard-sigmoid' at -3, 3:",
              mm.ops.hardsigmoid_backward(np.ones(2), mm.ops.hardsigmoid_forward(kinks)[1]))

rng = np.random.default_rng(0)
x = rng.uniform(-5, 5, (3, 4, 5))
x[np.abs(np.abs(x) - 3) < 0.1] += 0.2  # away from the kinks at -3 and 3
dout = rng.standard_normal(x.shape)
errors = {}
with mm.kernels.use("loops"):
    for name, forward, backward in (
            ("hard-swish", mm.ops.hardswish_forward, mm.ops.hardswish_backward),
            ("hard-sigmoid", mm.ops.hardsigmoid_forward, mm.ops.hardsigmoid_backward)):
        dx = backward(dout, forward(x)[1])
        errors[name] = ex.gradient_errors(lambda: forward(x)[0], {"x": (x, dx)}, dout)["x"]
print({name: f"{e:.1e}" for name, e in errors.items()})
assert max(errors.values()) < 1e-7

# %% [markdown]
# **Exercise**: `hardswish_forward` / `_backward` and `hardsigmoid_forward` / `_backward`, part 1
# of [`exercises/ex04_mobilenet_v3.py`](../exercises/ex04_mobilenet_v3.py).
#
# ### Is hard-swish faster than swish?
#
# The paper's reason for hard-swish is speed (and quantisation) on mobile hardware. On this
# CPU, both written the same way in NumPy, on one activation map of a V3 block, each timed
# after a warm-up, median of repeated runs with the spread:

# %%
x = np.random.default_rng(1).standard_normal((32, 96, 16, 16)).astype(np.float32)
repeats = 3 if QUICK else 21
swish_np = lambda: x / (1 + np.exp(-x))
hswish_np = lambda: x * np.clip(x + 3, 0, 6) / 6
hswish_mm = lambda: mm.ops.hardswish_forward(x)
for name, f in (("swish, NumPy", swish_np), ("hard-swish, NumPy", hswish_np),
                ("hard-swish, minimobile op", hswish_mm)):
    t = ex.time_callable(f, repeats=repeats, warmup=2)
    print(f"{name:<26} {t.ms:7.3f} ms (runs {1e3 * min(t.samples):.3f} to {1e3 * max(t.samples):.3f})")

# %% [markdown]
# Whatever the ratio printed above, it is one CPU's: `exp` is a vectorised library call here,
# while on the phones and accelerators the paper targets, and in int8 arithmetic, a sigmoid is
# much dearer than a clip. The paper's gain is measured on its hardware (Section 5.2), not on
# this one.
#
# ## Squeeze-and-excite
#
# A squeeze-excite layer computes one gate per channel from the whole map: global average pool
# (squeeze), a 1×1 conv down to a quarter of the channels, ReLU, a 1×1 conv back up,
# hard-sigmoid (excite), and multiplies each channel by its gate. The gate depends on $x$, so the
# backward sums two paths to $x$: through the scaling and through the pooling
# (`SqueezeExcitation.backward`).

# %%
rng = np.random.default_rng(0)
se = mm.SqueezeExcitation(16, 4, rng=rng, dtype=np.float64)  # down to a quarter, 16 -> 4
x = rng.uniform(0.5, 1.5, (2, 16, 5, 5))  # positive, so out / x reads off each gate
out = se.forward(x)
gates = (out / x)[:, :, 0, 0]
assert np.allclose(out / x, gates[:, :, None, None])  # one gate per image and channel
print("gates of image 0:", np.round(gates[0], 3))
errors = ex.gradient_check_module(se, x, rng, count=10 if QUICK else 40)
print(f"squeeze-excite gradient check: largest relative error {max(errors.values()):.2e}")
assert max(errors.values()) < 1e-6

# %% [markdown]
# ### Its backward: two paths into $x$
#
# Write $y = x \odot s$ with one gate $s_{nc}$ per image and channel, and
# $s = \mathrm{hsigmoid}(W_2\, \mathrm{ReLU}(W_1 z + b_1) + b_2)$ of the pooled $z_{nc} = \frac{1}{HW}\sum_{hw} x_{nchw}$.
# The input is used twice, so its gradient is the sum of two paths:
#
# 1. **through the scaling**, with the gate held fixed: $\;\partial L/\partial x_{nchw} \mathrel{+}= g_{nchw}\, s_{nc}$;
# 2. **through the gate**: the gate's gradient is $\partial L/\partial s_{nc} = \sum_{hw} g_{nchw}\, x_{nchw}$;
#    it goes back through hard-sigmoid, `fc2`, ReLU and `fc1` to $\partial L/\partial z_{nc}$, and the
#    average pool spreads it evenly: $\;\partial L/\partial x_{nchw} \mathrel{+}= \frac{1}{HW}\, \partial L/\partial z_{nc}$.
#
# The second path is the same for every pixel of a channel. The layer's code
# (`minimobile/layers.py`; `scale_channels_backward` returns both `dout * s` and
# $\sum_{hw}$ `dout * x`):

# %%
ex.show_source(mm.SqueezeExcitation.backward)
rng = np.random.default_rng(2)
se = mm.SqueezeExcitation(16, 4, rng=rng, dtype=np.float64)
x = rng.standard_normal((2, 16, 5, 5))
with mm.layers.no_grad():  # the gates alone, leaving no caches behind
    gates = se.scale_activation(se.fc2(se.activation(se.fc1(se.avgpool(x)))))  # (N, C, 1, 1)
out = se.forward(x)
dout = rng.standard_normal(out.shape)
dx = se.backward(dout)
through_scale = dout * gates
through_gate = dx - through_scale
spread = np.ptp(through_gate, axis=(2, 3)).max()
print(f"largest |path 1, through the scaling| {np.abs(through_scale).max():.3f}")
print(f"largest |path 2, through the gate|    {np.abs(through_gate).max():.3f}, "
      f"constant over each channel's pixels to {spread:.1e}")
assert spread < 1e-12

# %% [markdown]
# **Exercise**: `SqueezeExcitation.forward` / `.backward`, part 2 of
# [`exercises/ex04_mobilenet_v3.py`](../exercises/ex04_mobilenet_v3.py).
#
# ## The bneck block
#
# V3's block (`mm.blocks.Bneck`) is V2's inverted residual with a choice of kernel (3 or 5),
# activation (ReLU or hard-swish) and squeeze-excite after the depthwise conv. One row of V3's
# table is its arguments: input channels, kernel, expanded channels, output channels, SE,
# activation, stride.

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 5.5))
ex.plot_block_diagram(axes[0], [("input", 24), ("1x1 expand, BN, hard-swish", 96),
                                ("5x5 depthwise, BN, hard-swish", 96),
                                ("squeeze-excite: x * gate(x)", 96), ("1x1 project, BN (linear)", 24)],
                      skip=True, title="bneck(24, 5, 96, 24, SE, HS, stride 1)")
ex.plot_block_diagram(axes[1], [("input", 16), ("3x3 depthwise stride 2, BN, ReLU", 16),
                                ("squeeze-excite: x * gate(x)", 16), ("1x1 project, BN (linear)", 16)],
                      title="V3-Small's first: bneck(16, 3, 16, 16, SE, RE, stride 2),\n"
                            "no expansion (expanded = input)")
plt.show()

# %%
rng = np.random.default_rng(1)
bneck = mm.blocks.Bneck(24, 5, 96, 24, True, "HS", 1, rng=rng, dtype=np.float64)
mm.gradcheck.randomize_batchnorm(bneck, rng)
print(bneck)
x = rng.standard_normal((4, 24, 6, 6))
errors = ex.gradient_check_module(bneck, x, rng, count=10 if QUICK else 40)
print(f"bneck gradient check over {len(errors)} arrays: largest relative error {max(errors.values()):.2e}")
assert max(errors.values()) < 1e-6

# %% [markdown]
# The batch norms print `eps=0.001, momentum=0.01`, not PyTorch's defaults (1e-5, 0.1): V3 in
# torchvision builds its batch norms with these values, and minimobile copies them so that
# torchvision's weights load and behave the same (`minimobile/models.py`). A smaller momentum
# averages the running statistics over more batches: a batch $k$ steps old weighs
# $m (1 - m)^k$, so the mean age of what the running statistics hold is $(1 - m)/m$ batches:

# %%
for m in (0.1, 0.01):
    print(f"momentum {m}: running statistics average over about {(1 - m) / m:.0f} batches")

# %% [markdown]
# ## V3-Small against V3-Large
#
# Both at 224×224 and width 1.0, beside the V3 paper's figures. The paper disagrees with itself
# here: its Table 3 prints 56 M and 219 M multiply-adds for Small and Large, its Table 9
# (Appendix A) 57 M and 217 M; the README and notebook 07 quote Table 3. Both are shown. Large
# has more and wider blocks; Small reaches stride 16 sooner and uses squeeze-excite in most of
# its blocks.

# %%
from minimobile.models import V3_LARGE_SETTING, V3_SMALL_SETTING
nets = {"v3-small": (mm.mobilenet_v3_small(seed=0), V3_SMALL_SETTING),
        "v3-large": (mm.mobilenet_v3_large(seed=0), V3_LARGE_SETTING)}
profiles = {}
for name, (model, setting) in nets.items():
    profiles[name] = prof = mm.cost.profile(model, (3, 224, 224))
    paper = next(r for r in ex.V3_TABLE_9 if r[:3] == (name, 1.0, 224))
    print(f"{name}: {len(setting)} bneck blocks ({sum(r[4] for r in setting)} with SE, "
          f"{sum(r[5] == 'HS' for r in setting)} with hard-swish); "
          f"{prof.macs / 1e6:.2f} M MACs (V3 paper, Table 3: {ex.V3_TABLE_3[name][0]} M, "
          f"Table 9: {paper[3]} M), {prof.params / 1e6:.2f} M params "
          f"(Table 3: {ex.V3_TABLE_3[name][1]} M, Table 9: {paper[4]} M)")

fig, axes = plt.subplots(1, 2, figsize=(13, 4))
for ax, (name, prof) in zip(axes, profiles.items()):
    per_block = {}
    for row in prof.rows:
        if row.macs == 0:
            continue  # batch norm, activations, pooling
        key = ".".join(row.name.split(".")[:2]) if row.name.startswith("features") else "classifier"
        per_block[key] = per_block.get(key, 0) + row.macs
    ax.bar(range(len(per_block)), np.array(list(per_block.values())) / 1e6)
    ax.set_xticks(range(len(per_block)))
    ax.set_xticklabels([k.replace("features.", "") for k in per_block], rotation=90, fontsize=7)
    ax.set(title=f"{name}: multiply-adds (M) per block", xlabel="features.i / classifier")
plt.show()
for name, (model, _) in nets.items():
    print(name, ", ".join(f"{s.label} {s.macs_share:.1f} %" for s in ex.cost_by_layer_type(model)))
