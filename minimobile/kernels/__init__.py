"""The kernels: every op's loops, one module per op family, each op a staircase.

    depthwise.py    the depthwise conv (3x3 and 5x5, stride 1 and 2)
    matmul.py       the 1x1 (pointwise) conv, the im2col stem conv and the linear layer
    batchnorm.py    batch norm in training mode (with the activation fused after it) and in
                    evaluation mode
    elementwise.py  activations, pooling, the squeeze-excite gate, bias and channel sums,
                    dropout and the softmax cross-entropy
    int8.py         the int8 products of post-training quantisation
    updates.py      the optimisers' steps (SGD, RMSprop, AdamW) and the weights' moving average

Read a module top to bottom and every op climbs the same three rungs, with one signature:

    <op>_loops    plain Python loops, the definition as written on paper: read this first
    <op>_simple   a short Numba kernel, parallel over one axis whose writes are disjoint
    <op>_fast     what the engine runs: the simple kernel changed where measurements showed
                  time going to memory traffic or loop overhead; each change is headed by what
                  it changes, why that is faster and what it gained on this machine

Each rung is tested against the rung below it (tests/test_kernels.py). The whole engine runs
on any rung: `MINIMOBILE_KERNELS=loops|simple|fast` (default fast) in the environment, or in
Python

    with minimobile.kernels.use("simple"):
        loss = train_step(...)      # every op of the network on the simple kernels

Conventions, stated once for every kernel:
- Outputs first, then inputs, then sizes and settings (llm.c's order): `f(out, x, w, ...)`,
  `f_backward(dx, dw, dout, x, w, ...)`. Kernels fill preallocated arrays and return nothing
  (the loss returns its value); they allocate only small per-thread scratch, never in the
  innermost loop.
- `prange` runs only over disjoint writes: thread c alone writes channel c. A sum over the
  batch is cut into a fixed number of shares (`tuning.SUM_TASKS`), each summed by one task and
  added in task order, so every result is the same bits on every run and for any thread count.
- No `fastmath`, but for sums that are vectorised only if their additions may be reordered
  (fastmath's "reassoc" alone, on five small functions: the depthwise conv's
  `_tap_sums_3x3`, batch norm's `_row_sums` and `_shifted_row_sums`, and elementwise.py's
  `_row_means` (pooling) and `_gate_rows_backward` (squeeze-excite's gate)). The order is
  then the compiled code's, the same on every run and for any thread count; float64 gradient
  checks still pass at 1e-10.
- Tuned numbers (thresholds between loop orders, task counts) live in `minimobile.tuning`,
  each with its measurement or, where none was made, its reasoning; the `_fast` dispatchers
  read them at call time and pass them in, so a cached compiled kernel never holds a stale
  one.

Debugging: `NUMBA_DISABLE_JIT=1 python -m pytest -x tests/test_kernels.py` runs every kernel
as plain Python (pdb and print work inside), or call `kernel.py_func(...)` on small arrays.
Numba compiles each kernel on first use and caches the machine code in `__pycache__`
(`cache=True`), so only the first run after an install or an edit pays the compile.
"""

import contextlib
import os

import numba

from .. import tuning
from ..errors import SettingError

RUNGS = ("loops", "simple", "fast")


def _rung_from_environment():
    value = os.environ.get("MINIMOBILE_KERNELS", "fast")
    if value not in RUNGS:
        raise SettingError(f"MINIMOBILE_KERNELS: expected one of {', '.join(RUNGS)}, got "
                           f"{value!r}")
    return value


# A bad environment variable is kept here and raised by the first kernel call (check_settings),
# not on import: the command line can then print it as one line instead of a traceback.
_setting_error = None


def _defer_setting_error(error):
    """Keep a SettingError found on import (here, or by minimobile/__init__.py for
    MINIMOBILE_BLAS_THREADS), to be raised by check_settings; the first one found wins."""
    global _setting_error
    if _setting_error is None:
        _setting_error = error


def check_settings():
    """Raise SettingError if MINIMOBILE_KERNELS or MINIMOBILE_BLAS_THREADS held a value that
    cannot be used when minimobile was imported. pick and current run it first, so every op
    does; so do the command line, train.fit and sweep.run, before any other work. The
    variables are read once: fix the value and start Python again."""
    if _setting_error is not None:
        # A new exception each time: re-raising the kept one would pile every earlier
        # caller's traceback onto it.
        raise SettingError(str(_setting_error))


try:
    _rung = _rung_from_environment()
except SettingError as error:
    # A valid rung all the same, so that use() and set_rung keep working; no op runs on it,
    # as check_settings stops them first.
    _rung = "fast"
    _defer_setting_error(error)


def current():
    """The rung every op runs on now: "loops", "simple" or "fast"."""
    check_settings()
    return _rung


def set_rung(rung):
    """Run every op on `rung` from now on (prefer `use`, which puts the old one back)."""
    global _rung
    if rung not in RUNGS:
        raise ValueError(f"kernels.use: expected one of {', '.join(RUNGS)}, got {rung!r}")
    _rung = rung


@contextlib.contextmanager
def use(rung):
    """`with kernels.use("simple"): ...` runs every op inside on that rung."""
    previous = _rung
    set_rung(rung)
    try:
        yield rung
    finally:
        set_rung(previous)


@contextlib.contextmanager
def threads_for(elements):
    """Run the parallel kernels inside on one thread when the array has at most
    tuning.SERIAL_MAX_ELEMENTS elements: waking a sleeping worker thread costs more than the
    work (the fast rung's dispatchers use it; the bits do not change, see the conventions)."""
    if elements > tuning.SERIAL_MAX_ELEMENTS:
        yield
        return
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def pick(module, op):
    """The function `<op>_<rung>` of a kernel module, for the current rung."""
    check_settings()
    return getattr(module, f"{op}_{_rung}")


from . import batchnorm, depthwise, elementwise, int8, matmul, updates  # noqa: E402

__all__ = ["RUNGS", "current", "set_rung", "use", "pick", "threads_for", "check_settings",
           "batchnorm", "depthwise", "elementwise", "int8", "matmul", "updates"]
