"""Forward and forward+backward time of every op: minimobile's Numba kernels, a NumPy version,
and PyTorch on the CPU (both layouts, same thread count) where torch is installed.

Shapes are MobileNet-shaped at batch 128 on CIFAR-sized maps. Every contender is timed in
turn inside each repetition, so a slow spell of this shared machine hits all of them alike;
the table shows medians, and the median over repetitions of the ratio of minimobile to
PyTorch's faster layout, each ratio from timings taken back to back.

    python benchmarks/bench_ops.py [--repeats 15] [--threads 2] [--ops depthwise3x3,bn]
                                   [--malloc default|keep]

The NumPy column is CS231n-style im2col for the depthwise conv (benchmarks/numpy_baselines.py)
and the loop references of `minimobile.reference` for the rest, timed on a batch of 2 and
scaled to the full batch (they are linear in N; marked with ~).
"""

import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

import numba  # noqa: E402

from minimobile import memory, ops, reference  # noqa: E402
import numpy_baselines  # noqa: E402

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # the PyTorch columns are optional
    torch = None


def median_ms(samples):
    return 1e3 * float(np.median(samples))


class Case:
    """One op at one shape: how to run it in minimobile, in NumPy and in torch."""

    def __init__(self, name, shape_text, mm_fwd, mm_bwd, np_fn=None, np_scale=1.0,
                 torch_fn=None, torch_inputs=None):
        self.name, self.shape_text = name, shape_text
        self.mm_fwd, self.mm_bwd = mm_fwd, mm_bwd
        self.np_fn, self.np_scale = np_fn, np_scale
        self.torch_fn, self.torch_inputs = torch_fn, torch_inputs


