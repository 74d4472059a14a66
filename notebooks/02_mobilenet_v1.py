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
# **Exercise**: [`exercises/ex02_mobilenet_v1.py`](../exercises/ex02_mobilenet_v1.py) (build the depthwise separable block and V1 from its table). Check your answers with `pytest exercises -m ex02`.

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
# ## The per-layer cost table
#
# `mm.cost.profile` runs one 224×224 image through the network and records every leaf layer's
# output shape, parameters and multiply-adds (the table `minimobile summary v1` prints):

# %%
prof = mm.cost.profile(model, (3, 224, 224))
print(prof.format_table())
_, paper_macs, paper_params = ex.V1_TABLE_6[1.0]
print(f"\npaper (V1 Table 6, 1.0 MobileNet-224): {paper_macs} M multiply-adds, {paper_params} M parameters")

# %% [markdown]
# ## Where the multiply-adds and the parameters go
#
# The same rows, summed per block. The early blocks work on large maps with few channels, the
# late ones on small maps with many channels: multiply-adds scale with channels × map area,
# parameters with channels² only, so the two end up in different places.

# %%
modules = dict(model.named_modules())
blocks = ["features.0"] + [f"features.{i}" for i in range(1, 14)] + ["classifier"]
macs = {b: {"dw": 0, "pw": 0, "other": 0} for b in blocks}
params = {b: {"dw": 0, "pw": 0, "other": 0} for b in blocks}
for row in prof.rows:
    if not row.name.startswith(tuple(b + "." for b in blocks)):
        continue  # the pooling and flatten layers, which cost nothing
    block = next(b for b in blocks if row.name.startswith(b + "."))
    label = ex.layer_type_label(modules[row.name])
    part = "dw" if label == "Conv DW 3x3" else "pw" if label == "Conv 1x1" else "other"
    macs[block][part] += row.macs
    params[block][part] += row.params

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
