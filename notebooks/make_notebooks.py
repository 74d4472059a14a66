"""Write notebooks 01 to 06 from the cell texts below (unexecuted; run_notebooks.py runs them).

    python notebooks/make_notebooks.py            # rewrite all six
    python notebooks/make_notebooks.py 03 05      # only these

Notebooks hold no library code: every helper they call lives in minimobile (most of the
experiments in minimobile/experiments.py). Editing the cells here and regenerating keeps the
six notebooks' first cells identical and their diffs readable.
"""

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = '''\
%load_ext autoreload
%autoreload 2
import os

import matplotlib.pyplot as plt
import numpy as np

import minimobile as mm
from minimobile import experiments as ex

# Quick mode (MINIMOBILE_QUICK=1, set by tests/test_notebooks.py): small sizes, few repetitions,
# so that the test suite runs every notebook in seconds. Leave it unset to run the real thing.
QUICK = os.environ.get("MINIMOBILE_QUICK") == "1"
print("quick mode" if QUICK else "full mode", "| Numba threads:", mm.get_num_threads())'''


def exercise(number, name, topic):
    return (f"**Exercise**: [`exercises/ex{number}_{name}.py`](../exercises/ex{number}_{name}.py) "
            f"({topic}). Check your answers with `pytest exercises -m ex{number}`.")


def md(text):
    return new_markdown_cell(text.strip("\n"))


def code(text):
    return new_code_cell(text.strip("\n"))


