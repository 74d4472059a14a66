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
# # 07 · Deployment: fold batch norm, export to ONNX, quantise to int8, measure latency
#
# A trained network is not yet a deployed one. This notebook takes a minimobile MobileNet the
# rest of the way with the steps a real deployment uses: batch norm folded into the convolutions
# (`minimobile.deploy`), the graph exported to ONNX and run in ONNX Runtime
# (`minimobile.onnx_export`), the weights and convolutions moved to 8-bit integers
# (`minimobile.quantize`, kernels in `minimobile/kernels/int8.py`), and the latency of it all
# measured at batch 1 (`benchmarks/bench_inference.py`).
#
# **Exercise**: [`exercises/ex07_deploy.py`](../exercises/ex07_deploy.py) (fold a batch norm into
# the convolution before it by hand, `fold_batchnorm`). Check your answers with
# `pytest exercises -m ex07`.

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
from pathlib import Path
import subprocess
import sys
import tempfile

from minimobile import deploy, quantize
from minimobile.gradcheck import randomize_batchnorm, relative_error
rng = np.random.default_rng(0)

# %% [markdown]
# ## Folding batch norm into the convolution
#
# At inference a batch norm no longer looks at the batch: it normalises each channel $c$ with the
# running statistics $\mu_c, \sigma_c^2$ gathered in training, then applies its affine map
# $\gamma_c, \beta_c$. The convolution before it (weights $W_c$, bias $b_c$, zero if it has none)
# is linear, so with $z_c = W_c * x + b_c$:
#
# $$
# y_c = \gamma_c \, \frac{z_c - \mu_c}{\sqrt{\sigma_c^2 + \epsilon}} + \beta_c
#     = \underbrace{s_c W_c}_{W'_c} * x \; + \; \underbrace{\beta_c + (b_c - \mu_c)\, s_c}_{b'_c},
# \qquad s_c = \frac{\gamma_c}{\sqrt{\sigma_c^2 + \epsilon}} .
# $$
#
# Every output channel of the convolution is scaled by its own $s_c$: for a standard or pointwise
# conv that is row $c$ of $W$ (shape $(C_\text{out}, C_\text{in}, K, K)$), for a depthwise conv
# the single filter $W_c$ (shape $(C, 1, K, K)$). The pair becomes one convolution with a bias,
# and a whole pass over the feature map (read $z$, write $y$) disappears. This holds only in eval
# mode: in training the statistics are the batch's and change with every batch.
#
# `deploy.fold_batchnorm` computes $W'$ and $b'$; the check below compares a depthwise conv
# followed by a batch norm with the folded conv, in float64.

# %%
C = 6
x = rng.standard_normal((2, C, 9, 9))
w = rng.standard_normal((C, 1, 3, 3))
gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(0, 1, C)
mean, var = rng.normal(0, 1, C), rng.uniform(0.1, 3, C)

z, _ = mm.ops.depthwise_conv2d_forward(x, w, stride=1, padding=1)
y, _ = mm.ops.batchnorm2d_inference_forward(z, gamma, beta, mean, var, eps=1e-5)
w_folded, b_folded = deploy.fold_batchnorm(w, None, gamma, beta, mean, var, eps=1e-5)
y_folded = mm.ops.depthwise_conv2d_forward(x, w_folded, stride=1, padding=1)[0] \
    + b_folded[:, None, None]
print(f"relative error, conv + BN against the folded conv: {relative_error(y, y_folded):.1e}")

# %% [markdown]
# `deploy.fuse(model)` does this for every (conv, batch norm) pair of a network and returns an
# inference copy. A network straight from its constructor has $\mu = 0$, $\sigma^2 = 1$,
# $\gamma = 1$, $\beta = 0$, for which folding is nearly the identity; so we first give every
# batch norm random statistics, as training would. Then: same logits (in float32, to rounding),
# fewer layers.

# %%
model = mm.mobilenet_v2(cifar=True, width_mult=0.5, seed=0)
randomize_batchnorm(model, rng)
for _, m in model.named_modules():
    if isinstance(m, mm.BatchNorm2d):
        m.buffers["running_mean"][...] = rng.normal(0, 0.5, m.buffers["running_mean"].shape)
        m.buffers["running_var"][...] = rng.uniform(0.5, 2.0, m.buffers["running_var"].shape)
