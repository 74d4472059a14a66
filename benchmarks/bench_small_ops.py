"""Small arrays: is it worth waking the thread pool? Times ops at growing sizes on one thread
and on all threads, alternating call by call, and prints microseconds per call. Where the one-
thread time is lower, the pool costs more than it saves: tuning.SERIAL_MAX_ELEMENTS is set
from this table, and the fast rung (kernels.threads_for) keeps such arrays on one thread.

    python benchmarks/bench_small_ops.py [--repeats 400]

The criterion of the busy-machine issue: an op under 10,000 elements never slower than 20 us
plus its work; the last column is the fast rung as the engine runs it.
"""

import argparse
import time

import numba
import numpy as np

import minimobile as mm
from minimobile import kernels, tuning

SIZES = [256, 1024, 4096, 16384, 65536, 262144]


def cases(size, rng):
    """(name, call) pairs at `size` elements, through the ops as a network calls them."""
    C = 64
    P = max(1, size // C)
    x = rng.standard_normal((1, C, P, 1)).astype(np.float32)
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    xd = rng.standard_normal((1, C, int(P ** 0.5) or 1, int(P ** 0.5) or 1)).astype(np.float32)
    w = rng.standard_normal((C, 1, 3, 3)).astype(np.float32)
    return [("hardswish", lambda: mm.ops.hardswish_forward(x)),
            ("batchnorm (eval)", lambda: mm.ops.batchnorm2d_inference_forward(x, g, b, b, g)),
            ("depthwise 3x3", lambda: mm.ops.depthwise_conv2d_forward(xd, w))]


def per_call_us(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e6 * float(np.median(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=400)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    threads = numba.get_num_threads()
    print(f"{threads} threads; GOMP_SPINCOUNT={__import__('os').environ.get('GOMP_SPINCOUNT')}; "
          f"tuning.SERIAL_MAX_ELEMENTS={tuning.SERIAL_MAX_ELEMENTS}; median us per call")
    print(f"{'op':<18}{'elements':>10}{'1 thread':>10}{f'{threads} threads':>11}{'fast rung':>11}")
    saved = tuning.SERIAL_MAX_ELEMENTS
    for size in SIZES:
        for name, fn in cases(size, rng):
            fn()
            results = {"one": [], "all": [], "fast": []}
            for _ in range(4):  # alternate in blocks, so drift hits all three alike
                tuning.SERIAL_MAX_ELEMENTS = 10**12
                results["one"].append(per_call_us(fn, args.repeats // 4))
                tuning.SERIAL_MAX_ELEMENTS = -1
                results["all"].append(per_call_us(fn, args.repeats // 4))
                tuning.SERIAL_MAX_ELEMENTS = saved
                with kernels.use("fast"):
                    results["fast"].append(per_call_us(fn, args.repeats // 4))
            one, every, fast = (float(np.median(results[k])) for k in ("one", "all", "fast"))
            print(f"{name:<18}{size:>10}{one:10.1f}{every:11.1f}{fast:11.1f}", flush=True)


if __name__ == "__main__":
    main()
