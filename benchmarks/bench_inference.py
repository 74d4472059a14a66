"""Inference latency at batch 1: minimobile (plain and BN-folded), ONNX Runtime and PyTorch, side
by side, for the four networks at 224x224 (ImageNet, 1000 classes) and 32x32 (the CIFAR
variants, 10 classes), next to the latency the MobileNet papers report.

    python benchmarks/bench_inference.py [--reps 30] [--resolutions 224,32] [--csv out.csv]

Each repetition times one forward of every contender in turn, so a change in machine load
hits them all alike; the median over repetitions is printed, in ms. The same thread count is
given to all (Numba's pool, ONNX Runtime's intra-op threads, torch.set_num_threads). ONNX
Runtime runs the graph of `minimobile.onnx_export` (BN folded); PyTorch runs the networks of
`benchmarks/torch_models.py` in eval mode under inference_mode, NCHW. Contenders whose package
is missing are shown as "-". minimobile calls a one-thread BLAS from inside Numba's pool, one
product per thread (see minimobile/parallel.py); "mm fused blas" is the fused network with BLAS
given the same thread count as well, so each of Numba's threads starts BLAS threads of its own:
it shows what oversubscribing the cores with a second thread pool costs.

The papers' figures are phone latencies (TF-Lite, one large core of a Google Pixel 1,
float32, batch 1, 224x224), so they say how fast these networks are meant to be on a
phone, not what this machine should reach.
"""

import argparse
import csv
import os
import statistics
import sys
import time

import numpy as np
from threadpoolctl import ThreadpoolController

sys.path.insert(0, os.path.dirname(__file__))

import minimobile as mm  # noqa: E402
from minimobile import deploy, experiments  # noqa: E402
from minimobile.models import build_model  # noqa: E402

try:
    import torch
    import torch_models
except ImportError:
    torch = None
try:
    import onnxruntime
    from minimobile import onnx_export
except ImportError:
    onnxruntime = None

NETWORKS = ("v1", "v2", "v3-small", "v3-large")

# Pixel 1 latency in ms at 224x224, width 1.0, as the papers print it: the tables live in
# minimobile/experiments.py (one copy, shared with notebook 05), each citing its source.
PAPER_MS = {
    **{net: (ms, "V2 paper, Table 4 (Pixel 1)")
       for net, width, _, _, ms in experiments.V2_TABLE_4 if width == 1.0},
    **{net: (ms, "V3 paper, Table 9 (Pixel 1)")
       for net, width, res, _, _, ms in experiments.V3_TABLE_9 if (width, res) == (1.0, 224)},
}


def contenders(name, resolution, threads):
    """{label: a function of x that runs one forward} for one network and resolution."""
    cifar = resolution == 32
    classes = 10 if cifar else 1000
    model = build_model(name, 1.0, cifar, classes, seed=0).eval()
    fused = deploy.fuse(model)
    runs = {}

    def run_minimobile(m):
        def forward(x):
            with mm.no_grad():
                return m.forward(x)
        return forward

    runs["mm"] = run_minimobile(model)
    runs["mm fused"] = run_minimobile(fused)
    controller = ThreadpoolController()  # finds the BLAS libraries once, not at every call

    def run_fused_threaded_blas(x):
        with controller.limit(limits=threads, user_api="blas"):
            return runs["mm fused"](x)
    runs["mm fused blas"] = run_fused_threaded_blas
    if onnxruntime is not None:
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            onnx_export.to_onnx(model, resolution).SerializeToString(), options,
            providers=["CPUExecutionProvider"])
        runs["onnxruntime"] = lambda x: session.run(None, {onnx_export.INPUT_NAME: x})[0]
    if torch is not None:
        torch.set_num_threads(threads)
        net = torch_models.build(name, 1.0, cifar, classes).eval()

        def run_torch(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()
        runs["pytorch"] = run_torch
    return runs


def measure(runs, x, reps, warmup=3):
    """Median ms per forward of each contender, alternating contenders within a repetition."""
    times = {label: [] for label in runs}
    for rep in range(warmup + reps):
        for label, run in runs.items():
            start = time.perf_counter()
            run(x)
            elapsed = (time.perf_counter() - start) * 1e3
            if rep >= warmup:
                times[label].append(elapsed)
    return {label: statistics.median(t) for label, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="timed repetitions (default 30)")
    parser.add_argument("--resolutions", default="224,32", help="comma-separated (default "
                        "224,32; 32 means the CIFAR variants)")
    parser.add_argument("--models", default=",".join(NETWORKS), help="comma-separated subset")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    args = parser.parse_args(argv)
    threads = mm.get_num_threads()
    labels = ["mm", "mm fused", "mm fused blas", "onnxruntime", "pytorch"]
    print(f"batch 1, float32, {threads} threads, median of {args.reps} repetitions, ms; "
          f"onnxruntime {getattr(onnxruntime, '__version__', 'absent')}, "
          f"torch {getattr(torch, '__version__', 'absent')}")
    header = (f"{'network':<10}{'input':>6}" + "".join(f"{label:>14}" for label in labels)
              + f"{'fused/ort':>11}   paper (Pixel 1, 224x224)")
    print(header)
    rows = []
    rng = np.random.default_rng(0)
    for resolution in (int(r) for r in args.resolutions.split(",")):
        x = rng.standard_normal((1, 3, resolution, resolution)).astype(np.float32)
        for name in args.models.split(","):
            result = measure(contenders(name, resolution, threads), x, args.reps)
            ratio = (result["mm fused"] / result["onnxruntime"]
                     if "onnxruntime" in result else float("nan"))
            paper_ms, source = PAPER_MS[name]
            paper = f"{paper_ms:g} ms ({source})" if resolution == 224 else ""
            print(f"{name:<10}{resolution:>6}"
                  + "".join(f"{result[label]:>14.2f}" if label in result else f"{'-':>14}"
                            for label in labels)
                  + f"{ratio:>11.2f}   {paper}", flush=True)
            rows.append({"network": name, "resolution": resolution,
                         **{label: result.get(label, "") for label in labels},
                         "paper_ms": paper_ms if resolution == 224 else "",
                         "paper_source": source if resolution == 224 else ""})
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
