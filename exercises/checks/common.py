"""What every exercise check shares: which module to judge, and failure messages a learner can
act on (which function, which output or gradient, on which shape, by how much, where, a hint).

The verdicts themselves are the library's: `minimobile.gradcheck.relative_error` (largest
difference over largest magnitude) against the public ops of `minimobile.ops` run in float64,
and against `minimobile.gradcheck.numerical_gradient` (float64 central differences).

Hints come in two tiers: a failure prints the first, which points the way; the full recipe is
printed only on request, with MINIMOBILE_HINTS=full (or `python -m exercises hint exNN`).
"""

import importlib
import os
import re
import traceback
from pathlib import Path

import numpy as np

from minimobile.gradcheck import numerical_gradient, relative_error

ENV_VARIABLE = "MINIMOBILE_EXERCISES"
FORWARD_TOL = 1e-10  # float64 against the loop reference: only rounding may differ
FLOAT32_TOL = 1e-5
GRAD_TOL = 1e-7  # the library's own tolerance for a backward against central differences


def load_exercise(name):
    """The learner's `exercises/<name>.py`, or with MINIMOBILE_EXERCISES=solutions the reference
    solution `exercises/solutions/<name>.py`."""
    which = os.environ.get(ENV_VARIABLE, "learner")
    if which not in ("learner", "solutions"):
        raise ValueError(f"{ENV_VARIABLE}: expected 'learner' or 'solutions', got {which!r}")
    package = "exercises.solutions" if which == "solutions" else "exercises"
    return importlib.import_module(f"{package}.{name}")


HINTS_VARIABLE = "MINIMOBILE_HINTS"
EXERCISES_DIR = Path(__file__).resolve().parents[1]


class ExerciseFailure(AssertionError):
    """A check's verdict: exercises/conftest.py prints its message alone, without a traceback
    through the checks (which says nothing the message does not)."""


class Hint(tuple):
    """A hint in two tiers: `first` points the way, `full` is the recipe, shown only with
    MINIMOBILE_HINTS=full."""

    def __new__(cls, first, full):
        return super().__new__(cls, (first, full))


def format_hint(hint, exercise="exNN"):
    """The hint's text under a failure message; `exercise` (e.g. "ex03") names the exercise in
    the pointer to its full recipe."""
    if not hint:
        return ""
    if isinstance(hint, Hint):
        first, full = hint
        if os.environ.get(HINTS_VARIABLE, "").lower() == "full":
            return f"\n  hint: {first}\n  recipe: {full}"
        return (f"\n  hint: {first}\n  (the full recipe: {HINTS_VARIABLE}=full python -m pytest "
                f"..., or python -m exercises hint {exercise})")
    return f"\n  hint: {hint}"


def fail(message, hint=None):
    """Raise the check's verdict. Every check's message starts with its exercise, "ex03 ...",
    which the hint's pointer to the full recipe repeats."""
    named = re.match(r"ex\d\d\b", message)
    raise ExerciseFailure(message + format_hint(hint, named.group(0) if named else "exNN"))


def _where_in_learner_code(error):
    """'exercises/ex03_mobilenet_v2.py:41 in forward: out = ...' for the deepest frame of an
    exception's traceback in an exercise file (not the checks), or ''."""
    found = ""
    for frame in traceback.extract_tb(error.__traceback__):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(EXERCISES_DIR) and "checks" not in path.parts[-2:]:
            found = (f"{path.relative_to(EXERCISES_DIR.parent)}:{frame.lineno} in {frame.name}: "
                     f"{(frame.line or '').strip()}")
    return found


def call(what, f, *args, hint=None, returns=None, **kwargs):
    """f(*args, **kwargs); a stub's NotImplementedError passes through unchanged, any other
    exception becomes a failure that names the call and carries the hint. `returns` names the
    items of the tuple f must return, e.g. ("out", "cache")."""
    try:
        result = f(*args, **kwargs)
    except NotImplementedError:
        raise
    except ExerciseFailure:
        raise
    except Exception as e:  # noqa: BLE001: whatever the learner's code raised, say where
        where = _where_in_learner_code(e)
        fail(f"{what} raised {type(e).__name__}: {e}" + (f"\n  at {where}" if where else ""),
             hint)
    if returns is not None and not (isinstance(result, tuple) and len(result) == len(returns)):
        got = (f"a tuple of {len(result)}" if isinstance(result, tuple)
               else type(result).__name__)
        fail(f"{what} returned {got}; expected the tuple ({', '.join(returns)})",
             "return them in this order, as the library's function of the same name does")
    return result


def describe(**arrays_and_values):
    """'x (2, 3, 4, 5), K=3, stride=2' from arrays (by shape) and scalars (by value)."""
    parts = []
    for name, v in arrays_and_values.items():
        parts.append(f"{name} of shape {v.shape}" if isinstance(v, np.ndarray) else f"{name}={v}")
    return ", ".join(parts)


