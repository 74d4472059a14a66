"""Experiments the notebooks run, kept here so that learners can rerun them on other settings.

Cost ratios of a standard against a depthwise separable conv counted by `cost.profile`, a
median-of-n timer, forward and backward timings of a layer, cost shares by layer type (the V1
paper's Table 2), the spiral of the V2 paper's Figure 1, a gradient check of a whole block,
inference latency over widths and resolutions, and a sweep's accuracies beside the V1 paper's
Tables 6 and 7. The figures the papers print are kept below as data, each with its table, so a
notebook can show them beside what minimobile counts.
"""

import inspect
import time
from fractions import Fraction
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .cost import profile
from .gradcheck import check_gradient, sample_indices
from .layers import (Conv2d, DepthwiseConv2d, Dropout, Linear, PointwiseConv2d, Sequential,
                     no_grad)
from .validation import is_int, require

# Howard et al. 2017 (MobileNets, arXiv:1704.04861).
# Table 2 "Resource Per Layer Type": (share of Mult-Adds %, share of parameters %).
V1_TABLE_2 = {"Conv 1x1": (94.86, 74.59), "Conv DW 3x3": (3.06, 1.06),
              "Conv 3x3": (1.19, 0.02), "Fully Connected": (0.18, 24.33)}
# Table 3: an internal layer with D_K = 3, M = N = 512, D_F = 14: (million Mult-Adds, million
# parameters), each row adding to the one before: the standard conv, the depthwise separable
# conv, then width 0.75 (384 channels), then resolution 0.714 (10x10 maps).
V1_TABLE_3 = {"Convolution": (462, 2.36), "Depthwise Separable Conv": (52.3, 0.27),
              "alpha = 0.75": (29.6, 0.15), "rho = 0.714": (15.1, 0.15)}
# Table 6 (width multiplier, at 224) and Table 7 (resolution, at width 1.0):
# {setting: (ImageNet top-1 %, million Mult-Adds, million parameters)}.
V1_TABLE_6 = {1.0: (70.6, 569, 4.2), 0.75: (68.4, 325, 2.6), 0.5: (63.7, 149, 1.3),
              0.25: (50.6, 41, 0.5)}
V1_TABLE_7 = {224: (70.6, 569, 4.2), 192: (69.1, 418, 4.2), 160: (67.2, 290, 4.2),
              128: (64.4, 186, 4.2)}
# Sandler et al. 2018 (MobileNetV2, arXiv:1801.04381), Table 4: ImageNet at 224, latency on one
# large core of a Google Pixel 1 with TF-Lite: (network, width, million MAdds, million params,
# ms). The V1 paper prints no latency; this table is where V1's is found.
V2_TABLE_4 = [("v1", 1.0, 575, 4.2, 113), ("v2", 1.0, 300, 3.4, 75), ("v2", 1.4, 585, 6.9, 143)]
# Howard et al. 2019 (Searching for MobileNetV3, arXiv:1905.02244), Table 3 (ImageNet results,
# at 224): {network: (million MAdds, million params)} at width 1.0. The same paper's Table 9
# prints other figures for the same networks (57 M and 217 M MAdds).
V3_TABLE_3 = {"v3-large": (219, 5.4), "v3-small": (56, 2.5)}
# Howard et al. 2019, Table 9 (Appendix A):
# (network, width, resolution, million MAdds, million params, Pixel 1 ms).
V3_TABLE_9 = [
    ("v3-large", 1.25, 224, 356, 7.5, 77.0), ("v3-large", 1.0, 224, 217, 5.4, 51.2),
    ("v3-large", 0.75, 224, 155, 4.0, 39.8), ("v3-large", 0.5, 224, 69, 2.6, 21.7),
    ("v3-large", 0.35, 224, 40, 2.2, 15.1), ("v3-large", 1.0, 192, 160, 5.4, 38.0),
    ("v3-large", 1.0, 160, 112, 5.4, 27.8), ("v3-large", 1.0, 128, 73, 5.4, 17.8),
    ("v3-small", 1.25, 224, 91, 3.6, 23.6), ("v3-small", 1.0, 224, 57, 2.5, 15.8),
    ("v3-small", 0.75, 224, 44, 2.0, 12.8), ("v3-small", 0.5, 224, 21, 1.6, 7.7),
    ("v3-small", 0.35, 224, 12, 1.4, 5.7), ("v3-small", 1.0, 160, 30, 2.5, 8.6),
    ("v3-small", 1.0, 128, 20, 2.5, 5.8),
]