# ---------------------------------------------------------------------------------------------
NB01 = [
    md(r"""
# 01 · The depthwise separable convolution: what it saves, on paper and in time

A MobileNet V1 is a stack of *depthwise separable* convolutions. This notebook derives what
they cost against a standard convolution, checks the formula against minimobile's
multiply-add counter (`minimobile.cost.profile`), reproduces two tables of the V1 paper
(Howard et al. 2017, arXiv:1704.04861), and then measures how much of the saving survives on a
real CPU.

""" + exercise("01", "depthwise_separable", "count the multiply-adds, then write the depthwise "
               "and pointwise convolutions and their gradients yourself")),
    code(SETUP),
    md(r"""
## The cost ratio

A standard convolution with $M$ input channels, $N$ output channels and a $D_K \times D_K$
kernel, on a $D_F \times D_F$ map (stride 1, 'same' padding), computes every output value as a
sum over $D_K^2 M$ products:

$$\text{standard} = D_K^2 \, M \, N \, D_F^2 .$$

The depthwise separable convolution splits it in two. A **depthwise** convolution filters each
input channel with its own $D_K \times D_K$ kernel ($D_K^2$ products per output value, $M$
channels), then a **pointwise** ($1 \times 1$) convolution mixes the channels ($M$ products per
output value, $N$ channels):

$$\text{separable} = D_K^2 \, M \, D_F^2 + M \, N \, D_F^2 .$$

Dividing,

$$\frac{\text{separable}}{\text{standard}} = \frac{D_K^2 M D_F^2 + M N D_F^2}{D_K^2 M N D_F^2}
= \frac{1}{N} + \frac{1}{D_K^2}.$$

It depends on neither $M$ nor $D_F$. With $D_K = 3$ and a few hundred output channels the
separable version needs between 8 and 9 times fewer multiply-adds, the paper's Section 3.1.
The parameters follow the same ratio, with $D_F^2$ removed from both.

## Counted against the formula

`ex.separable_cost` builds a `Conv2d` and a `DepthwiseConv2d` + `PointwiseConv2d` pair and runs
`minimobile.cost.profile` on both, which counts what every layer actually computes in a forward
pass. The ratio is compared as an exact fraction, so "agree" means equal, not close.
"""),
    code('''
c_outs = [16, 32, 64, 128, 256, 512, 1024]
kernel_sizes = [3, 5, 7]
grid = ex.separable_cost_grid(c_outs, kernel_sizes, C_in=32, size=8)
print(f"{'K':>2} {'C_out':>6} {'standard MACs':>14} {'separable MACs':>15} {'counted':>9} {'1/N + 1/K^2':>12}")
for c in grid:
    print(f"{c.K:>2} {c.C_out:>6} {c.standard_macs:>14,} {c.separable_macs:>15,} "
          f"{float(c.counted_ratio):>9.5f} {float(c.theoretical_ratio):>12.5f}")
assert all(c.counted_ratio == c.theoretical_ratio for c in grid)
print("counted == theoretical, exactly, for all", len(grid), "settings")
'''),
    code('''
fig, ax = plt.subplots(figsize=(7, 4))
for K in kernel_sizes:
    rows = [c for c in grid if c.K == K]
    n = np.geomspace(16, 1024, 200)
    line, = ax.plot(n, 1 / n + 1 / K**2, label=f"1/N + 1/{K * K} (K={K})")
    ax.plot([c.C_out for c in rows], [float(c.counted_ratio) for c in rows], "o",
            color=line.get_color(), label=f"counted by profile, K={K}")
ax.set(xscale="log", yscale="log", xlabel="output channels N", ylabel="separable / standard MACs",
       title="Cost ratio: counted against theory")
ax.legend(fontsize=8)
plt.show()
'''),
    md(r"""
## The V1 paper's Table 3: one 14×14×512 layer

Table 3 of the paper follows one internal layer ($D_K = 3$, $M = N = 512$, $D_F = 14$) through
the changes the paper makes, each row adding to the one before: the standard conv, the
depthwise separable conv, width multiplier $\alpha = 0.75$ (384 channels), and resolution
multiplier $\rho = 0.714$ (10×10 maps). The counter's numbers, in millions, beside the paper's:
"""),
    code('''
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
'''),
    md(r"""
## The V1 paper's Table 2: where a whole MobileNet's multiply-adds are

The paper's Table 2 sums the cost of the full network (224×224, width 1.0) by layer type and
finds about 95 % of the multiply-adds in the 1×1 convolutions. `ex.cost_by_layer_type` does the
same sum over `profile`'s rows (batch norm's parameters left out, as in the paper, whose four
rows are the only ones):
"""),
    code('''
shares = ex.cost_by_layer_type(mm.mobilenet_v1(seed=0))
print(f"{'layer type':<16} {'MACs %':>8} {'paper':>7} {'params %':>9} {'paper':>7}")
for s in shares:
    paper_macs, paper_params = ex.V1_TABLE_2[s.label]
    print(f"{s.label:<16} {s.macs_share:>8.2f} {paper_macs:>7} {s.params_share:>9.2f} {paper_params:>7}")
print(f"{'sum':<16} {sum(s.macs_share for s in shares):>8.2f} "
      f"{sum(m for m, _ in ex.V1_TABLE_2.values()):>7.2f}")
'''),
    md(r"""
The 1×1, depthwise and fully connected rows agree with the paper to its two decimals. The
3×3 row (the stem) does not: the paper prints 1.19 %, but then its column sums to 99.29 %
(printed above); the count gives the same digits in the other order, and its column sums to
100 %. The parameter shares differ in the second decimal because minimobile counts the
classifier's 1,000 biases, which the paper's shares leave out.

## Does time fall as far as the multiply-adds?

Now the same two layers, timed: forward, and forward + backward (what a training step pays),
in float32 on a batch of images, with minimobile's Numba kernels and BLAS. Each time is the
median of several runs (`ex.time_callable`), after a warm-up run.
"""),
    code('''
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
                        dw_f=dw_f.ms, pw_f=pw_f.ms))
print(f"batch {N}, {C_in} input channels, {size}x{size} maps, K={K}, median of {repeats}; ms")
print(f"{'C_out':>6} {'std fwd':>8} {'sep fwd':>8} {'std f+b':>8} {'sep f+b':>8} "
      f"{'MAC ratio':>9} {'fwd ratio':>9} {'f+b ratio':>9}")
for t in timings:
    print(f"{t['C_out']:>6} {t['std_f']:>8.2f} {t['sep_f']:>8.2f} {t['std_fb']:>8.2f} "
          f"{t['sep_fb']:>8.2f} {t['flop_ratio']:>9.3f} {t['sep_f'] / t['std_f']:>9.3f} "
          f"{t['sep_fb'] / t['std_fb']:>9.3f}")
'''),
    md(r"""
PyTorch, if it is installed (it is optional: `pip install -e ".[torch]"`), times the same
shapes with its own kernels, on the same number of threads, for comparison:
"""),
    code('''
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
'''),
    code('''
fig, ax = plt.subplots(figsize=(6, 5))
flop = [t["flop_ratio"] for t in timings]
ax.plot(flop, [t["sep_f"] / t["std_f"] for t in timings], "o-", label="minimobile, forward")
ax.plot(flop, [t["sep_fb"] / t["std_fb"] for t in timings], "s-", label="minimobile, forward+backward")
if torch is not None:
    ax.plot(flop, [t["torch"]["sep_fb"] / t["torch"]["std_fb"] for t in timings], "^--",
            label="PyTorch, forward+backward")
lims = [min(flop) * 0.8, 1.5]
ax.plot(lims, lims, "k:", label="time ratio = MAC ratio")
ax.set(xscale="log", yscale="log", xlabel="separable / standard multiply-adds",
       ylabel="separable / standard time", title="Measured time ratio against MAC ratio")
ax.legend(fontsize=8)
plt.show()
'''),
    md(r"""
## Why time does not fall as far

Points above the dotted line mean the separable pair saves less time than multiply-adds. The
two halves of the pair explain it. Below, each layer's forward throughput (multiply-adds per
second) and its *arithmetic intensity*, the multiply-adds it does per byte it must read or
write at least once (input, output and weights in float32):

- the **depthwise** conv does only $D_K^2 = 9$ multiply-adds per input value it reads and per
  output value it writes. Its speed is set by how fast memory delivers the maps, not by the
  arithmetic units: it is *memory-bound*;
- the **pointwise** conv is a matrix product, $(N \times M) \cdot (M \times D_F^2)$ per image,
  with up to $M$ multiply-adds per value moved; BLAS keeps blocks of the operands in registers
  and cache, so arithmetic rather than memory sets its speed, as for the standard conv (an
  im2col matrix product).

So the separable pair replaces one large, efficient matrix product by a smaller one plus a
pass that moves as many bytes as the smaller product but does little arithmetic on them.
"""),
    code('''
t = timings[-1]
C_out = t["C_out"]
pixels = N * size * size
dw_macs, pw_macs = pixels * C_in * K * K, pixels * C_in * C_out
std_macs = pixels * C_in * C_out * K * K
# Bytes each layer must at least read and write once: input, output and weights, float32.
bytes_dw = 4 * (2 * pixels * C_in + C_in * K * K)
bytes_pw = 4 * (pixels * (C_in + C_out) + C_in * C_out)
bytes_std = 4 * (pixels * (C_in + C_out) + C_in * C_out * K * K)
# What this machine's memory delivers to a plain copy of the same input: the ceiling for a
# layer that only streams its data through.
buffer = np.empty_like(x)
copy = ex.time_callable(lambda: np.copyto(buffer, x), repeats=max(repeats, 5))
copy_rate = 2 * x.nbytes / copy.median / 1e9
print(f"at C_out = {C_out}; a plain copy of x moves {copy_rate:.1f} GB/s")
print(f"{'layer':<14} {'GMAC/s':>7} {'GB/s':>6} {'MACs/byte':>9} {'% of pair MACs':>14} {'% of pair time':>14}")
pair_ms = t["dw_f"] + t["pw_f"]
for name, macs, nbytes, ms in (("depthwise 3x3", dw_macs, bytes_dw, t["dw_f"]),
                               ("pointwise 1x1", pw_macs, bytes_pw, t["pw_f"]),
                               ("standard 3x3", std_macs, bytes_std, t["std_f"])):
    pair = name != "standard 3x3"
    print(f"{name:<14} {macs / ms / 1e6:>7.2f} {nbytes / ms / 1e6:>6.1f} {macs / nbytes:>9.1f} "
          f"{100 * macs / (dw_macs + pw_macs) if pair else float('nan'):>14.1f} "
          f"{100 * ms / pair_ms if pair else float('nan'):>14.1f}")
above = [t["C_out"] for t in timings if t["sep_fb"] / t["std_fb"] > t["flop_ratio"]]
print(f"forward+backward time ratio above the MAC ratio at C_out = {above}" if above else
      "forward+backward time ratio at or below the MAC ratio everywhere in this run")
'''),
    md(r"""
How to read this table: a layer whose GB/s comes close to the plain copy's, while its GMAC/s
stays far below the matrix products', is limited by memory traffic, not arithmetic. With only
$D_K^2 = 9$ multiply-adds per value, the depthwise conv is the layer expected there (the table
shows whether it is, on the machine that ran this); the pointwise and standard convs do many
more multiply-adds per byte. Where the depthwise conv's share of the
pair's time exceeds its share of the multiply-adds, the pair saves less time than
arithmetic, and the measured ratios sit above the dotted line. The 1/N + 1/K² formula counts
arithmetic; a CPU also pays for memory. (Timings depend on the machine and on what else runs
on it: rerun the cells to see the spread.)
"""),
]

