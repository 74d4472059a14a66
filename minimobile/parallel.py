"""Thread settings: Numba's thread pool does the parallel work, BLAS runs on one thread.

A training step alternates Numba kernels and BLAS matrix products many times. Both keep their
threads spinning for a while after each call, so with two pools on a two-core machine each
call starts by waiting for the other pool's spinning threads to yield: measured here, a V1
width-0.5 CIFAR step took 928 ms with both pools at 2 threads and 318 ms with BLAS at 1
(`benchmarks/bench_train_step.py`). So on import minimobile limits BLAS to one thread, unless
the environment variable MINIMOBILE_BLAS_THREADS says otherwise.

The big products still use every core: the conv kernels call BLAS (SciPy's, through np.dot in
nopython mode) from inside Numba's parallel loops, one single-threaded product per thread. So
SciPy's BLAS is loaded here, before the limit is applied, or it would come up later with a
thread pool of its own.
"""

import os

import numba
from threadpoolctl import threadpool_limits


def configure_blas_threads():
    """Apply MINIMOBILE_BLAS_THREADS (default 1) to every BLAS library loaded in the process."""
    value = os.environ.get("MINIMOBILE_BLAS_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        raise ValueError(f"MINIMOBILE_BLAS_THREADS: expected a positive integer, got {value!r}")
    if threads < 1:
        raise ValueError(f"MINIMOBILE_BLAS_THREADS: expected a positive integer, got {threads}")
    import scipy.linalg.cython_blas  # noqa: F401  the BLAS that np.dot calls inside kernels

    threadpool_limits(limits=threads, user_api="blas")
    return threads


def set_num_threads(n):
    """Threads for minimobile's Numba kernels (at most NUMBA_NUM_THREADS, the core count)."""
    numba.set_num_threads(n)


def get_num_threads():
    return numba.get_num_threads()