model.eval()
fused = deploy.fuse(model)

x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
with mm.no_grad():
    logits, logits_fused = model.forward(x), fused.forward(x)
print(f"relative error of the fused logits (float32): {relative_error(logits, logits_fused):.1e}")
for label, m in (("as trained", model), ("fused", fused)):
    print(f"{label:<11} batch norms {deploy.count_layers(m, mm.BatchNorm2d):>3}   "
          f"modules {len(list(m.named_modules())):>4}")

# %% [markdown]
# ## Export to ONNX, run in ONNX Runtime
#
# ONNX is the exchange format deployment engines read. `onnx_export.to_onnx` walks the (fused)
# network and writes one ONNX node per layer with the `onnx` package's helper API: `Conv` (with
# `group = C` for a depthwise conv), `Relu`, `Clip(0, 6)` for ReLU6, `HardSwish`, `HardSigmoid`
# (with $\alpha = 1/6$, $\beta = 1/2$: ONNX's default $\alpha$ is 0.2, a classic export bug),
# `GlobalAveragePool`, `Flatten`, `Gemm`, `Add` for the skip connections and `Mul` for the
# squeeze-excite gate. The weights keep PyTorch's layouts, which are ONNX's too. The same is on the
# command line: `minimobile export runs/v1/best.npz model.onnx`. ONNX Runtime then runs the
# graph; its logits must equal minimobile's to 1e-4 (`tests/test_onnx_export.py` checks all four
# networks at 32x32 and 224x224).

# %%
try:
    import onnx
    import onnxruntime as ort
    from minimobile import onnx_export
except ImportError:
    onnx = None
    print('onnx or onnxruntime is missing: pip install -e ".[onnx]"')

if onnx is not None:
    path = Path(tempfile.mkdtemp()) / "mobilenet_v2.onnx"
    onnx_export.export(model, path)
    graph = onnx.load(str(path))
    onnx.checker.check_model(graph, full_check=True)
    kinds = [node.op_type for node in graph.graph.node]
    print(f"{path.name}: {path.stat().st_size:,} bytes, opset {graph.opset_import[0].version}, "
          f"{len(kinds)} nodes:", {k: kinds.count(k) for k in sorted(set(kinds))})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits_ort = session.run(None, {"input": x})[0]
    print(f"relative error, ONNX Runtime against minimobile: {relative_error(logits, logits_ort):.1e}")