# ---------------------------------------------------------------------------------------------
NB02 = [
    md(r"""
# 02 · MobileNet V1

MobileNet V1 (Howard et al. 2017, Table 1) is a 3×3 stem convolution followed by thirteen
depthwise separable blocks (3×3 depthwise + batch norm + ReLU, then 1×1 pointwise + batch norm +
ReLU), global average pooling and one fully connected layer. This notebook builds it, reads its
per-layer cost table, finds where its multiply-adds and parameters go, and takes one block
apart: forward, backward, and a gradient check.

""" + exercise("02", "mobilenet_v1", "build the depthwise separable block and V1 from its table")),
    code(SETUP),
    md("""
## Building it

`mm.mobilenet_v1()` reads the architecture table `V1_SETTING` at the top of
`minimobile/models.py`: one row `(out_channels, stride)` per block.
"""),
    code('''
from minimobile.models import V1_SETTING
print("blocks (out_channels, stride):", V1_SETTING)
model = mm.mobilenet_v1(seed=0)  # ImageNet: 1000 classes, 224x224 inputs
print(model.features[1])  # the first depthwise separable block
'''),
    md("""
## The per-layer cost table

`mm.cost.profile` runs one 224×224 image through the network and records every leaf layer's
output shape, parameters and multiply-adds (the table `minimobile summary v1` prints):
"""),
    code('''
prof = mm.cost.profile(model, (3, 224, 224))
print(prof.format_table())
_, paper_macs, paper_params = ex.V1_TABLE_6[1.0]
print(f"\\npaper (V1 Table 6, 1.0 MobileNet-224): {paper_macs} M multiply-adds, {paper_params} M parameters")
'''),
    md("""
## Where the multiply-adds and the parameters go

The same rows, summed per block. The early blocks work on large maps with few channels, the
late ones on small maps with many channels: multiply-adds scale with channels × map area,
parameters with channels² only, so the two end up in different places.
"""),
    code('''
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
'''),
    md("""
The pointwise convolutions dominate both columns (notebook 01 compares these shares with the
paper's Table 2). The depthwise convolutions are cheap in both.

On CIFAR-10 the network runs on 32×32 images: minimobile's CIFAR variant (`cifar=True`) keeps
the stem at stride 1 so the maps do not shrink to nothing. Its cost, at the width trained in
the README:
"""),
    code('''
cifar = mm.cost.profile(mm.mobilenet_v1(num_classes=10, width_mult=0.5, cifar=True, seed=0), (3, 32, 32))
print(f"V1 width 0.5, CIFAR variant, 32x32: {cifar.params:,} parameters, {cifar.macs / 1e6:.2f} M multiply-adds")
'''),
    md(r"""
## One block, forward and backward

A `DepthwiseSeparable` block holds two `ConvBNActivation` children, `dw` and `pw`. Its forward
is `pw(dw(x))`; its backward runs the children's backwards in reverse:
`dx = dw.backward(pw.backward(dout))`. In float64 (for the gradient check below), with batch
norm given a random affine map (`randomize_batchnorm`: at the initial γ = 1, β = 0 some
gradients are too small to measure against rounding):
"""),
    code('''
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
'''),
    md(r"""
## The gradient check

Is that backward right? `ex.gradient_check_module` compares it with central differences of
$\sum f(x) \odot d\text{out}$ (the gradient a backward pass must return) for the input and for
every parameter, at sampled entries, and reports the relative error of each (largest absolute
difference over largest magnitude; `minimobile.gradcheck`). A correct float64 backward gives
errors around 1e-8 or below; a wrong one, errors of order 1.
"""),
    code('''
errors = ex.gradient_check_module(block, x, rng, count=10 if QUICK else 40)
for name, err in errors.items():
    print(f"{name:<14} relative error {err:.2e}")
assert max(errors.values()) < 1e-6
'''),
]

