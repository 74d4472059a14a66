"""Inference latency at batch 1: minimobile (plain and BN-folded), ONNX Runtime and PyTorch, each
timed on its own, for the four networks at 224x224 (ImageNet, 1000 classes) and 32x32 (the CIFAR
variants, 10 classes), next to the latency the MobileNet papers report.

    python benchmarks/bench_inference.py [--reps 30] [--resolutions 224,32] [--models v1,v2]
                                         [--engines mm,onnxruntime] [--csv out.csv]

How a number is made. Each engine is timed in a block of its own, per network and resolution:
its thread count is set (the same for all: Numba's pool, ONNX Runtime's intra-op threads,
torch.set_num_threads), then it runs warm-up forwards (at least --warmup calls and
--warmup-seconds after the first call, so its thread pool has started and settled, Numba has
loaded its kernels and PyTorch and ONNX Runtime have made their plans), then --reps timed
forwards one after another. The table prints the median and the interquartile range (first to
third quartile) in ms; the CSV also has the fastest and slowest call.

Why a process per engine (the default). An engine with a thread pool keeps its threads
spinning for a while after each call (Numba's libgomp for GOMP_SPINCOUNT iterations, ONNX
Runtime's pool, OpenBLAS's for up to 2^28 cycles, its THREAD_TIMEOUT, about 0.1 s), so an
engine timed right after another one can find the cores taken. And PyTorch and Numba each
bring an OpenMP runtime: in one process both pools would live side by side. The first version
of this script timed one forward of every engine in turn within each repetition, and its
PyTorch column read 94-117 ms for 7 of 8 rows whatever the network (V1 at 32x32: 94 ms, ONNX
Runtime 3 ms), a sign of engines disturbing each other (issue 16). So each engine runs in a
fresh `python bench_inference.py --worker ENGINE` process, one after another, started with the
environment this script was given (minimobile's import sets GOMP_SPINCOUNT, which must not
reach PyTorch's libgomp); nothing else of the benchmark runs while it is timed. --no-isolate
runs the same blocks in this one process instead: quicker to start, for debugging.

The engines. "mm" is the network as built, "mm fused" with batch norm folded into the convs
(`minimobile.deploy`); ONNX Runtime runs the graph of `minimobile.onnx_export` (BN folded);
PyTorch runs the networks of `benchmarks/torch_models.py` in eval mode under inference_mode,
NCHW. Engines whose package is missing are shown as "-". minimobile calls a one-thread BLAS
from inside Numba's pool, one product per thread (see minimobile/parallel.py). "mm fused blas"
is a deliberately bad configuration, kept to show what it costs: the fused network with BLAS
given the same thread count as Numba, so each of Numba's threads calls a BLAS that wants
threads of its own. More threads then want the cores than there are cores, and the waiting
ones spin instead of sleeping, so products and parallel loops wait for threads that have been
pushed off a core; parallel.py measured the same oversubscription making a V1 0.5 training
step 2.9x slower (928 against 318 ms). OpenBLAS (SciPy's, built with its own pthreads pool)
even says so on stderr when called this way: "Detect OpenMP Loop and this application may
hang. Please rebuild the library with USE_OPENMP=1 option."

The papers' figures are phone latencies (TF-Lite, one large core of a Google Pixel 1,
float32, batch 1, 224x224), so they say how fast these networks are meant to be on a
phone, not what this machine should reach.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

# The environment as it was given to us, before minimobile's import sets GOMP_SPINCOUNT: each
# worker process starts from this one.
ENVIRONMENT = dict(os.environ)

import numba  # noqa: E402
import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))

# PyTorch first: its libgomp reads the environment when it is loaded, and should read ours,
# not the GOMP_SPINCOUNT that importing minimobile sets for Numba's libgomp.
try:
    import torch
    import torch_models
except ImportError:
    torch = None

import minimobile as mm  # noqa: E402
from minimobile import deploy, experiments, parallel  # noqa: E402
from minimobile.checkpoint import atomic_open  # noqa: E402
from minimobile.models import build_model  # noqa: E402

try:
    import onnxruntime
    from minimobile import onnx_export
except ImportError:
    onnxruntime = None

NETWORKS = ("v1", "v2", "v3-small", "v3-large")
ENGINES = ("mm", "mm fused", "mm fused blas", "onnxruntime", "pytorch")

# Pixel 1 latency in ms at 224x224, width 1.0, as the papers print it: the tables live in
# minimobile/experiments.py (one copy, shared with notebook 05), each citing its source.
PAPER_MS = {
    **{net: (ms, "V2 paper, Table 4 (Pixel 1)")
       for net, width, _, _, ms in experiments.V2_TABLE_4 if width == 1.0},
    **{net: (ms, "V3 paper, Table 9 (Pixel 1)")
       for net, width, res, _, _, ms in experiments.V3_TABLE_9 if (width, res) == (1.0, 224)},
}


def available(engine):
    """Whether the package `engine` needs is installed."""
    return {"onnxruntime": onnxruntime, "pytorch": torch}.get(engine, mm) is not None


def make_forward(engine, name, resolution, threads):
    """A function of x that runs one forward of network `name` in `engine`, with `threads`."""
    cifar = resolution == 32
    classes = 10 if cifar else 1000
    if engine == "pytorch":
        torch.set_num_threads(threads)  # after minimobile's BLAS limit, so this one holds
        net = torch_models.build(name, 1.0, cifar, classes).eval()

        def run_torch(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()
        return run_torch
    model = build_model(name, 1.0, cifar, classes, seed=0).eval()
    if engine == "onnxruntime":
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = onnxruntime.InferenceSession(
            onnx_export.to_onnx(model, resolution).SerializeToString(), options,
            providers=["CPUExecutionProvider"])
        return lambda x: session.run(None, {onnx_export.INPUT_NAME: x})[0]
    mm.set_num_threads(threads)
    if engine != "mm":
        model = deploy.fuse(model)
    if engine == "mm fused blas":
        threadpool_limits(limits=threads, user_api="blas")  # for the rest of this process
    else:
        parallel.configure_blas_threads()  # minimobile's own setting, restored

    def run_minimobile(x):
        with mm.no_grad():
            return model.forward(x)
    return run_minimobile


def time_block(run, x, reps, warmup=5, warmup_seconds=1.0):
    """Warm `run` up (at least `warmup` calls, and calls for `warmup_seconds` after the first,
    which may compile or load kernels), then time `reps` calls in a row; the times in ms."""
    run(x)
    start, calls = time.perf_counter(), 1
    while calls < warmup or time.perf_counter() - start < warmup_seconds:
        run(x)
        calls += 1
    times = []
    for _ in range(reps):
        begin = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - begin) * 1e3)
    return times


def summary(times):
    """Median, quartiles and extremes of a list of times."""
    q1, median, q3 = np.percentile(times, [25, 50, 75])
    return {"median": float(median), "q1": float(q1), "q3": float(q3),
            "min": float(min(times)), "max": float(max(times))}


def measure_engine(engine, cases, threads, reps, warmup, warmup_seconds):
    """{"name/resolution": summary} for one engine over (name, resolution) cases, one block
    each."""
    results = {}
    for name, resolution in cases:
        x = np.random.default_rng(0).standard_normal((1, 3, resolution, resolution))
        x = x.astype(np.float32)
        run = make_forward(engine, name, resolution, threads)
        results[f"{name}/{resolution}"] = summary(time_block(run, x, reps, warmup,
                                                             warmup_seconds))
    return results


def run_worker(engine, args, cases, threads):
    """Time `engine` in a fresh process of this script; its results, or None if it failed."""
    command = [sys.executable, os.path.abspath(__file__), "--worker", engine,
               "--threads", str(threads), "--reps", str(args.reps), "--warmup", str(args.warmup),
               "--warmup-seconds", str(args.warmup_seconds),
               "--cases", ",".join(f"{name}/{resolution}" for name, resolution in cases)]
    done = subprocess.run(command, env=ENVIRONMENT, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"{engine}: the worker failed, its column is left empty:\n{done.stderr}",
              file=sys.stderr)
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def cell(result):
    if result is None:
        return f"{'-':>20}"
    text = f"{result['median']:.2f} [{result['q1']:.1f}-{result['q3']:.1f}]"
    return f" {text:>19}"  # at least one space between columns, however wide the numbers


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=30, help="timed calls per block (default 30)")
    parser.add_argument("--warmup", type=int, default=5,
                        help="warm-up calls per block, at least (default 5)")
    parser.add_argument("--warmup-seconds", type=float, default=1.0,
                        help="seconds of warm-up calls per block, at least (default 1)")
    parser.add_argument("--resolutions", default="224,32", help="comma-separated (default "
                        "224,32; 32 means the CIFAR variants)")
    parser.add_argument("--models", default=",".join(NETWORKS), help="comma-separated subset")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {', '.join(ENGINES)}")
    parser.add_argument("--csv", metavar="PATH", help="also write the table as CSV")
    parser.add_argument("--no-isolate", action="store_true",
                        help="time every engine in this process, not each in its own")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per engine (default: minimobile's, every core)")
    parser.add_argument("--worker", metavar="ENGINE", help=argparse.SUPPRESS)
    parser.add_argument("--cases", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    # Numba's default count (every core), read without starting Numba's pool in this process.
    threads = args.threads or numba.config.NUMBA_NUM_THREADS
    if args.worker:  # one engine's blocks, in a process of its own; JSON on the last line
        cases = [(c.split("/")[0], int(c.split("/")[1])) for c in args.cases.split(",")]
        print(json.dumps(measure_engine(args.worker, cases, threads, args.reps, args.warmup,
                                        args.warmup_seconds)))
        return 0

    engines = [e for e in args.engines.split(",") if e]
    unknown = sorted(set(engines) - set(ENGINES))
    if unknown:
        parser.error(f"unknown engine(s) {unknown}: choose from {list(ENGINES)}")
    cases = [(name, int(r)) for r in args.resolutions.split(",") for name in args.models.split(",")]
    print(f"batch 1, float32, {threads} threads; each engine timed on its own "
          f"({'in this process' if args.no_isolate else 'a process per engine'}), "
          f"warm-up, then {args.reps} timed call{'s' if args.reps != 1 else ''}: "
          f"median [first-third quartile], ms; "
          f"onnxruntime {getattr(onnxruntime, '__version__', 'absent')}, "
          f"torch {getattr(torch, '__version__', 'absent')}", flush=True)
    results = {}
    for engine in engines:
        if not available(engine):
            results[engine] = None
        elif args.no_isolate:
            results[engine] = measure_engine(engine, cases, threads, args.reps, args.warmup,
                                             args.warmup_seconds)
        else:
            results[engine] = run_worker(engine, args, cases, threads)

    def result(engine, name, resolution):
        return (results.get(engine) or {}).get(f"{name}/{resolution}")

    print(f"{'network':<10}{'input':>6}" + "".join(f"{e:>20}" for e in engines)
          + f"{'fused/ort':>11}   paper (Pixel 1, 224x224)")
    rows = []
    for name, resolution in cases:
        fused, ort = result("mm fused", name, resolution), result("onnxruntime", name, resolution)
        ratio = fused["median"] / ort["median"] if fused and ort else float("nan")
        paper_ms, source = PAPER_MS[name]
        paper = f"{paper_ms:g} ms ({source})" if resolution == 224 else ""
        print(f"{name:<10}{resolution:>6}"
              + "".join(cell(result(e, name, resolution)) for e in engines)
              + f"{ratio:>11.2f}   {paper}")
        row = {"network": name, "resolution": resolution}
        for e in engines:
            r = result(e, name, resolution) or {}
            row[e] = r.get("median", "")  # the median under the engine's own name, as before
            for stat in ("q1", "q3", "min", "max"):
                row[f"{e} {stat}"] = r.get(stat, "")
        row.update(paper_ms=paper_ms if resolution == 224 else "",
                   paper_source=source if resolution == 224 else "")
        rows.append(row)
    if args.csv:
        with atomic_open(args.csv, "w") as f:  # an interrupted write keeps the old file
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        print(f"wrote {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