# %% [markdown]
# ## Post-training int8 quantisation
#
# An int8 engine stores a real value $r$ as an 8-bit integer $q$ with $r \approx s\,q$ for a scale
# $s$ (symmetric: $q \in [-127, 127]$, the real 0 is the integer 0). The weights of output channel
# $o$ get their own scale $s_w[o] = \max |W_o| / 127$: after folding, channels differ in range by
# orders of magnitude, and one scale for the whole tensor would round the small ones to zero.
# The input of each convolution gets one scale per tensor, $s_x = \max|x| / 127$, measured by
# running a few hundred training images through the float network (**calibration**). Then a
# pointwise convolution is, for output channel $o$,
#
# $$
# y_o = \sum_i W_{oi}\, x_i + b_o \;\approx\; s_x\, s_w[o] \Big( \underbrace{\sum_i q_{W,oi}\, q_{x,i}}_{\text{int8} \times \text{int8, summed in int32}} + q_{b,o} \Big),
# \qquad q_{b,o} = \operatorname{round}\!\Big(\frac{b_o}{s_x\, s_w[o]}\Big),
# $$
#
# and a depthwise convolution the same with its $K \times K$ window. The sums are exact in int32
# as long as (fan-in) $\cdot\, 127^2$ plus the bias stays below $2^{31}$: computed for this
# model below. Only the rounding of $q_W$ and $q_x$ loses information, and the result goes back
# to float32 after every conv ($\times s_x s_w[o]$): activations, pooling and skip additions
# run in float between the integer convs, so this is a simulation of an int8 engine's
# arithmetic, not a full int8 pipeline. The stem convolution and the classifier stay in float32
# (the report prints the share of the multiply-adds that runs in int8).
#
# **What symmetric scales waste.** Every quantised conv of V1 after the first reads the output
# of a ReLU, which is never negative, so with $q \in [-127, 127]$ half of the codes are never
# used: the inputs get 128 levels, 7 bits' worth. Engines such as TF-Lite use an *asymmetric*
# scheme (a zero point, $r \approx s\,(q - z)$) for activations to get all 256 levels back;
# minimobile keeps the symmetric one because it is the shortest to read.
#
# **Which network.** The accuracy comparison needs a trained network. Checkpoints are not
# committed (`runs/` is ignored by git); the cell below uses the fast recipe's V1 (width 0.5)
# if it is on this machine, made by
# `minimobile train --recipe fast --data PATH --out runs/recipe-fast-e80` (1 h 48 min on two
# cores, 88.31 %), or the shorter `minimobile train --recipe fast --epochs 30 --data PATH --out
# runs/recipe-fast-e30` (48 minutes, 85.74 %). Without either, the network is untrained: its
# accuracy is chance (about 10 %) before and after, and only the sizes and the bound below mean
# anything. The same report comes from the command line, `minimobile quantize
# runs/recipe-fast-e80/best.npz --data PATH`; `results/` holds its output for both runs, with
# the commands. The notebook evaluates without test-time augmentation, one forward per image,
# so its float32 accuracy is below the recipe's reported one.

# %%
from minimobile.data import load_cifar10, write_fake_cifar10

candidates = [Path("../runs/recipe-fast-e80/best.npz"), Path("../runs/recipe-fast-e30/best.npz")]
checkpoint = next((path for path in candidates if path.exists()), None)
if checkpoint is not None:
    config, trained = mm.train.model_from_checkpoint(checkpoint)
    print(f"{checkpoint}: the trained {config.model}, width {config.width:g}")
else:
    trained = mm.mobilenet_v1(cifar=True, width_mult=0.5, seed=0).eval()
    print("No trained checkpoint found: an UNTRAINED V1. Its accuracies below are chance "
          "(about 10 %) and say nothing about int8; the sizes are real. Train it with\n"
          "  minimobile train --recipe fast --data PATH --out runs/recipe-fast-e80")
try:
    data = load_cifar10(download=False)  # $MINIMOBILE_DATA or ~/.cache/minimobile
except (FileNotFoundError, ValueError):
    data = load_cifar10(write_fake_cifar10(Path(tempfile.mkdtemp()), n_train_per_batch=64,
                                           n_test=200), download=False)
    print("CIFAR-10 not found: random stand-in images")

n_calibration, n_test = (64, 100) if QUICK else (512, 10_000)
result = quantize.report(trained, quantize.calibration_images(data.x_train, n_calibration),
                         data.x_test[:n_test], data.y_test[:n_test])
print(result)

# The int32 bound: the largest fan-in of a quantised conv (C_in for a 1x1, K*K for a depthwise).
int8_model = quantize.quantize(trained, mm.data.normalize(
    quantize.calibration_images(data.x_train, n_calibration), dtype=np.float32))
convs = [m for _, m in int8_model.named_modules()
         if isinstance(m, (quantize.QuantizedPointwiseConv2d, quantize.QuantizedDepthwiseConv2d))]
fan_in = max(int(np.prod(m.buffers["weight_int8"].shape[1:])) for m in convs)
bias = max(int(np.abs(m.buffers["bias_int32"]).max()) for m in convs)
bound = fan_in * 127**2 + bias
print(f"largest fan-in {fan_in}: |int32 sum| <= {fan_in} * 127^2 + {bias} = {bound:,} "
      f"< 2^31 = {2**31:,}: {bound < 2**31}")

# %%
fig, ax = plt.subplots(figsize=(6, 3))
labels = ["float32\n(as trained)", "float32\n(BN folded)", "int8"]
sizes = [result.float_weight_bytes, result.fused_weight_bytes, result.int8_weight_bytes]
ax.bar(labels, [s / 1e6 for s in sizes], color=["C0", "C0", "C1"])
for i, s in enumerate(sizes):
    ax.text(i, s / 1e6, f"{s / 1e6:.2f} MB", ha="center", va="bottom")
