"""Thread settings: Numba's thread pool does the parallel work, BLAS runs on one thread, and
waiting threads sleep instead of spinning.

A training step alternates Numba kernels and BLAS matrix products many times. Both keep their
threads spinning for a while after each call, so with two pools on a two-core machine each
call starts by waiting for the other pool's spinning threads to yield: measured here, a V1
width-0.5 CIFAR step took 928 ms with both pools at 2 threads and 318 ms with BLAS at 1
(`benchmarks/bench_train_step.py`, 2026-11-25; not committed as a table). So on import
minimobile limits BLAS to one thread, unless the environment variable MINIMOBILE_BLAS_THREADS
says otherwise.

The big products still use every core: the conv kernels call BLAS (SciPy's, through np.dot in
nopython mode) from inside Numba's parallel loops, one single-threaded product per thread. So
SciPy's BLAS is loaded here, before the limit is applied, or it would come up later with a
thread pool of its own.
"""

import os

import numba
from threadpoolctl import threadpool_limits

from . import tuning
from .errors import SettingError


def configure_waiting():
    """Let Numba's worker threads sleep soon after their share of a loop is done.

    Numba's default threading layer here is OpenMP (GNU libgomp), whose threads spin for
    about a millisecond (GOMP_SPINCOUNT=300000) at the end of every parallel loop, waiting for
    the next. On a quiet machine that saves a wake-up; on a busy one the spinning thread holds
    a core that another process needs, and both crawl: a V1 0.5 training step fell from 412-559
    to 57-62 images/s beside a second process (benchmarks/bench_contention.py, 2026-11-29, not
    committed as a table). libgomp reads its environment once, when it is
    loaded, which is at the first parallel kernel, so this runs on import. Returns the spin
    count set, or None when the environment already says (OMP_WAIT_POLICY or GOMP_SPINCOUNT
    set by the user wins).
    """
    if "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return None
    os.environ["GOMP_SPINCOUNT"] = str(tuning.GOMP_SPINCOUNT)
    return tuning.GOMP_SPINCOUNT


def configure_blas_threads():
    """Apply MINIMOBILE_BLAS_THREADS (default 1) to every BLAS library loaded in the process;
    a value that is not a positive integer raises SettingError and changes nothing."""
    value = os.environ.get("MINIMOBILE_BLAS_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        raise SettingError(f"MINIMOBILE_BLAS_THREADS: expected a positive integer, got "
                           f"{value!r}") from None
    if threads < 1:
        raise SettingError(f"MINIMOBILE_BLAS_THREADS: expected a positive integer, got "
                           f"{value!r}")
    import scipy.linalg.cython_blas  # noqa: F401  the BLAS that np.dot calls inside kernels

    threadpool_limits(limits=threads, user_api="blas")
    return threads


def set_num_threads(n):
    """Threads for minimobile's Numba kernels (at most NUMBA_NUM_THREADS, the core count)."""
    numba.set_num_threads(n)


def get_num_threads():
    return numba.get_num_threads()


def describe():
    """One line on the thread settings in force, for the command line to print: when training
    runs far slower than it should, this is the first thing to look at (see
    docs/TROUBLESHOOTING.md, "Slow on a busy machine")."""
    if "OMP_WAIT_POLICY" in os.environ:
        waiting = f"OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}"
    else:
        waiting = f"idle threads sleep after {os.environ.get('GOMP_SPINCOUNT', '300000')} spins"
    blas = os.environ.get("MINIMOBILE_BLAS_THREADS", "1")
    return (f"threads: {numba.get_num_threads()} Numba ({waiting}), BLAS {blas} per thread; "
            f"set NUMBA_NUM_THREADS=1 if other programs keep the cores busy")