# ---------------------------------------------------------------------------------------------
NB03 = [
    md(r"""
# 03 · MobileNet V2: the inverted residual and the linear bottleneck

MobileNet V2 (Sandler et al. 2018, arXiv:1801.04381) keeps the depthwise convolution but wraps
it differently. Each block **expands** a thin input with a 1×1 convolution (by the expansion
ratio $t$, usually 6), filters it with a 3×3 depthwise convolution, and **projects** it back to
a thin output with a 1×1 convolution that has *no activation*: the linear bottleneck. When the
input and output have the same shape, a residual connection adds the input to the output,
between the thin ends: the *inverted* residual (ResNet's bottleneck joins the wide ends).

""" + exercise("03", "mobilenet_v2", "the inverted residual block, its backward, and V2")),
    code(SETUP),
    code('''
rng = np.random.default_rng(0)
block = mm.blocks.InvertedResidual(24, 24, stride=1, expand_ratio=6, rng=rng)
print(block)
prof = mm.cost.profile(block, (24, 56, 56))
print(prof.format_table())
'''),
    md(r"""
The 24-channel tensors at either end are what the network carries from block to block (and
stores for the backward pass); the 144-channel expansion exists only inside the block.

## Why the projection must be linear: the V2 paper's Figure 1

The paper's argument: the information a layer carries lies on a low-dimensional manifold
inside its channels. Figure 1 embeds a 2-D spiral into $n$ dimensions with a random matrix $T$,
applies ReLU, and projects back with $T^{-1}$ (the pseudo-inverse for $n > 2$). For small $n$
the ReLU destroys part of the spiral; for $n = 15$ or $30$ the shape survives.

The reason is exact: from $y = \mathrm{ReLU}(Tx)$ the point $x$ can be recovered whenever the
rows of $T$ that $x$ activates ($T_i x > 0$) still span the plane, because those coordinates
are linear in $x$. `ex.relu_recoverable` tests that for every point; points where it fails are
drawn in red below.
"""),
    code('''
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
'''),
    code('''
seeds = 5 if QUICK else 50
print(f"share of the spiral's points recoverable after ReLU, mean over {seeds} random T:")
for n in dims:
    kept = [ex.relu_recoverable(points, ex.random_embedding(n, np.random.default_rng(s))).mean()
            for s in range(seeds)]
    print(f"  n = {n:>2}: {100 * np.mean(kept):5.1f} %")
T = ex.random_embedding(2, np.random.default_rng(0))
print("without ReLU (a linear map), n = 2: round-trip error",
      ex.roundtrip_error(points, ex.relu_roundtrip(points, T, relu=False)))
'''),
    md(r"""
So a ReLU is safe in the *wide* part of the block (after the expansion, where the manifold
occupies a small part of many channels), and destroys information in the *narrow* part. V2
therefore applies ReLU6 after the expansion and after the depthwise conv, and none after the
projection to the bottleneck: in minimobile, `InvertedResidual.conv` ends with a
`PointwiseConv2d` and a `BatchNorm2d`, and nothing after them.

## The residual and its gradient

With `use_res_connect` (stride 1, same channels) the block computes $y = x + F(x)$. The
gradient reaches $x$ along both paths and the two add:

$$\frac{\partial L}{\partial x} = \frac{\partial L}{\partial y} + \Big(\frac{\partial F}{\partial x}\Big)^{\!\top} \frac{\partial L}{\partial y}.$$

In code, `InvertedResidual.backward` is `dx = self.conv.backward(dout) + dout`. Checked
directly, then against central differences:
"""),
    code('''
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
'''),
    md("""
## The whole network

V2 stacks 17 such blocks (its table is `V2_SETTING` in `minimobile/models.py`). Its cost at
224×224 beside the paper's Table 4:
"""),
    code('''
prof = mm.cost.profile(mm.mobilenet_v2(seed=0), (3, 224, 224))
paper = next(row for row in ex.V2_TABLE_4 if row[:2] == ("v2", 1.0))
print(f"minimobile: {prof.macs / 1e6:.2f} M multiply-adds, {prof.params / 1e6:.2f} M parameters")
print(f"V2 paper, Table 4: {paper[2]} M multiply-adds, {paper[3]} M parameters")
'''),
]