ax.set_ylabel("weights (MB)")
ax.set_ylim(0, 1.2 * max(sizes) / 1e6)
ax.set_title(f"accuracy {100 * result.float_accuracy:.2f} % (float32) -> "
             f"{100 * result.int8_accuracy:.2f} % (int8), {result.test_images} test images")
fig.tight_layout()

# %% [markdown]
# **int8 latency.** Smaller weights are one promise of int8; speed is the other. Each model on its
# own (not interleaved with the others), batch 1 at 32x32, after a warm-up, the median of
# repeated runs with the fastest and slowest:

# %%
latency_repeats = 3 if QUICK else 50
for name, model in (("float32, as trained", trained), ("float32, BN folded", deploy.fuse(trained)),
                    ("int8 convs", int8_model)):
    t = ex.measure_latency(model, 32, repeats=latency_repeats, warmup=3)
    print(f"{name:<20} {t.ms:7.2f} ms   (runs {1e3 * min(t.samples):.2f} to {1e3 * max(t.samples):.2f})")

# %% [markdown]
# Whether int8 is faster here is what the numbers say. minimobile's int8 convs quantise each
# input and dequantise each output in extra passes over memory, and its int8 kernels are
# simple loops beside float kernels tuned for speed; an int8 engine on a phone keeps
# activations in int8 from layer to layer and uses the CPU's int8 dot-product instructions.
#
# ## Latency at batch 1
#
# A phone classifies one image at a time, so deployment latency is measured at batch 1, where
# per-layer overheads weigh more than at batch 128. `benchmarks/bench_inference.py` times the
# forward of each network in minimobile (as trained; BN-folded; BN-folded with BLAS given all
# threads inside Numba's, "mm fused blas"), ONNX Runtime (the exported graph) and PyTorch, and
# prints the latency the papers report next to them: those were measured on a Pixel 1 phone
# with TF-Lite on one core (the V2 paper's Table 4; the V3 paper's Table 3), so they show what
# the networks were designed for, not what this machine should reach.
#
# **How each number is made.** Every engine is timed on its own: in a process of its own,
# one engine after another, with the same thread count for all. For each network it first
# runs warm-up forwards (at least 5, and at least a second of them, so its thread pool has
# started and settled and it has made its plans), then 30 timed forwards in a row; the table
# prints their median and, in brackets, the interquartile range (first to third quartile),
# which the chart draws as error bars. A first version of the script interleaved the engines
# within each repetition, one forward of each in turn, and its PyTorch column read 94-117 ms
# for 7 of 8 rows whatever the network (V1 at 32x32: 94 ms, against ONNX Runtime's 3 ms): a
# sign of engines disturbing each other. Numba's, ONNX Runtime's and OpenBLAS's threads keep
# spinning for a while after a call, so the engine timed next can find the cores taken, and
# PyTorch and Numba each bring an OpenMP runtime that would share one process. Separate
# processes remove both (the script's docstring has the details). Quick mode runs V1 at 32x32
# only, with one warm-up call and one timed call per engine.
#
# "mm fused blas" is a deliberate bad configuration, kept in the table to show its cost: each
# of Numba's threads calls a BLAS that is allowed threads of its own, so more threads want the
# two cores than there are cores. The waiting threads spin rather than sleep, so each product
# and each parallel loop waits for threads that another pool has pushed off a core (SciPy's
# OpenBLAS, which has a pthreads pool of its own, warns on stderr when it finds itself called
# from inside an OpenMP loop: "Detect OpenMP Loop and this application may hang").
# `minimobile/parallel.py` measured the same oversubscription making a V1 0.5 training step
# 2.9x slower, and that is why minimobile runs a one-thread BLAS inside Numba's threads. It is
# left out of the chart so that it does not set its scale.