def _fmt(v, digits=6):
    return f"{float(v):.{digits}g}"


def fmt_pair(a, b):
    """Two floats with just enough significant digits (6 to 17) to tell them apart."""
    for digits in range(6, 18):
        if _fmt(a, digits) != _fmt(b, digits) or float(a) == float(b):
            break
    return _fmt(a, digits), _fmt(b, digits)


EPS_HINT = ("the error is tiny but real: everything is right except a constant of eps's size; "
            "look at eps (is it the one passed in, added to the variance, under the square root: "
            "1 / sqrt(var + eps)?)")


def assert_close(got, expected, what, where, tol, hint=None, context=None, pieces=None,
                 eps_band=None):
    """Fail unless relative_error(got, expected) <= tol, saying by how much and where.

    what: 'ex03 relu6_forward: out'; where: 'for x of shape (2, 3, 4, 5)'. context: arrays of
    got's shape whose value at the worst index helps (e.g. {'x': x}). pieces: (label, mask)
    pairs of got's shape; the message then says on which pieces the errors are. eps_band: an
    upper bound; an error above tol and below it is blamed on eps (EPS_HINT).
    """
    if got is None:
        fail(f"{what} is None {where}", hint)
    got = np.asarray(got)
    expected = np.asarray(expected)
    if got.shape != expected.shape:
        fail(f"{what} has shape {got.shape} {where}; expected {expected.shape}", hint)
    if not np.isfinite(got).all():
        bad = np.argwhere(~np.isfinite(got))
        fail(f"{what} has {len(bad)} NaN or infinite entries {where}, the first at index "
             f"{tuple(int(i) for i in bad[0])}", hint)
    err = relative_error(got, expected)
    if err <= tol:
        return err
    diff = np.abs(got.astype(np.float64) - expected.astype(np.float64))
    index = np.unravel_index(int(np.argmax(diff)), diff.shape)
    index_text = tuple(int(i) for i in index)
    yours, wanted = fmt_pair(got[index], expected[index])
    lines = [f"{what} is wrong {where}: relative error {err:.2e} (tolerance {tol:.0e})",
             f"  largest difference {diff[index]:.3g} at index {index_text}: yours "
             f"{yours}, expected {wanted}"]
    if context:
        lines[-1] += "".join(f", where {name} = {_fmt(a[index])}" for name, a in context.items()
                             if np.shape(a) == got.shape)
    wrong = diff > tol * max(np.abs(expected).max(), np.abs(got).max())
    lines.append(f"  {int(wrong.sum())} of {wrong.size} entries are off")
    if pieces:
        counts = [f"{label}: {int((wrong & mask).sum())} of {int(mask.sum())} wrong"
                  for label, mask in pieces if mask.any()]
        lines.append("  by piece: " + "; ".join(counts))
    if eps_band is not None and err < eps_band:
        hint = EPS_HINT
    fail("\n".join(lines), hint)


def assert_gradient(f, x, analytic, dout, what, where, tol=GRAD_TOL, hint=None, indices=None,
                    context=None, pieces=None, eps_band=None):
    """An analytic gradient against the float64 central difference of sum(f() * dout) with
    respect to x (all entries, or the sampled `indices`), with assert_close's message."""
    if analytic is None:
        fail(f"{what} is None {where}", hint)
    analytic = np.asarray(analytic)
    if analytic.shape != x.shape:
        fail(f"{what} has shape {analytic.shape} {where}; expected {x.shape}, the shape of the "
             "input it is the gradient of", hint)
    numeric = numerical_gradient(f, x, dout, indices=indices)
    if indices is not None:
        picked = tuple(np.array(indices).T)
        assert_close(analytic[picked], numeric[picked], what, where + " (sampled entries)", tol,
                     hint)
        return
    assert_close(analytic, numeric, what + " (against the numerical gradient)", where, tol,
                 hint, context, pieces, eps_band)


def assert_same_dtype(got, x, what, where):
    if getattr(got, "dtype", None) != x.dtype:
        fail(f"{what} has dtype {getattr(got, 'dtype', type(got).__name__)} {where}; expected "
             f"{x.dtype} like the input", "ops never mix float32 and float64: allocate with "
             "np.empty_like(x) or cast with .astype(x.dtype)")


def away_from(x, kinks, margin=1e-3):
    """x with every entry within `margin` of a kink moved 2 * margin away from it, so a central
    difference never straddles a kink."""
    x = x.copy()
    for k in kinks:
        near = np.abs(x - k) < margin
        x[near] = k + np.where(x[near] >= k, 2 * margin, -2 * margin)
    return x
