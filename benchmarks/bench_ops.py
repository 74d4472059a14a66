"""Forward and forward+backward time of every op: minimobile's Numba kernels, a NumPy version,
and PyTorch on the CPU (both layouts, same thread count) where torch is installed.

Shapes are MobileNet-shaped at batch 128 on CIFAR-sized maps. Every contender is timed in
turn inside each repetition, so a slow spell of this shared machine hits all of them alike;
the table shows medians, and the median over repetitions of the ratio of minimobile to
PyTorch's faster layout, each ratio from timings taken back to back.

    python benchmarks/bench_ops.py [--repeats 15] [--threads 2] [--ops depthwise3x3,bn]
                                   [--malloc default|keep]
    python benchmarks/bench_ops.py --rungs    # loops, simple and fast side by side

The NumPy column is CS231n-style im2col for the depthwise conv (benchmarks/numpy_baselines.py)
and the loops rung of minimobile.kernels for the rest, timed on a batch of 2 and scaled to
the full batch (they are linear in N; marked with ~).

--rungs times each op on the three rungs of minimobile.kernels instead (no PyTorch): the
simple and fast rungs alternating within every repetition at batch 128, the loops rung at
batch 2 scaled to 128, so the gain of each rung is a number a learner can reproduce.
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import numba  # noqa: E402

from minimobile import kernels, memory, ops  # noqa: E402
import numpy_baselines  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the PyTorch columns are optional
    torch = None


def median_ms(samples):
    return 1e3 * float(np.median(samples))


class Case:
    """One op at one shape: how to run it in minimobile (at batch N, and at batch 2 for the
    loops rung), in NumPy (where a NumPy version exists) and in torch."""

    def __init__(self, name, shape_text, forward, backward, inputs, dout, torch_fn,
                 np_fn=None):
        self.name, self.shape_text = name, shape_text
        self.mm_fwd = lambda: forward(**inputs)
        self.mm_bwd = lambda cache: backward(dout, cache)
        small = {k: (v[:2] if k in ("x", "labels", "s") else v) for k, v in inputs.items()}
        self.small_fwd = lambda: forward(**small)
        self.small_bwd = lambda cache: backward(None if dout is None else dout[:2], cache)
        self.small_scale = len(inputs["x"]) / 2
        self.torch_fn = torch_fn
        self.torch_inputs = dict(inputs, **({} if dout is None else {"dout": dout}))
        self.np_fn = np_fn


def make_cases(rng, names):
    f32 = np.float32
    N = 128
    cases = []

    def arr(*shape):
        return rng.standard_normal(shape).astype(f32)

    def add(name, shape_text, forward, backward, inputs, dout_shape, torch_fn, np_fn=None):
        dout = arr(*dout_shape) if dout_shape else None
        cases.append(Case(name, shape_text, forward, backward, inputs, dout, torch_fn, np_fn))

    def add_depthwise(name, C, H, K, stride):
        x, w = arr(N, C, H, H), arr(C, 1, K, K)
        pad = K // 2
        out, _ = ops.depthwise_conv2d_forward(x, w, stride, pad)

        def np_fn():
            o, cache = numpy_baselines.depthwise_forward_im2col(x, w, stride, pad)
            numpy_baselines.depthwise_backward_im2col(np.ones_like(o), cache)
        add(name, f"N={N} C={C} {H}x{H} K={K} s={stride}",
            lambda x, w: ops.depthwise_conv2d_forward(x, w, stride, pad),
            ops.depthwise_conv2d_backward, dict(x=x, w=w), out.shape,
            lambda t: F.conv2d(t["x"], t["w"], stride=stride, padding=pad, groups=C), np_fn)

    add_depthwise("depthwise3x3", 96, 16, 3, 1)
    add_depthwise("depthwise3x3_s2", 96, 16, 3, 2)
    add_depthwise("depthwise5x5", 120, 8, 5, 1)
    # Small maps, where the fast rung runs channels last: V2 0.5's and V1 1.0's shapes.
    add_depthwise("depthwise3x3_8x8", 192, 8, 3, 1)
    add_depthwise("depthwise3x3_4x4", 512, 4, 3, 1)
    add_depthwise("depthwise3x3_32x32", 48, 32, 3, 1)  # V2 0.5's first expansion's

    add("pointwise", f"N={N} 32->64 16x16", ops.pointwise_conv2d_forward,
        ops.pointwise_conv2d_backward, dict(x=arr(N, 32, 16, 16), w=arr(64, 32, 1, 1)),
        (N, 64, 16, 16), lambda t: F.conv2d(t["x"], t["w"]))
    # A projection, fewer outputs than inputs (V2 0.5's 96 -> 16 on 32x32 maps).
    add("pointwise_projection", f"N={N} 96->16 32x32", ops.pointwise_conv2d_forward,
        ops.pointwise_conv2d_backward, dict(x=arr(N, 96, 32, 32), w=arr(16, 96, 1, 1)),
        (N, 16, 32, 32), lambda t: F.conv2d(t["x"], t["w"]))
    add("conv3x3_stem", f"N={N} 3->32 32x32", lambda x, w: ops.conv2d_forward(x, w, 1, 1),
        ops.conv2d_backward, dict(x=arr(N, 3, 32, 32), w=arr(32, 3, 3, 3)), (N, 32, 32, 32),
        lambda t: F.conv2d(t["x"], t["w"], padding=1))
    add("batchnorm", f"N={N} C=96 16x16", ops.batchnorm2d_forward, ops.batchnorm2d_backward,
        dict(x=arr(N, 96, 16, 16), gamma=arr(96), beta=arr(96)), (N, 96, 16, 16),
        lambda t: F.batch_norm(t["x"], None, None, t["gamma"], t["beta"], training=True))
    # Batch norm with its activation fused, by channel (32x32) and by image (8x8).
    for name, C, H in (("batchnorm_relu6", 96, 32), ("batchnorm_relu6_8x8", 288, 8)):
        add(name, f"N={N} C={C} {H}x{H}",
            lambda x, gamma, beta: ops.batchnorm2d_activation_forward(x, gamma, beta,
                                                                      activation="relu6"),
            ops.batchnorm2d_activation_backward,
            dict(x=arr(N, C, H, H), gamma=arr(C), beta=arr(C)), (N, C, H, H),
            lambda t: F.relu6(F.batch_norm(t["x"], None, None, t["gamma"], t["beta"],
                                           training=True)))
    for act in ("relu", "relu6", "hardswish", "hardsigmoid"):
        add(act, f"N={N} C=96 16x16", getattr(ops, f"{act}_forward"),
            getattr(ops, f"{act}_backward"), dict(x=arr(N, 96, 16, 16) * 4), (N, 96, 16, 16),
            (lambda t, act=act: getattr(F, act)(t["x"])))
    add("global_avg_pool", f"N={N} C=1280 4x4", ops.global_avg_pool_forward,
        ops.global_avg_pool_backward, dict(x=arr(N, 1280, 4, 4)), (N, 1280, 1, 1),
        lambda t: F.adaptive_avg_pool2d(t["x"], 1))
    # Squeeze-excite's gate, out = x * s per image and channel (V3-Small's 240 x 8x8).
    add("scale_channels", f"N={N} C=240 8x8", ops.scale_channels_forward,
        ops.scale_channels_backward, dict(x=arr(N, 240, 8, 8), s=arr(N, 240, 1, 1)),
        (N, 240, 8, 8), lambda t: t["x"] * t["s"])
    add("linear", f"N={N} 1280->10", ops.linear_forward, ops.linear_backward,
        dict(x=arr(N, 1280), w=arr(10, 1280), b=arr(10)), (N, 10),
        lambda t: F.linear(t["x"], t["w"], t["b"]))
    drop_rng = np.random.default_rng(0)
    add("dropout", f"N={N} 1280 p=0.2", lambda x: ops.dropout_forward(x, 0.2, drop_rng),
        ops.dropout_backward, dict(x=arr(N, 1280)), (N, 1280),
        lambda t: F.dropout(t["x"], 0.2, True))
    add("softmax_cross_entropy", f"N={N} 10 classes",
        lambda x, labels: (None, ops.softmax_cross_entropy(x, labels, 0.1)),
        lambda dout, cache: None, dict(x=arr(N, 10), labels=rng.integers(0, 10, N)), None,
        lambda t: F.cross_entropy(t["x"], t["labels"], label_smoothing=0.1))
    return [c for c in cases if not names or c.name in names]


def time_loops_rung(case, repeats):
    """Forward+backward on the loops rung at batch 2, scaled to the full batch (linear in N),
    in ms: the plain-Python loops are far too slow for batch 128."""
    times = []
    with kernels.use("loops"):
        for _ in range(repeats):
            t0 = time.perf_counter()
            case.small_bwd(case.small_fwd()[1])
            times.append(time.perf_counter() - t0)
    return median_ms(times) * case.small_scale


NO_NUMPY_COLUMN = ("dropout", "softmax_cross_entropy")  # already NumPy-speed one-liners


def run_minimobile(case):
    t0 = time.perf_counter()
    out, cache = case.mm_fwd()
    t1 = time.perf_counter()
    case.mm_bwd(cache)
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def torch_runner(case, channels_last):
    tensors = {}
    for k, v in case.torch_inputs.items():
        t = torch.from_numpy(np.ascontiguousarray(v))
        if channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        if t.is_floating_point() and k != "dout":
            t.requires_grad_(True)
        tensors[k] = t

    def run():
        for t in tensors.values():
            t.grad = None
        t0 = time.perf_counter()
        out = case.torch_fn(tensors)
        t1 = time.perf_counter()
        if out.ndim == 0:
            out.backward()
        else:
            out.backward(tensors["dout"].expand_as(out) if "dout" in tensors else
                         torch.ones_like(out))
        t2 = time.perf_counter()
        return t1 - t0, t2 - t0
    return run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ops", default="", help="comma-separated case names (default: all)")
    parser.add_argument("--numpy-repeats", type=int, default=2)
    parser.add_argument("--malloc", choices=["default", "keep"], default="default",
                        help="default: glibc's own settings; keep: glibc recycles freed memory, "
                             "as minimobile.train.fit sets it (minimobile/memory.py). Either "
                             "way minimobile and PyTorch run under the same allocator.")
    parser.add_argument("--rungs", action="store_true",
                        help="time the loops, simple and fast rungs side by side instead")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.numpy_repeats < 0:
        parser.error(f"expected --repeats >= 1 and --numpy-repeats >= 0, got {args.repeats} "
                     f"and {args.numpy_repeats}")
    malloc = "glibc, freed memory kept" if (args.malloc == "keep" and
                                            memory.keep_freed_memory()) else "as started"
    numba.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    cases = make_cases(rng, set(filter(None, args.ops.split(","))))
    print(f"numba threads {args.threads}; torch {torch.__version__ if torch else 'not installed'}"
          f"; float32; medians of {args.repeats} (NumPy: {args.numpy_repeats}); times in ms")
    print(f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}  "
          f"LD_PRELOAD={os.environ.get('LD_PRELOAD', '(unset)')}  malloc {malloc}")
    if args.rungs:
        run_rungs(cases, args.repeats, args.numpy_repeats)
        return
    header = (f"{'op':<22}{'shape':<26}{'mm fwd':>8}{'mm f+b':>8}{'np f+b':>10}"
              f"{'pt fwd':>8}{'pt f+b':>8}{'ptCL f+b':>9}{'mm/pt':>7}{'np/mm':>8}")
    print(header)
    print("-" * len(header))
    for case in cases:
        runners = [("mm", lambda c=case: run_minimobile(c))]
        if torch is not None and case.torch_fn is not None:
            runners.append(("pt", torch_runner(case, False)))
            if any(np.ndim(v) == 4 for v in case.torch_inputs.values()):
                runners.append(("ptCL", torch_runner(case, True)))
        for _, run in runners:  # warm-up: compile, allocate, fault pages in
            run()
            run()
        samples = {name: ([], []) for name, _ in runners}
        for _ in range(args.repeats):
            for name, run in runners:
                fwd, total = run()
                samples[name][0].append(fwd)
                samples[name][1].append(total)
        result = {name: (median_ms(f), median_ms(t)) for name, (f, t) in samples.items()}
        np_ms = None
        if args.numpy_repeats > 0 and case.np_fn is not None:  # 0 skips the NumPy column
            times = []
            for _ in range(args.numpy_repeats):
                t0 = time.perf_counter()
                case.np_fn()
                times.append(time.perf_counter() - t0)
            np_ms = median_ms(times)
        elif args.numpy_repeats > 0 and case.name not in NO_NUMPY_COLUMN:
            np_ms = time_loops_rung(case, args.numpy_repeats)
        mm_f, mm_t = result["mm"]
        # The ratio is the median of the per-repetition ratios against PyTorch's faster layout
        # (by median): each pair was timed back to back, so the machine's drift over the run,
        # which moves all contenders alike, cancels out of it.
        torch_keys = [k for k in ("pt", "ptCL") if k in result]
        ratio = None
        if torch_keys:
            best = min(torch_keys, key=lambda k: result[k][1])
            ratio = float(np.median(np.array(samples["mm"][1]) / np.array(samples[best][1])))
        cells = [f"{case.name:<22}{case.shape_text:<26}{mm_f:8.2f}{mm_t:8.2f}"]
        cells.append(f"{'':>10}" if np_ms is None else
                     f"{('~' if case.np_fn is None else '') + f'{np_ms:.1f}':>10}")
        for key, idx in (("pt", 0), ("pt", 1), ("ptCL", 1)):
            cells.append(f"{result[key][idx]:8.2f}" if key in result else f"{'-':>8}")
        cells.append(f"{ratio:7.2f}" if ratio is not None else f"{'-':>7}")
        cells.append(f"{np_ms / mm_t:8.0f}" if np_ms else f"{'-':>8}")
        print("".join(cells), flush=True)
    print("\nmm/pt: minimobile forward+backward over PyTorch's faster layout (below 1 is faster), "
          "the median of the ratios of each repetition's back-to-back timings.")
    print("np/mm: how many times faster the Numba kernels are than the NumPy version.")


def run_rungs(cases, repeats, loops_repeats):
    """The three rungs of every op side by side (see the module docstring)."""
    header = (f"{'op':<22}{'shape':<26}{'loops f+b':>11}{'simple f+b':>12}{'fast f+b':>10}"
              f"{'loops/simple':>14}{'simple/fast':>13}")
    print(header)
    print("-" * len(header))
    for case in cases:
        samples = {"simple": [], "fast": []}
        for rung in samples:  # warm-up: compile, allocate, fault pages in
            with kernels.use(rung):
                run_minimobile(case)
                run_minimobile(case)
        for _ in range(repeats):
            for rung in samples:
                with kernels.use(rung):
                    samples[rung].append(run_minimobile(case)[1])
        loops_ms = time_loops_rung(case, loops_repeats) if loops_repeats else None
        simple_ms, fast_ms = median_ms(samples["simple"]), median_ms(samples["fast"])
        ratio = float(np.median(np.array(samples["simple"]) / np.array(samples["fast"])))
        loops_cell = f"~{loops_ms:.0f}" if loops_ms is not None else "-"
        speedup = f"{loops_ms / simple_ms:14.0f}" if loops_ms is not None else f"{'-':>14}"
        print(f"{case.name:<22}{case.shape_text:<26}{loops_cell:>11}{simple_ms:12.2f}"
              f"{fast_ms:10.2f}{speedup}{ratio:13.2f}", flush=True)
    print("\nTimes in ms, forward+backward at batch 128. loops: plain Python at batch 2, scaled "
          "to 128 (~). simple/fast: the median of each repetition's back-to-back ratio.")


if __name__ == "__main__":
    main()