# %%
csv_path = Path(tempfile.mkdtemp()) / "latency.csv"
args = (["--reps", "1", "--warmup", "1", "--warmup-seconds", "0", "--resolutions", "32",
         "--models", "v1"] if QUICK
        else ["--reps", "30", "--resolutions", "224,32"])
done = subprocess.run([sys.executable, "../benchmarks/bench_inference.py", *args,
                       "--csv", str(csv_path)], capture_output=True, text=True)
print(done.stdout or done.stderr)

# %%
import csv

rows = list(csv.DictReader(open(csv_path)))


def column(rows, key):
    """One CSV column as floats, NaN where an engine is missing."""
    return np.array([float(r[key]) if r[key] else np.nan for r in rows])


engines = ["mm", "mm fused", "onnxruntime", "pytorch"]  # "mm fused blas": in the table only
resolutions = sorted({int(r["resolution"]) for r in rows}, reverse=True)
fig, axes = plt.subplots(1, len(resolutions), figsize=(6 * len(resolutions), 3.8), squeeze=False)
for ax, resolution in zip(axes[0], resolutions):
    subset = [r for r in rows if int(r["resolution"]) == resolution]
    positions = np.arange(len(subset))
    for k, engine in enumerate(engines):
        median = column(subset, engine)
        spread = [median - column(subset, f"{engine} q1"), column(subset, f"{engine} q3") - median]
        ax.bar(positions + (k - 1.5) * 0.2, median, width=0.2, yerr=spread, capsize=2,
               label=engine)
    if resolution == 224:
        ax.scatter(positions, [float(r["paper_ms"]) for r in subset], marker="_", s=400,
                   color="black", label="paper (Pixel 1 phone)", zorder=3)
    ax.set_xticks(positions, [r["network"] for r in subset])
    ax.set_yscale("log")
    ax.set_ylabel("ms per image, batch 1")
    ax.set_title(f"{resolution}x{resolution}")
    ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# **Reading the table.** The ratios, computed from the same CSV:

# %%
for resolution in resolutions:
    subset = [r for r in rows if int(r["resolution"]) == resolution]
    fused, ort, torch_ms = (column(subset, key) for key in ("mm fused", "onnxruntime", "pytorch"))
    if np.all(np.isnan(ort)) or np.all(np.isnan(torch_ms)):
        print(f"{resolution}x{resolution}: ONNX Runtime or PyTorch missing, no ratios")
        continue
    print(f"{resolution}x{resolution}: minimobile fused takes {np.nanmin(fused / ort):.1f}x to "
          f"{np.nanmax(fused / ort):.1f}x ONNX Runtime's time and {np.nanmin(fused / torch_ms):.2f}x "
          f"to {np.nanmax(fused / torch_ms):.2f}x PyTorch's; folding batch norm saves "
          f"{np.nanmin(1 - fused / column(subset, 'mm')):.1%} to "
          f"{np.nanmax(1 - fused / column(subset, 'mm')):.1%} of minimobile's time (a negative "
          "share is a network it did not speed up)")

# %% [markdown]
# At batch 1, inference is not the memory-bound problem training is: one image's activations
# fit in the caches, so what counts is how well each engine keeps the vector units busy and what
# it spends between layers. ONNX Runtime runs the exported graph as one compiled plan with
# kernels written for this case: at its default optimisation level it fuses each conv with its
# activation and can move the activations into a blocked channel layout (NCHWc) whose depthwise
# and pointwise kernels are hand-vectorised, with no Python between layers. minimobile's fused
# network still makes one Python call per layer, and its kernels were tuned for training
# batches, where a layer's work is spread over 128 images: at batch 1 a pointwise conv is one
# small matrix product and a depthwise conv a pass over a few thousand pixels, so the fixed cost
# of each call weighs more, most of all at 32x32, where each layer has least work. PyTorch in
# eager mode also calls through the framework once per layer, and lands in minimobile's range
# (the ratios above).
# minimobile is a teaching engine for training; for deployment, export to ONNX
# (`minimobile export`), as this notebook did, and run the graph in an inference engine.
#
# The paper column is one core of a 2016 phone running TF-Lite: every engine here is faster on
# two cores of this server CPU, which says more about the hardware than about the engines.