def make_cases(rng, names):
    f32 = np.float32
    N = 128
    cases = []

    def arr(*shape):
        return rng.standard_normal(shape).astype(f32)

    def add_depthwise(name, C, H, K, stride):
        x, w = arr(N, C, H, H), arr(C, 1, K, K)
        pad = K // 2
        out, _ = ops.depthwise_conv2d_forward(x, w, stride, pad)
        dout = arr(*out.shape)

        def np_fn(fwd_only):
            o, cache = numpy_baselines.depthwise_forward_im2col(x, w, stride, pad)
            if not fwd_only:
                numpy_baselines.depthwise_backward_im2col(dout, cache)
        cases.append(Case(
            name, f"N={N} C={C} {H}x{H} K={K} s={stride}",
            lambda: ops.depthwise_conv2d_forward(x, w, stride, pad),
            lambda cache: ops.depthwise_conv2d_backward(dout, cache), np_fn, 1.0,
            lambda t: F.conv2d(t["x"], t["w"], stride=stride, padding=pad, groups=C),
            dict(x=x, w=w, dout=dout)))

    add_depthwise("depthwise3x3", 96, 16, 3, 1)
    add_depthwise("depthwise3x3_s2", 96, 16, 3, 2)
    add_depthwise("depthwise5x5", 120, 8, 5, 1)

    def add_generic(name, shape_text, forward, backward, ref_fn, torch_fn, inputs, dout_shape):
        dout = arr(*dout_shape)
        small = {k: (v[:2] if k == "x" else v) for k, v in inputs.items()}

        def np_fn(fwd_only):
            ref_fn(small, dout[:2], fwd_only)
        cases.append(Case(name, shape_text, lambda: forward(**inputs),
                          lambda cache: backward(dout, cache), np_fn, N / 2, torch_fn,
                          dict(inputs, dout=dout)))

    x, w = arr(N, 32, 16, 16), arr(64, 32, 1, 1)

    def ref_pointwise(t, d, fwd_only):
        reference.pointwise_conv2d_forward(t["x"], t["w"])
        if not fwd_only:
            reference.pointwise_conv2d_backward(d, t["x"], t["w"])
    add_generic("pointwise", f"N={N} 32->64 16x16", ops.pointwise_conv2d_forward,
                ops.pointwise_conv2d_backward, ref_pointwise,
                lambda t: F.conv2d(t["x"], t["w"]), dict(x=x, w=w), (N, 64, 16, 16))

    x, w = arr(N, 3, 32, 32), arr(32, 3, 3, 3)

    def ref_conv(t, d, fwd_only):
        reference.conv2d_forward(t["x"], t["w"], 1, 1)
        if not fwd_only:
            reference.conv2d_backward(d, t["x"], t["w"], 1, 1)
    add_generic("conv3x3_stem", f"N={N} 3->32 32x32", lambda x, w: ops.conv2d_forward(x, w, 1, 1),
                ops.conv2d_backward, ref_conv, lambda t: F.conv2d(t["x"], t["w"], padding=1),
                dict(x=x, w=w), (N, 32, 32, 32))

    x, g, b = arr(N, 96, 16, 16), arr(96), arr(96)

    def ref_bn(t, d, fwd_only):
        reference.batchnorm2d_forward(t["x"], t["gamma"], t["beta"])
        if not fwd_only:
            reference.batchnorm2d_backward(d, t["x"], t["gamma"])
    add_generic("batchnorm", f"N={N} C=96 16x16", ops.batchnorm2d_forward,
                ops.batchnorm2d_backward, ref_bn,
                lambda t: F.batch_norm(t["x"], None, None, t["gamma"], t["beta"], training=True),
                dict(x=x, gamma=g, beta=b), (N, 96, 16, 16))

    for act, tfn in (("relu", F.relu if torch else None), ("relu6", F.relu6 if torch else None),
                     ("hardswish", F.hardswish if torch else None),
                     ("hardsigmoid", F.hardsigmoid if torch else None)):
        x = arr(N, 96, 16, 16) * 4

        def ref_act(t, d, fwd_only, act=act):
            getattr(reference, f"{act}_forward")(t["x"])
            if not fwd_only:
                getattr(reference, f"{act}_backward")(d, t["x"])
        add_generic(act, f"N={N} C=96 16x16", getattr(ops, f"{act}_forward"),
                    getattr(ops, f"{act}_backward"), ref_act,
                    (lambda t, tfn=tfn: tfn(t["x"])), dict(x=x), (N, 96, 16, 16))

    x = arr(N, 1280, 4, 4)

    def ref_pool(t, d, fwd_only):
        reference.global_avg_pool_forward(t["x"])
        if not fwd_only:
            reference.global_avg_pool_backward(d, t["x"])
    add_generic("global_avg_pool", f"N={N} C=1280 4x4", ops.global_avg_pool_forward,
                ops.global_avg_pool_backward, ref_pool,
                lambda t: F.adaptive_avg_pool2d(t["x"], 1), dict(x=x), (N, 1280, 1, 1))

    x, w, b = arr(N, 1280), arr(10, 1280), arr(10)

    def ref_linear(t, d, fwd_only):
        reference.linear_forward(t["x"], t["w"], t["b"])
        if not fwd_only:
            reference.linear_backward(d, t["x"], t["w"])
    add_generic("linear", f"N={N} 1280->10", ops.linear_forward, ops.linear_backward,
                ref_linear, lambda t: F.linear(t["x"], t["w"], t["b"]), dict(x=x, w=w, b=b),
                (N, 10))

    x = arr(N, 1280)
    drop_rng = np.random.default_rng(0)
    cases.append(Case("dropout", f"N={N} 1280 p=0.2",
                      lambda: ops.dropout_forward(x, 0.2, drop_rng),
                      lambda cache: ops.dropout_backward(x, cache), None, 1.0,
                      lambda t: F.dropout(t["x"], 0.2, True), dict(x=x, dout=x)))

    logits, labels = arr(N, 10), rng.integers(0, 10, N)
    cases.append(Case("softmax_cross_entropy", f"N={N} 10 classes",
                      lambda: (None, ops.softmax_cross_entropy(logits, labels, 0.1)),
                      lambda cache: None, None, 1.0,
                      (lambda t: F.cross_entropy(t["x"], t["labels"], label_smoothing=0.1)),
                      dict(x=logits, labels=labels)))
    return [c for c in cases if not names or c.name in names]


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
        if case.np_fn is not None and args.numpy_repeats > 0:  # 0 skips the NumPy column
            times = []
            for _ in range(args.numpy_repeats):
                t0 = time.perf_counter()
                case.np_fn(False)
                times.append(time.perf_counter() - t0)
            np_ms = median_ms(times) * case.np_scale
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
                     f"{('~' if case.np_scale != 1 else '') + f'{np_ms:.1f}':>10}")
        for key, idx in (("pt", 0), ("pt", 1), ("ptCL", 1)):
            cells.append(f"{result[key][idx]:8.2f}" if key in result else f"{'-':>8}")
        cells.append(f"{ratio:7.2f}" if ratio is not None else f"{'-':>7}")
        cells.append(f"{np_ms / mm_t:8.0f}" if np_ms else f"{'-':>8}")
        print("".join(cells), flush=True)
    print("\nmm/pt: minimobile forward+backward over PyTorch's faster layout (below 1 is faster), "
          "the median of the ratios of each repetition's back-to-back timings.")
    print("np/mm: how many times faster the Numba kernels are than the NumPy version.")


if __name__ == "__main__":
    main()
