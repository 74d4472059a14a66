"""The argument check shared by the optimisers, the schedules and the trainer: one line that
names what was wrong, what was expected and what came. (The ops check their arrays with
their own helpers in ops.py, which also name the op.)"""

import math
import numbers


def require(ok, what, expected, got):
    """Raise ValueError("{what}: expected {expected}, got {got!r}") unless ok."""
    if not ok:
        raise ValueError(f"{what}: expected {expected}, got {got!r}")


def is_int(x):
    """An integer, NumPy's included, but not a bool (True is an int to Python)."""
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def is_number(x):
    """A finite real number, NumPy's included, but not a bool: what a rate, a fraction or a
    multiplier must be before its range is checked (a string would fail the comparison with
    a TypeError that names nothing; infinity would pass it)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x)