# -- the cost ratio of a depthwise separable conv ---------------------------------------------

def standard_conv(C_in, C_out, K, rng=None, dtype=np.float32):
    """A K x K standard conv with 'same' padding (stride 1): the layer V1 replaces."""
    return Conv2d(C_in, C_out, K, stride=1, padding=K // 2, rng=rng, dtype=dtype)


def depthwise_separable_conv(C_in, C_out, K, rng=None, dtype=np.float32):
    """K x K depthwise then 1x1 pointwise, without batch norm or activation, so that its cost
    compares with `standard_conv` term for term (Howard et al. 2017, Section 3.1)."""
    return Sequential(DepthwiseConv2d(C_in, K, stride=1, padding=K // 2, rng=rng, dtype=dtype),
                      PointwiseConv2d(C_in, C_out, rng=rng, dtype=dtype))


def theoretical_ratio(C_out, K):
    """(K^2 M D_F^2 + M N D_F^2) / (K^2 M N D_F^2) = 1/N + 1/K^2, as an exact fraction."""
    require(is_int(C_out) and C_out >= 1 and is_int(K) and K >= 1,
            "theoretical_ratio: C_out, K", "integers >= 1", (C_out, K))
    return Fraction(1, C_out) + Fraction(1, K * K)


class SeparableCost(NamedTuple):
    C_in: int
    C_out: int
    K: int
    size: int  # D_F, the height and width of the input and output maps
    standard_macs: int
    separable_macs: int
    standard_params: int
    separable_params: int

    @property
    def counted_ratio(self):
        """separable / standard multiply-adds as counted, an exact fraction."""
        return Fraction(self.separable_macs, self.standard_macs)

    @property
    def theoretical_ratio(self):
        return theoretical_ratio(self.C_out, self.K)


def separable_cost(C_in, C_out, K, size):
    """Multiply-adds and parameters of `standard_conv` and `depthwise_separable_conv` on one
    C_in x size x size input, as `cost.profile` counts them (it runs a forward)."""
    rng = np.random.default_rng(0)
    standard = profile(standard_conv(C_in, C_out, K, rng), (C_in, size, size))
    separable = profile(depthwise_separable_conv(C_in, C_out, K, rng), (C_in, size, size))
    return SeparableCost(C_in, C_out, K, size, standard.macs, separable.macs,
                         standard.params, separable.params)


def separable_cost_grid(c_outs, kernel_sizes, C_in=32, size=8):
    """separable_cost for every (C_out, K) pair; the ratio does not depend on C_in or size."""
    return [separable_cost(C_in, C_out, K, size) for K in kernel_sizes for C_out in c_outs]


# -- where a network's cost goes ---------------------------------------------------------------

def layer_type_label(module):
    """The V1 paper's Table 2 names: "Conv 1x1", "Conv DW 3x3", "Conv 3x3", "Fully Connected";
    None for layers without multiplies (batch norm, activations, pooling)."""
    if isinstance(module, PointwiseConv2d):
        return "Conv 1x1"
    if isinstance(module, DepthwiseConv2d):
        K = module.params["weight"].shape[-1]
        return f"Conv DW {K}x{K}"
    if isinstance(module, Conv2d):
        K = module.params["weight"].shape[-1]
        return f"Conv {K}x{K}"
    if isinstance(module, Linear):
        return "Fully Connected"
    return None


class TypeShare(NamedTuple):
    label: str
    macs: int
    params: int
    macs_share: float  # percent of the listed layers' total
    params_share: float


def cost_by_layer_type(model, input_size=(3, 224, 224)):
    """Multiply-adds and parameters summed by layer type (`layer_type_label`), with their shares
    in percent, largest MAC share first. Batch norm's parameters are left out of the totals,
    as in the V1 paper's Table 2, whose four rows sum to 100 %."""
    modules = dict(model.named_modules())
    macs, params = {}, {}
    for row in profile(model, input_size).rows:
        label = layer_type_label(modules[row.name])
        if label is not None:
            macs[label] = macs.get(label, 0) + row.macs
            params[label] = params.get(label, 0) + row.params
    total_macs, total_params = sum(macs.values()), sum(params.values())
    shares = [TypeShare(label, macs[label], params[label], 100 * macs[label] / total_macs,
                        100 * params[label] / total_params) for label in macs]
    return sorted(shares, key=lambda s: -s.macs_share)


# -- timing ------------------------------------------------------------------------------------

class Timing(NamedTuple):
    median: float  # seconds
    samples: tuple  # every repetition, seconds

    @property
    def ms(self):
        return 1e3 * self.median


def time_callable(fn, repeats=5, warmup=1):
    """Median wall time of fn() over `repeats` calls, after `warmup` untimed calls (which pay
    for Numba compilation and first-touch allocation). The median, not the mean, because one
    call slowed by another process should not move the result."""
    require(is_int(repeats) and repeats >= 1, "time_callable: repeats", "an integer >= 1",
            repeats)
    require(is_int(warmup) and warmup >= 0, "time_callable: warmup", "an integer >= 0", warmup)
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return Timing(float(np.median(samples)), tuple(samples))


def time_forward_backward(layer, x, repeats=5, warmup=1, seed=0):
    """(forward, forward + backward) Timings of a layer on x, in training mode; the backward
    takes a fixed random dout of the output's shape."""
    layer.train()
    out = layer.forward(x)
    dout = np.random.default_rng(seed).standard_normal(out.shape).astype(out.dtype)
    layer.backward(dout)
    forward = time_callable(lambda: layer.forward(x), repeats, warmup)
    layer.backward(dout)  # drop the last forward's cache

    def step():
        layer.forward(x)
        layer.backward(dout)
    return forward, time_callable(step, repeats, warmup)


class LatencyRow(NamedTuple):
    network: str
    width: float
    resolution: int
    macs: int
    params: int
    ms: float  # median batch-1 inference time
    samples_ms: tuple = ()  # every timed run, ms: the spread behind the median


def measure_latency(model, resolution, repeats=5, warmup=1, seed=0):
    """Median time of one batch-1 inference (eval mode, no_grad) at resolution x resolution;
    the model's mode is restored afterwards. Returns a Timing."""
    require(is_int(resolution) and resolution >= 1, "measure_latency: resolution",
            "an integer >= 1", resolution)
    dtype = next(iter(model.named_parameters()))[1].dtype
    x = np.random.default_rng(seed).standard_normal((1, 3, resolution, resolution)).astype(dtype)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            return time_callable(lambda: model.forward(x), repeats, warmup)
    finally:
        model.train(was_training)


def latency_sweep(build, network, widths=(), resolutions=(), repeats=5, warmup=1):
    """LatencyRows of `build(width_mult=w)` for each width at 224, then each resolution at
    width 1.0 (the V1 paper's Tables 6 and 7, with time added). `build` is one of
    minimobile.models' builders; `network` is the name put in the rows."""
    require(callable(build) and _takes_width_mult(build), "latency_sweep: build",
            "a builder that takes width_mult and seed (mobilenet_v1, mobilenet_v2, "
            "mobilenet_v3_small or mobilenet_v3_large; build_model wants a name and `width`)",
            getattr(build, "__name__", build))
    settings = [(w, 224) for w in widths] + [(1.0, r) for r in resolutions]
    rows = []
    for width, resolution in settings:
        model = build(width_mult=width, seed=0)
        cost = profile(model, (3, resolution, resolution))
        timing = measure_latency(model, resolution, repeats, warmup)
        rows.append(LatencyRow(network, width, resolution, cost.macs, cost.params, timing.ms,
                               tuple(1e3 * t for t in timing.samples)))
    return rows


def _takes_width_mult(build):
    """Whether `build(width_mult=..., seed=...)` can bind; build_model, which wants the
    network's name first and calls the multiplier `width`, cannot."""
    try:
        inspect.signature(build).bind(width_mult=1.0, seed=0)
    except TypeError:
        return False
    except ValueError:      # a builtin without a signature: let the call say what is wrong
        return True
    return True


# -- accuracy against the multipliers: the V1 paper's Tables 6 and 7 beside a sweep -------------

class PaperBeside(NamedTuple):
    """One row of the V1 paper's Table 6 or 7 beside the sweep's trial in the same place:
    `setting` is the paper's width (Table 6) or resolution (Table 7); `paper` its (ImageNet
    top-1 %, million Mult-Adds, million params); `row` a row of sweep.read_results, or None."""
    setting: float
    paper: tuple
    row: dict


def paper_beside_sweep(rows, table, network="v1", resolution=32, width=1.0):
    """Table 6 (table="width": the paper's widths at 224 beside the sweep's same widths at
    `resolution`) or Table 7 (table="resolution": the paper's resolutions at width 1.0 beside
    the sweep's resolutions at `width`, largest beside largest, since 224/192/160/128 have no
    equal on CIFAR). Sweep rows of other settings are left out; unmatched sides get None."""
    networks = sorted({r["network"] for r in rows})
    require(not rows or network in networks, "paper_beside_sweep: network",
            f"a network of the sweep's rows ({', '.join(networks) or 'none'})", network)
    mine = [r for r in rows if r["network"] == network and r["accuracy"] is not None]
    if table == "width":
        paper = V1_TABLE_6
        found = {r["width"]: r for r in mine if r["resolution"] == resolution}
        return [PaperBeside(w, paper[w], found.get(w)) for w in sorted(paper, reverse=True)]
    if table != "resolution":
        raise ValueError(f"table: expected 'width' or 'resolution', got {table!r}")
    settings = sorted(V1_TABLE_7, reverse=True)
    found = sorted((r for r in mine if r["width"] == width), key=lambda r: -r["resolution"])
    return [PaperBeside(settings[i] if i < len(settings) else None,
                        V1_TABLE_7[settings[i]] if i < len(settings) else None,
                        found[i] if i < len(found) else None)
            for i in range(max(len(settings), len(found)))]


# -- the spiral of the V2 paper's Figure 1 -----------------------------------------------------

def spiral(n_points=1000, turns=2.0):
    """A 2-D spiral r = t, angle = 2 pi turns t for t in [0, 1], shape (n_points, 2), centred
    on the origin as a manifold of activations is around zero before a ReLU."""
    t = np.linspace(0.0, 1.0, n_points)
    angle = 2 * np.pi * turns * t
    return np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)


def random_embedding(n, rng, dim=2):
    """A random matrix T of shape (n, dim), standard normal entries: the embedding of Figure 1."""
    return rng.standard_normal((n, dim))


def relu_roundtrip(points, T, relu=True):
    """Embed points (P, d) with T (n, d), apply ReLU (or not), and project back with T's
    pseudo-inverse (its inverse when n = d): Sandler et al. 2018, Figure 1. Returns (P, d)."""
    y = points @ T.T  # (P, n)
    if relu:
        y = np.maximum(y, 0.0)
    return y @ np.linalg.pinv(T).T  # (P, d)


def relu_recoverable(points, T):
    """For each point x, whether x can be recovered exactly from ReLU(T x): true when the rows
    of T that x activates (T_i x > 0) span the whole input space, for then x solves the linear
    system those rows give. Where they do not, ReLU has collapsed a direction and the point
    can be confused with others. Returns a boolean array (P,)."""
    active = points @ T.T > 0  # (P, n)
    dim = T.shape[1]
    return np.array([np.linalg.matrix_rank(T[rows]) == dim if rows.sum() >= dim else False
                     for rows in active])


def roundtrip_error(points, back):
    """Root-mean-square distance between the points and their round trip, over the RMS radius
    of the points: 0 means nothing was lost."""
    return float(np.sqrt(np.mean(np.sum((points - back) ** 2, axis=1)))
                 / np.sqrt(np.mean(np.sum(points ** 2, axis=1))))


# -- a gradient check of a whole block ---------------------------------------------------------

def gradient_check_module(module, x, rng, count=20, h=1e-6):
    """Relative errors between module.backward and central differences, for the input and every
    parameter, each at `count` sampled entries: {"input": e, "dw.0.weight": e, ...}.

    Needs float64 parameters and x. The module runs in training mode (batch statistics), which
    is what its backward differentiates; the probes' forwards run under no_grad so they leave
    no cache behind, but like any training-mode forward they move batch norm's running
    statistics (which the training-mode output does not read).
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"gradient_check_module: expected rng to be a np.random.Generator "
                         f"(np.random.default_rng(seed)), got {type(rng).__name__}")
    dropouts = [path for path, m in module.named_modules() if isinstance(m, Dropout) and m.p > 0]
    if dropouts:
        # Each probe's forward would draw a new mask: the differences would measure noise
        # and blame a correct backward.
        raise ValueError(f"gradient_check_module: the Dropout at {dropouts[0]} makes every "
                         "forward random; set its p to 0 or check a part without it")
    module.train()
    out = module.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = module.backward(dout)
    analytic = {name: grad.copy() for name, _, grad in module.named_parameters()}

    def f():
        with no_grad():
            return module.forward(x)
    errors = {"input": check_gradient(f, x, dx, dout, h,
                                      sample_indices(x.shape, count, rng))}
    for name, param, _ in module.named_parameters():
        errors[name] = check_gradient(f, param, analytic[name], dout, h,
                                      sample_indices(param.shape, count, rng))
    return errors


def gradient_errors(f, pairs, dout, h=1e-6):
    """Relative errors of analytic gradients against central differences of sum(f() * dout):
    `pairs` maps a name to (array, analytic gradient), each array float64 and read by f.
    Every entry is probed, so keep the arrays small. Returns {name: relative error}."""
    return {name: check_gradient(f, array, grad, dout, h) for name, (array, grad) in pairs.items()}


# -- showing the library's code in a notebook --------------------------------------------------

def show_source(obj):
    """Print the source of a library function, method or class, headed by where it lives, so a
    notebook shows the code it explains instead of copying it. A Numba kernel shows the Python
    source it was compiled from (its py_func)."""
    obj = getattr(obj, "py_func", obj)
    lines, start = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve()
    package_root = Path(__file__).resolve().parent.parent
    where = path.relative_to(package_root) if path.is_relative_to(package_root) else path.name
    print(f"# {where.as_posix() if isinstance(where, Path) else where}, line {start}")
    print("".join(lines).rstrip())


# -- memory bandwidth --------------------------------------------------------------------------

def last_level_cache_bytes():
    """The largest CPU cache Linux reports for cpu0 (sysfs), in bytes; None where it cannot be
    read. On a virtual machine this is what the host reports, shared with other tenants."""
    sizes = []
    for path in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = path.read_text().strip()
        factor = {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KMG")) * factor)
    return max(sizes) if sizes else None


class Bandwidth(NamedTuple):
    nbytes: int  # size of the array copied
    gbps: float  # median GB/s, counting a read and a write of every byte
    samples: tuple  # GB/s of every repetition


def copy_bandwidth(nbytes, repeats=5, warmup=1):
    """What memory delivers to the simplest streaming kernel, np.copyto of a float32 array of
    about `nbytes` into another: the ceiling for a layer that only streams its data through.
    Arrays that fit in a cache measure that cache; arrays several times the last-level cache
    measure DRAM."""
    require(is_int(nbytes) and nbytes >= 1, "copy_bandwidth: nbytes", "an integer >= 1",
            nbytes)
    src = np.ones(max(nbytes // 4, 1), dtype=np.float32)
    dst = np.empty_like(src)
    timing = time_callable(lambda: np.copyto(dst, src), repeats, warmup)
    moved = 2 * src.nbytes / 1e9
    return Bandwidth(src.nbytes, moved / timing.median, tuple(moved / t for t in timing.samples))


def fit_overhead_and_work(macs, ms):
    """Least-squares line ms = a + b * MACs through one network's latencies: a is the time an
    inference costs whatever its size (per-layer dispatch, thread wake-ups), b the time per
    multiply-add. Returns (a in ms, b in ms per million MACs, largest |residual| in ms)."""
    macs_m = np.asarray(macs, dtype=np.float64) / 1e6
    ms = np.asarray(ms, dtype=np.float64)
    require(macs_m.shape == ms.shape and macs_m.ndim == 1 and len(np.unique(macs_m)) >= 2,
            "fit_overhead_and_work", "as many times as MAC counts, with at least two distinct "
            "counts (a line needs two points)", f"{len(np.unique(macs_m))} distinct counts and "
            f"{ms.size} times")
    b, a = np.polyfit(macs_m, ms, 1)
    return float(a), float(b), float(np.abs(ms - (a + b * macs_m)).max())


def relu_recover(points, T):
    """The exact inverse where there is one: each point x solved from the rows of T it
    activates (T_i x > 0), which are linear in x. NaN rows where those rows do not span the
    input space (relu_recoverable is False). Unlike relu_roundtrip's pseudo-inverse, which
    treats ReLU's zeros as if they were data, this recovers every recoverable point exactly."""
    y = np.maximum(points @ T.T, 0.0)  # (P, n)
    out = np.full(points.shape, np.nan)
    for i, (row, active) in enumerate(zip(y, y > 0)):
        if active.sum() >= T.shape[1] and np.linalg.matrix_rank(T[active]) == T.shape[1]:
            out[i] = np.linalg.lstsq(T[active], row[active], rcond=None)[0]
    return out


# -- pictures ----------------------------------------------------------------------------------

def _box3d(ax, x, y, w, h, d, color, alpha=0.85):
    """A box seen from the front and a little above: front face w x h at (x, y), depth d drawn
    as an oblique offset (half of d to the right and up)."""
    from matplotlib.patches import Polygon
    dx, dy = 0.5 * d, 0.5 * d
    faces = [[(x, y), (x + w, y), (x + w, y + h), (x, y + h)],
             [(x, y + h), (x + w, y + h), (x + w + dx, y + h + dy), (x + dx, y + h + dy)],
             [(x + w, y), (x + w + dx, y + dy), (x + w + dx, y + h + dy), (x + w, y + h)]]
    for face, shade in zip(faces, (1.0, 0.8, 0.65)):
        rgb = np.array(color[:3]) * shade
        ax.add_patch(Polygon(face, closed=True, facecolor=(*rgb, alpha), edgecolor="black", lw=0.6))


def plot_conv_filters(C_in=6, C_out=4, K=3):
    """The V1 paper's Figure 2 idea: a standard conv's C_out filters of K x K x C_in, a
    depthwise conv's C_in filters of K x K x 1, a pointwise conv's C_out filters of 1 x 1 x C_in,
    drawn as boxes, each panel titled with its multiply-adds per output pixel. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib import colormaps
    colors = colormaps["tab10"]
    fig, axes = plt.subplots(1, 3, figsize=(13, 2.8))
    panels = [("standard conv", C_out, K, C_in, f"{C_out} filters of {K}x{K}x{C_in}",
               K * K * C_in * C_out),
              ("depthwise conv", C_in, K, 1, f"{C_in} filters of {K}x{K}x1, one per input channel",
               K * K * C_in),
              ("pointwise (1x1) conv", C_out, 1, C_in, f"{C_out} filters of 1x1x{C_in}",
               C_in * C_out)]
    for ax, (title, count, size, depth, caption, macs) in zip(axes, panels):
        x = 0.0
        for i in range(count):
            color = colors(i % 10) if title.startswith("depthwise") else colors(0)
            _box3d(ax, x, 0, size, size, depth, color)
            x += size + 0.5 * depth + 1.0
        ax.set_xlim(-0.5, max(x, 12))
        ax.set_ylim(-0.5, K + 0.5 * C_in + 0.5)
        ax.set_aspect("equal")
        ax.axis("off")
        ax.set_title(f"{title}\n{caption}\n{macs} multiply-adds per output pixel", fontsize=9)
    fig.suptitle(f"Filters for C_in = {C_in} input and C_out = {C_out} output channels "
                 "(box depth: input channels a filter reads)", fontsize=10)
    return fig


def plot_block_diagram(ax, layers, skip=False, title=""):
    """A block as a column of boxes, input at the bottom: `layers` is a list of (label,
    channels), each box as wide as its channel count (square-root scaled so thin and wide both
    show). skip=True draws the residual connection around the block. Returns ax."""
    from matplotlib.patches import FancyArrowPatch, Rectangle
    widest = max(np.sqrt(c) for _, c in layers)
    for i, (label, channels) in enumerate(layers):
        w = 3.0 * np.sqrt(channels) / widest
        ax.add_patch(Rectangle((-w / 2, 1.6 * i), w, 0.9, facecolor="C0" if i in (0, len(layers) - 1)
                               else "C1", alpha=0.35, edgecolor="black"))
        ax.text(0, 1.6 * i + 0.45, f"{label}\n{channels} ch", ha="center", va="center", fontsize=7)
        if i:
            ax.add_patch(FancyArrowPatch((0, 1.6 * i - 0.7), (0, 1.6 * i), arrowstyle="->",
                                         mutation_scale=10))
    top = 1.6 * (len(layers) - 1) + 0.9  # the last box's upper edge
    if skip:
        add_y = top + 0.7
        ax.add_patch(FancyArrowPatch((0, top), (0, add_y - 0.22), arrowstyle="->", mutation_scale=10))
        ax.text(0, add_y, "+", ha="center", va="center", fontsize=12, color="C3",
                bbox=dict(boxstyle="circle", facecolor="white", edgecolor="C3"))
        w0 = 3.0 * np.sqrt(layers[0][1]) / widest
        ax.plot([w0 / 2, 1.9, 1.9], [0.45, 0.45, add_y], color="C3", lw=1)
        ax.add_patch(FancyArrowPatch((1.9, add_y), (0.25, add_y), arrowstyle="->",
                                     mutation_scale=10, color="C3"))
        ax.text(2.0, top / 2, "skip", color="C3", fontsize=8, rotation=90, va="center")
    ax.set_xlim(-2.2, 2.6)
    ax.set_ylim(-0.4, top + 1.3)
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    return ax


class ReceptiveField(NamedTuple):
    name: str  # state-dict prefix of the conv
    kernel_size: int
    stride: int
    size: int  # output map side
    field: int  # side of the input patch one output value sees
    jump: int  # input pixels between neighbouring outputs


def receptive_fields(model, input_size):
    """Every spatial conv of `model` in forward order, with the receptive field after it:
    field += (K - 1) * jump, then jump *= stride (1x1 convs change neither). Assumes the
    convs run in the order named_modules lists them, as in minimobile's sequential models."""
    if not (isinstance(input_size, (int, np.integer)) and not isinstance(input_size, bool)
            and input_size >= 1):
        raise ValueError(f"receptive_fields: expected input_size as the image's side in pixels, "
                         f"an integer >= 1, got {input_size!r}")
    rows, field, jump, size = [], 1, 1, input_size
    for name, module in model.named_modules():
        if isinstance(module, (Conv2d, DepthwiseConv2d)):
            K = module.params["weight"].shape[-1]
            size = (size + 2 * module.padding - K) // module.stride + 1
            field += (K - 1) * jump
            jump *= module.stride
            rows.append(ReceptiveField(name, K, module.stride, size, field, jump))
    return rows


# -- inside a kernel: rungs, layers and the roofline -------------------------------------------

def time_on_rungs(fn, rungs=("simple", "fast"), repeats=5, warmup=1):
    """{rung: Timing} of fn() with every op on each rung of minimobile.kernels in turn (the
    warm-up calls pay each rung's Numba compilation)."""
    from . import kernels
    timings = {}
    for rung in rungs:
        with kernels.use(rung):
            timings[rung] = time_callable(fn, repeats, warmup)
    return timings


def peak_matmul_gmacs(n=1024, threads=None, repeats=5, warmup=1):
    """Multiply-adds per second (GMAC/s) of one float32 n x n x n matrix product through NumPy's
    BLAS on `threads` threads (default: Numba's thread count; minimobile itself runs BLAS on one
    thread per Numba thread): the arithmetic ceiling of a roofline here."""
    from threadpoolctl import threadpool_limits
    from numba import get_num_threads
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    out = np.empty((n, n), np.float32)
    with threadpool_limits(limits=threads or get_num_threads(), user_api="blas"):
        timing = time_callable(lambda: np.matmul(a, b, out=out), repeats, warmup)
    return n**3 / timing.median / 1e9


class LayerTiming(NamedTuple):
    name: str  # state-dict prefix
    type: str  # the layer's class name
    output_shape: tuple  # (N, C, H, W)
    macs: int  # for the whole batch
    nbytes: int  # input, output and parameters, each read or written once
    timing: Timing  # of the layer's forward on its recorded input


def layer_timings(model, x, types=(Conv2d, DepthwiseConv2d, PointwiseConv2d),
                  repeats=5, warmup=1):
    """Each layer of `types`, timed alone: one inference forward of `model` on x (eval mode,
    no_grad) records every such layer's input; then each layer's forward is timed on its own
    input. Returns LayerTimings in execution order, with the multiply-adds of the batch
    (cost.layer_macs) and the bytes it must move at least once."""
    from .cost import layer_macs
    recorded = []
    watched = [(name, m) for name, m in model.named_modules() if isinstance(m, types)]
    for name, module in watched:
        def record(inp, module=module, name=name, forward=module.forward):
            out = forward(inp)
            recorded.append((name, module, inp, out.shape))
            return out
        module.forward = record  # an instance attribute shadows the method while we watch
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            model.forward(x)
            rows = []
            for name, module, inp, out_shape in recorded:
                del module.forward  # the real method again, for the timing
                macs = layer_macs(module, inp.shape, out_shape) * inp.shape[0]
                nbytes = (inp.nbytes + int(np.prod(out_shape)) * inp.itemsize
                          + sum(p.nbytes for p in module.params.values()))
                timing = time_callable(lambda: module.forward(inp), repeats, warmup)
                rows.append(LayerTiming(name, type(module).__name__, tuple(out_shape), macs,
                                        nbytes, timing))
    finally:
        for _, module in watched:
            module.__dict__.pop("forward", None)
        model.train(was_training)
    return rows
