"""Start-up cost: `import minimobile` plus a first forward and backward of every op, in a fresh
process, with a cold Numba cache (everything compiles) and then with a warm one (compiled
machine code is loaded from the cache).

    python benchmarks/bench_startup.py [--dtype float32]

The cold run uses a fresh, temporary NUMBA_CACHE_DIR, so it never disturbs the project's
cache; the warm runs reuse that directory.
"""

import argparse
import os
import subprocess
import sys
import tempfile

FIRST_USE = r"""
import time
t0 = time.perf_counter()
import numpy as np
import minimobile
from minimobile import ops
t_import = time.perf_counter() - t0
dtype = np.dtype("{dtype}")
rng = np.random.default_rng(0)
def arr(*shape):
    return rng.standard_normal(shape).astype(dtype)
x = arr(2, 8, 9, 9)
calls = [
    (ops.conv2d_forward, ops.conv2d_backward, (x, arr(4, 8, 3, 3), 2, 1)),
    (ops.depthwise_conv2d_forward, ops.depthwise_conv2d_backward, (x, arr(8, 1, 3, 3), 1, 1)),
    (ops.pointwise_conv2d_forward, ops.pointwise_conv2d_backward, (x, arr(4, 8, 1, 1), arr(4))),
    (ops.batchnorm2d_forward, ops.batchnorm2d_backward, (x, arr(8), arr(8))),
    (lambda *a: ops.batchnorm2d_inference_forward(*a, np.zeros(8, dtype), np.ones(8, dtype)),
     ops.batchnorm2d_inference_backward, (x, arr(8), arr(8))),
    (ops.relu_forward, ops.relu_backward, (x,)),
    (ops.relu6_forward, ops.relu6_backward, (x,)),
    (ops.hardswish_forward, ops.hardswish_backward, (x,)),
    (ops.hardsigmoid_forward, ops.hardsigmoid_backward, (x,)),
    (ops.global_avg_pool_forward, ops.global_avg_pool_backward, (x,)),
    (ops.scale_channels_forward, ops.scale_channels_backward, (x, arr(2, 8, 1, 1))),
    (ops.linear_forward, ops.linear_backward, (arr(2, 8), arr(3, 8), arr(3))),
    (lambda x: ops.dropout_forward(x, 0.2, rng), ops.dropout_backward, (x,)),
]
for forward, backward, args in calls:
    out, cache = forward(*args)
    backward(np.ones_like(out), cache)
ops.softmax_cross_entropy(arr(2, 10), np.array([1, 2]))
print(f"{{t_import:.2f}} {{time.perf_counter() - t0:.2f}}")
"""


def run(code, cache_dir):
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True)
    import_s, total_s = map(float, done.stdout.split())
    return import_s, total_s


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--warm-runs", type=int, default=3)
    args = parser.parse_args(argv)
    code = FIRST_USE.format(dtype=args.dtype)
    with tempfile.TemporaryDirectory() as cache_dir:
        cold = run(code, cache_dir)
        warm = [run(code, cache_dir) for _ in range(args.warm_runs)]
    print(f"import + first forward and backward of every op ({args.dtype}), fresh process:")
    print(f"  cold Numba cache: {cold[1]:6.2f} s (import {cold[0]:.2f} s)")
    best = min(warm, key=lambda r: r[1])
    print(f"  warm Numba cache: {best[1]:6.2f} s (import {best[0]:.2f} s; best of "
          f"{args.warm_runs}: {', '.join(f'{w[1]:.2f}' for w in warm)})")


if __name__ == "__main__":
    main()