# ---------------------------------------------------------------------------------------------
NB04 = [
    md(r"""
# 04 · MobileNet V3: hard-swish, squeeze-excite and the bneck block

MobileNet V3 (Howard et al. 2019, arXiv:1905.02244) keeps V2's inverted residual, adds
squeeze-and-excite to some blocks, and replaces ReLU by **hard-swish** in the deeper half. Its
two networks, Large and Small, were found by architecture search and then hand-tuned.

""" + exercise("04", "mobilenet_v3", "hard-swish, hard-sigmoid, squeeze-excite and the bneck block")),
    code(SETUP),
    md(r"""
## Hard-swish against swish, hard-sigmoid against sigmoid

Swish is $x \, \sigma(x)$. Its sigmoid is costly on mobile hardware, so V3 replaces it by a
piecewise-linear version, $\mathrm{hsigmoid}(x) = \mathrm{ReLU6}(x + 3)/6$, and
$\mathrm{hswish}(x) = x \, \mathrm{ReLU6}(x + 3)/6$. Below, minimobile's ops
(`mm.ops.hardswish_forward` and `_backward`, likewise hard-sigmoid), beside the smooth
functions written out with NumPy:
"""),
    code('''
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
'''),
    md(r"""
The hard versions are exact zeros left of −3 and the identity (hard-swish) or 1 (hard-sigmoid)
right of +3; between, hard-swish is a parabola and hard-sigmoid a line of slope 1/6. Their
derivatives are piecewise constant or linear, with jumps at ±3: gradient checks must keep
their inputs away from those kinks (`minimobile.gradcheck`'s docstring).

## Squeeze-and-excite

A squeeze-excite layer computes one gate per channel from the whole map: global average pool
(squeeze), a 1×1 conv down to a quarter of the channels, ReLU, a 1×1 conv back up,
hard-sigmoid (excite), and multiplies each channel by its gate. The gate depends on $x$, so the
backward sums two paths to $x$: through the scaling and through the pooling
(`SqueezeExcitation.backward`).
"""),
    code('''
rng = np.random.default_rng(0)
se = mm.SqueezeExcitation(16, 8, rng=rng, dtype=np.float64)
x = rng.uniform(0.5, 1.5, (2, 16, 5, 5))  # positive, so out / x reads off each gate
out = se.forward(x)
gates = (out / x)[:, :, 0, 0]
assert np.allclose(out / x, gates[:, :, None, None])  # one gate per image and channel
print("gates of image 0:", np.round(gates[0], 3))
errors = ex.gradient_check_module(se, x, rng, count=10 if QUICK else 40)
print(f"squeeze-excite gradient check: largest relative error {max(errors.values()):.2e}")
assert max(errors.values()) < 1e-6
'''),
    md("""
## The bneck block

V3's block (`mm.blocks.Bneck`) is V2's inverted residual with a choice of kernel (3 or 5),
activation (ReLU or hard-swish) and squeeze-excite after the depthwise conv. One row of V3's
table is its arguments: input channels, kernel, expanded channels, output channels, SE,
activation, stride.
"""),
    code('''
rng = np.random.default_rng(1)
bneck = mm.blocks.Bneck(24, 5, 96, 24, True, "HS", 1, rng=rng, dtype=np.float64)
mm.gradcheck.randomize_batchnorm(bneck, rng)
print(bneck)
x = rng.standard_normal((4, 24, 6, 6))
errors = ex.gradient_check_module(bneck, x, rng, count=10 if QUICK else 40)
print(f"bneck gradient check over {len(errors)} arrays: largest relative error {max(errors.values()):.2e}")
assert max(errors.values()) < 1e-6
'''),
    md("""
## V3-Small against V3-Large

Both at 224×224 and width 1.0, beside the V3 paper's Table 9 (Appendix A). Large has more and
wider blocks; Small reaches stride 16 sooner and uses squeeze-excite in most of its blocks.
"""),
    code('''
from minimobile.models import V3_LARGE_SETTING, V3_SMALL_SETTING
nets = {"v3-small": (mm.mobilenet_v3_small(seed=0), V3_SMALL_SETTING),
        "v3-large": (mm.mobilenet_v3_large(seed=0), V3_LARGE_SETTING)}
profiles = {}
for name, (model, setting) in nets.items():
    profiles[name] = prof = mm.cost.profile(model, (3, 224, 224))
    paper = next(r for r in ex.V3_TABLE_9 if r[:3] == (name, 1.0, 224))
    print(f"{name}: {len(setting)} bneck blocks ({sum(r[4] for r in setting)} with SE, "
          f"{sum(r[5] == 'HS' for r in setting)} with hard-swish); "
          f"{prof.macs / 1e6:.2f} M MACs (V3 paper, Table 9: {paper[3]} M), "
          f"{prof.params / 1e6:.2f} M params (Table 9: {paper[4]} M)")

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
'''),
]

# ---------------------------------------------------------------------------------------------
NB05 = [
    md(r"""
# 05 · Width and resolution multipliers: multiply-adds, parameters and latency

The V1 paper introduces two knobs (Section 3.3 and 3.4). The **width multiplier** $\alpha$
scales every layer's channels ($M \to \alpha M$, $N \to \alpha N$); the **resolution
multiplier** $\rho$ scales the input image and so every map ($D_F \to \rho D_F$). A depthwise
separable layer then costs

$$D_K^2 \, \alpha M \, \rho^2 D_F^2 + \alpha M \, \alpha N \, \rho^2 D_F^2 ,$$

about $\alpha^2 \rho^2$ times the original, since the pointwise term dominates. Parameters
shrink about $\alpha^2$ and do not depend on $\rho$ at all.

""" + exercise("05", "multipliers", "predict the cost of a width and resolution from the formula, "
               "then check with the counter")),
    code(SETUP),
    md("""
## The V1 paper's Tables 6 and 7, counted

minimobile rounds channels to multiples of 8 (`make_divisible`, as torchvision does); for V1's
widths this gives exactly $\\alpha$ times each channel count.
"""),
    code('''
print("Table 6 (width, at 224)")
print(f"{'width':>6} {'M MACs':>9} {'paper':>6} {'M params':>9} {'paper':>6} {'MACs / alpha^2 MACs(1.0)':>25}")
base = mm.cost.profile(mm.mobilenet_v1(seed=0), (3, 224, 224))
for width, (_, paper_macs, paper_params) in ex.V1_TABLE_6.items():
    prof = mm.cost.profile(mm.mobilenet_v1(width_mult=width, seed=0), (3, 224, 224))
    print(f"{width:>6} {prof.macs / 1e6:>9.2f} {paper_macs:>6} {prof.params / 1e6:>9.2f} "
          f"{paper_params:>6} {prof.macs / (width ** 2 * base.macs):>25.3f}")
print("\\nTable 7 (resolution, at width 1.0)")
print(f"{'res':>6} {'M MACs':>9} {'paper':>6} {'M params':>9} {'paper':>6} {'MACs / rho^2 MACs(224)':>25}")
for res, (_, paper_macs, paper_params) in ex.V1_TABLE_7.items():
    prof = mm.cost.profile(mm.mobilenet_v1(seed=0), (3, res, res))
    print(f"{res:>6} {prof.macs / 1e6:>9.2f} {paper_macs:>6} {prof.params / 1e6:>9.2f} "
          f"{paper_params:>6} {prof.macs / ((res / 224) ** 2 * base.macs):>25.3f}")
'''),
    md(r"""
The counts agree with the paper's to within 1 M multiply-adds and 0.05 M parameters (the
paper's rounding varies: it prints 568.74 M as 569 but 290.68 M as 290). The last column shows
the $\alpha^2$ and $\rho^2$ rules are close but not exact: the depthwise term shrinks only as $\alpha$, and the
classifier does not shrink with $\rho$, so small widths cost a little more than $\alpha^2$
predicts.

## Latency on this CPU

Multiply-adds are a proxy; what a user waits for is time. `ex.latency_sweep` builds each
network at widths 0.25 to 1.4 (at 224×224) and at resolutions 128 to 192 (at width 1.0),
counts its multiply-adds, and times one batch-1 inference (eval mode, `no_grad`), the median
of several runs.
"""),
    code('''
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
print(f"batch 1, float32, {mm.get_num_threads()} Numba threads, median of {repeats}")
print(f"{'network':<9} {'width':>5} {'res':>4} {'M MACs':>8} {'M params':>9} {'ms':>8} {'paper ms (Pixel 1)':>19}")
for r in rows:
    paper = paper_ms.get((r.network, r.width, r.resolution))
    print(f"{r.network:<9} {r.width:>5} {r.resolution:>4} {r.macs / 1e6:>8.1f} {r.params / 1e6:>9.2f} "
          f"{r.ms:>8.2f} {'' if paper is None else paper:>19}")
print("paper ms: V2 paper Table 4 (v1 and v2), V3 paper Table 9 (v3); one large core of a Pixel 1, "
      "TF-Lite, where the paper lists that width and resolution")
'''),
    code('''
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
            title="papers: Pixel 1, one large core, TF-Lite\\n(V2 Table 4; V3 Table 9)")
for ax in axes:
    ax.legend()
plt.show()
'''),
    md(r"""
Read the two panels side by side. Latency is expected to grow with multiply-adds; the question
is whether the four networks fall on one line. At equal multiply-adds, a network with more
layers and more memory-bound work (depthwise convolutions, squeeze-excite, hard-swish) is
expected to take longer, as notebook 01 found for a single layer: the next cell prints each
network's time per multiply-add, here and in the papers. The V1 paper prints no latency; the
V2 paper's Table 4 gives V1's beside V2's. The papers timed TF-Lite on a phone core, so compare
shapes and ratios between networks, not milliseconds.
"""),
    code('''
print("microseconds per million multiply-adds at width 1.0, 224x224 (lower is more efficient):")
for name in builders:
    r = next(r for r in rows if (r.network, r.width, r.resolution) == (name, 1.0, 224))
    paper = paper_ms.get((name, 1.0, 224))
    paper_macs = next((p[2] for p in ex.V2_TABLE_4 if p[:2] == (name, 1.0)), None) or \\
        next((p[3] for p in ex.V3_TABLE_9 if p[:3] == (name, 1.0, 224)), None)
    print(f"  {name:<9} minimobile {1e3 * r.ms / (r.macs / 1e6):7.2f} us/M"
          + ("" if paper is None else f"   paper {1e3 * paper / paper_macs:7.2f} us/M"))
'''),
]

# ---------------------------------------------------------------------------------------------
NB06 = [
    md(r"""
# 06 · Training the four networks on CIFAR-10

Each network is trained from scratch with `mm.train.fit` and the standard CIFAR-10 recipe
(`TrainConfig`'s defaults: SGD with Nesterov momentum, cosine learning rate after a warm-up,
weight decay, label smoothing, random crop and flip). Then: learning curves, a confusion
matrix, predictions on test images, and a closing table of accuracy, cost and time.

**How long**: `EPOCHS` below (2 by default) epochs per network on the full 50,000 images. That
is enough to see the curves start, not to reach good accuracy: the README's run of V1 at width
0.5 took 42 epochs (70 minutes) to reach 85.8 %. Raise `EPOCHS` to train longer, or use the command line
(`minimobile train`), which writes checkpoints and can resume. The data come from
`load_cifar10()`: `$MINIMOBILE_DATA`, else `~/.cache/minimobile` (downloaded if missing). In
quick mode the notebook uses a tiny random stand-in written by `write_fake_cifar10`, so the
numbers it prints then mean nothing.

""" + exercise("06", "train_cifar10", "the training step, evaluation and the confusion matrix")),
    code(SETUP),
    code('''
import tempfile
from pathlib import Path

EPOCHS = 2  # per network; each epoch is one pass over the 50,000 training images
NETWORKS = [("v1", 0.5), ("v2", 0.5), ("v3-small", 1.0), ("v3-large", 0.5)]  # (model, width)
if QUICK:
    EPOCHS, BATCH = 1, 32
    root = tempfile.mkdtemp()
    mm.data.write_fake_cifar10(root, n_train_per_batch=20, n_test=40)
    data = mm.data.load_cifar10(root, download=False)
    out_root = Path(root) / "runs"
else:
    BATCH = 128
    data = mm.data.load_cifar10()
    out_root = Path("..") / "runs" / "notebook06"
print(data)
'''),
    code('''
results = {}
for name, width in NETWORKS:
    config = mm.train.TrainConfig(model=name, width=width, epochs=EPOCHS, batch_size=BATCH,
                                  out=str(out_root / f"{name}-w{width:g}"), seed=0)
    model = mm.train.build_model(name, width, cifar=True, seed=0)
    history = mm.train.fit(config, model=model, data=data, progress=False)
    results[name] = dict(width=width, model=model, history=history)
    last = history[-1]
    print(f"{name} width {width}: test accuracy {last['test_acc']:.4f} after {EPOCHS} epochs, "
          f"{np.mean([h['epoch_seconds'] for h in history]):.0f} s per epoch")
'''),
    md("## Learning curves"),
    code('''
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for name, r in results.items():
    epochs = [h["epoch"] for h in r["history"]]
    line, = axes[0].plot(epochs, [h["train_loss"] for h in r["history"]], "o-", label=f"{name} train")
    axes[0].plot(epochs, [h["test_loss"] for h in r["history"]], "s--", color=line.get_color(), label=f"{name} test")
    axes[1].plot(epochs, [100 * h["test_acc"] for h in r["history"]], "s-", color=line.get_color(), label=name)
axes[0].set(xlabel="epoch", ylabel="loss (label-smoothed cross-entropy)", title="loss")
axes[1].set(xlabel="epoch", ylabel="test accuracy (%)", title="test accuracy")
for ax in axes:
    ax.legend(fontsize=8)
plt.show()
'''),
    md("""
## Confusion matrix of the most accurate network

`evaluate` returns every test image's predicted class; `confusion_matrix` counts how often
class *i* (row) was predicted as class *j* (column).
"""),
    code('''
best = max(results, key=lambda n: results[n]["history"][-1]["test_acc"])
evaluation = mm.train.evaluate(results[best]["model"], data.x_test, data.y_test)
counts = mm.train.confusion_matrix(data.y_test, evaluation.predictions)
fig, ax = plt.subplots(figsize=(7, 6))
im = ax.imshow(counts, cmap="Blues")
ax.set_xticks(range(10)); ax.set_xticklabels(data.classes, rotation=45, ha="right")
ax.set_yticks(range(10)); ax.set_yticklabels(data.classes)
for i in range(10):
    for j in range(10):
        ax.text(j, i, counts[i, j], ha="center", va="center", fontsize=7,
                color="white" if counts[i, j] > counts.max() / 2 else "black")
ax.set(xlabel="predicted", ylabel="true", title=f"{best}: accuracy {100 * evaluation.accuracy:.2f} %")
plt.colorbar(im)
plt.show()
per_class = counts.diagonal() / np.maximum(counts.sum(axis=1), 1)
for c, acc in zip(data.classes, per_class):
    print(f"{c:<11} {100 * acc:5.1f} %")
'''),
    md("## Predictions on test images"),
    code('''
rng = np.random.default_rng(0)
shown = rng.choice(len(data.x_test), size=16, replace=False)
fig, axes = plt.subplots(2, 8, figsize=(16, 4.6))
for ax, i in zip(axes.flat, shown):
    ax.imshow(data.x_test[i].transpose(1, 2, 0))  # (3, 32, 32) -> (32, 32, 3)
    pred, true = evaluation.predictions[i], data.y_test[i]
    ax.set_title(f"{data.classes[pred]}\\n(true: {data.classes[true]})", fontsize=8,
                 color="green" if pred == true else "red")
    ax.axis("off")
plt.suptitle(f"{best}: predicted (true); green right, red wrong")
plt.show()
'''),
    md("""
## Accuracy, cost and time

Multiply-adds and parameters are those of the CIFAR variants at 32×32 (`mm.cost.profile`);
time per epoch is the mean wall time of an epoch (training and the test pass) in this run.
"""),
    code('''
print(f"{'network':<9} {'width':>5} {'test acc %':>10} {'M MACs':>8} {'params':>10} {'s/epoch':>8} {'img/s':>7}")
for name, r in results.items():
    prof = mm.cost.profile(r["model"], (3, 32, 32))
    h = r["history"]
    print(f"{name:<9} {r['width']:>5} {100 * h[-1]['test_acc']:>10.2f} {prof.macs / 1e6:>8.2f} "
          f"{prof.params:>10,} {np.mean([e['epoch_seconds'] for e in h]):>8.1f} "
          f"{np.mean([e['images_per_second'] for e in h]):>7.0f}")
'''),
]

NOTEBOOKS = {
    "01": ("01_depthwise_separable.ipynb", NB01),
    "02": ("02_mobilenet_v1.ipynb", NB02),
    "03": ("03_mobilenet_v2.ipynb", NB03),
    "04": ("04_mobilenet_v3.ipynb", NB04),
    "05": ("05_multipliers.ipynb", NB05),
    "06": ("06_train_cifar10.ipynb", NB06),
}


def write(number):
    filename, cells = NOTEBOOKS[number]
    for i, cell in enumerate(cells):
        cell.id = f"nb{number}-{i:02d}"  # fixed ids, so regenerating changes only what changed
    nb = new_notebook(cells=cells, metadata={
        "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
        "language_info": {"name": "python"}})
    nbformat.validate(nb)
    nbformat.write(nb, HERE / filename)
    print("wrote", HERE / filename)


if __name__ == "__main__":
    for number in sys.argv[1:] or NOTEBOOKS:
        write(number)
