"""The exercises judge in both directions, and their stubs keep the library's signatures.

- Run in a subprocess, `pytest exercises` passes every test with the reference solutions
  (MINIMOBILE_EXERCISES=solutions) and fails every test with the stubs as shipped, each with
  its own "exNN: ..." NotImplementedError.
- Typical wrong solutions (mutants of the reference solutions) are rejected by the same check
  functions the exercise tests call, with a message that names what is wrong and hints why.
- Stubs, solutions and the library agree on every signature.
"""

import inspect
import os
import re
import subprocess
import sys
import types
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the exercises are a folder of the repository, not installed

from exercises.checks import (ex01_depthwise_separable as checks01,  # noqa: E402
                              ex02_mobilenet_v1 as checks02, ex03_mobilenet_v2 as checks03,
                              ex04_mobilenet_v3 as checks04, ex07_deploy as checks07)

EXERCISES = ["ex01_depthwise_separable", "ex02_mobilenet_v1", "ex03_mobilenet_v2",
             "ex04_mobilenet_v3", "ex05_multipliers", "ex06_train_cifar10", "ex07_deploy"]


def _load(name, solutions):
    import importlib
    return importlib.import_module(f"exercises.{'solutions.' if solutions else ''}{name}")


# --- both directions, in subprocesses ---------------------------------------------------------


def _start_pytest(which, junit):
    # One Numba thread: the exercise tests use tiny arrays, where waking a thread pool costs
    # more than it saves, and much more when other work keeps the cores busy.
    env = dict(os.environ, MINIMOBILE_EXERCISES=which, NUMBA_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytest", "exercises", "-q", "-p", "no:cacheprovider",
               f"--junitxml={junit}"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _results(junit):
    """{test id: (outcome, failure text)} from a junit XML report."""
    results = {}
    for case in ET.parse(junit).getroot().iter("testcase"):
        test_id = f"{case.get('classname')}::{case.get('name')}"
        problem = next((child for child in case if child.tag in ("failure", "error",
                                                                 "skipped")), None)
        outcome = "passed" if problem is None else problem.tag
        text = "" if problem is None else (problem.get("message") or "") + (problem.text or "")
        results[test_id] = (outcome, text)
    return results


@pytest.fixture(scope="module")
def exercise_runs(tmp_path_factory):
    """`pytest exercises` against the solutions and against the stubs, run side by side."""
    folder = tmp_path_factory.mktemp("exercise_runs")
    runs = {which: (_start_pytest(which, folder / f"{which}.xml"), folder / f"{which}.xml")
            for which in ("solutions", "learner")}
    results = {}
    for which, (process, junit) in runs.items():
        output, _ = process.communicate(timeout=600)
        assert junit.exists(), f"pytest exercises ({which}) wrote no report:\n{output[-3000:]}"
        results[which] = (_results(junit), output)
    return results


def test_every_exercise_test_passes_with_the_reference_solutions(exercise_runs):
    results, output = exercise_runs["solutions"]
    files = {test_id.split("::")[0].rsplit(".", 1)[-1] for test_id in results}
    assert files == {f"test_{name}" for name in EXERCISES}, sorted(files)
    not_passed = {t: outcome for t, (outcome, _) in results.items() if outcome != "passed"}
    assert not not_passed, f"{not_passed}\n{output[-5000:]}"


def test_every_exercise_test_fails_with_its_not_implemented_message_on_the_shipped_stubs(
        exercise_runs):
    solved, _ = exercise_runs["solutions"]
    results, output = exercise_runs["learner"]
    assert set(results) == set(solved), "the two runs collected different tests"
    for test_id, (outcome, text) in results.items():
        number = re.search(r"test_ex(\d\d)_", test_id).group(1)
        assert outcome == "failure" and f"NotImplementedError: ex{number}: implement" in text, (
            f"{test_id} {outcome} on the stubs, with {text[:500]!r}: the exercise files must "
            "ship unsolved, and every exercise test must reach a stub (if you solved the "
            "exercises in your own copy, this test failing is expected)")


# --- signatures ----------------------------------------------------------------------------


def _public(module):
    """Functions and classes a module defines itself (not imports), by name."""
    return {name: obj for name, obj in vars(module).items() if not name.startswith("_")
            and (inspect.isfunction(obj) or inspect.isclass(obj) or hasattr(obj, "py_func"))
            and getattr(obj, "__module__", None) == module.__name__}


def _signatures(obj):
    """{member: signature} of a function (a Numba kernel through its py_func), a class's own
    __init__, forward and backward, or a NamedTuple's fields."""
    if hasattr(obj, "_fields"):
        return {"fields": obj._fields}
    if inspect.isclass(obj):
        return {m: inspect.signature(vars(obj)[m]) for m in ("__init__", "forward", "backward")
                if m in vars(obj)}
    return {"call": inspect.signature(getattr(obj, "py_func", obj))}


def _library_counterparts():
    import minimobile
    from minimobile import blocks, kernels, layers, models, ops, train
    modules = [ops, kernels, blocks, layers, models, train]
    try:
        from minimobile import deploy
        modules.append(deploy)
    except ImportError:
        pass
    assert minimobile  # the modules above are its parts
    return modules


# The library's kernels also take a tuning argument: the forward `ntasks`, to give each thread
# a balanced chunk of planes, the backward `block`, how many channels a task takes; the
# exercise's kernels take one plane (forward) or one channel (backward) per prange step.
SIGNATURE_EXCEPTIONS = {"depthwise_conv2d_forward_kernel": {"ntasks"},
                        "depthwise_conv2d_backward_kernel": {"block"}}


def test_stubs_solutions_and_library_share_signatures():
    compared_with_library = set()
    for name in EXERCISES:
        stub, solution = _load(name, False), _load(name, True)
        stub_objects, solution_objects = _public(stub), _public(solution)
        assert set(stub_objects) == set(solution_objects), name
        for attr, obj in stub_objects.items():
            assert _signatures(obj) == _signatures(solution_objects[attr]), f"{name}.{attr}"
            if hasattr(obj, "_fields"):
                continue  # caches: the exercises keep their own (see each file)
            for module in _library_counterparts():
                if hasattr(module, attr):
                    library = _signatures(getattr(module, attr))
                    mine = _signatures(obj)
                    if attr in SIGNATURE_EXCEPTIONS:
                        sig = library["call"]
                        library["call"] = sig.replace(parameters=[
                            p for p in sig.parameters.values()
                            if p.name not in SIGNATURE_EXCEPTIONS[attr]])
                    for member, sig in mine.items():
                        assert sig == library[member], (
                            f"{name}.{attr}.{member}{sig} differs from "
                            f"{module.__name__}.{attr}.{member}{library[member]}")
                    compared_with_library.add(attr)
                    break
    expected = {"relu6_forward", "relu6_backward", "hardswish_forward", "hardswish_backward",
                "hardsigmoid_forward", "hardsigmoid_backward", "depthwise_conv2d_forward",
                "depthwise_conv2d_backward", "depthwise_conv2d_forward_kernel",
                "depthwise_conv2d_backward_kernel", "pointwise_conv2d_forward",
                "pointwise_conv2d_backward", "batchnorm2d_forward", "batchnorm2d_backward",
                "InvertedResidual", "SqueezeExcitation", "Bneck", "DepthwiseSeparable",
                "MobileNetV1", "confusion_matrix"}
    if any(m.__name__ == "minimobile.deploy" for m in _library_counterparts()):
        expected.add("fold_batchnorm")
    assert expected <= compared_with_library, sorted(expected - compared_with_library)


# --- typical wrong solutions are caught -----------------------------------------------------


@pytest.fixture(autouse=True)
def one_numba_thread():
    """The checks run tiny arrays; one thread spares the pool's wake-ups (see _start_pytest)."""
    import minimobile
    previous = minimobile.get_num_threads()
    minimobile.set_num_threads(1)
    yield
    minimobile.set_num_threads(previous)


def mutant(name, **replacements):
    """The reference solution of exercise `name` with some of its names replaced."""
    module = types.ModuleType(f"mutant_of_{name}")
    module.__dict__.update(vars(_load(name, True)))
    module.__dict__.update(replacements)
    return module


def assert_rejected(check, module, *fragments):
    with pytest.raises(AssertionError) as caught:
        check(module)
    message = str(caught.value)
    for fragment in fragments + ("hint:",):
        assert fragment in message, f"{fragment!r} is missing from the message:\n{message}"
    return message


def test_batchnorm_backward_without_the_mean_terms_is_caught():
    def backward(dout, cache):
        x, gamma, mean, invstd = cache.x, cache.gamma, cache.mean, cache.invstd
        xhat = (x - mean[:, None, None]) * invstd[:, None, None]
        dgamma = (dout * xhat).sum(axis=(0, 2, 3))
        M = x.shape[0] * x.shape[2] * x.shape[3]
        dx = (gamma * invstd)[:, None, None] * (dout - xhat * dgamma[:, None, None] / M)
        return dx, dgamma, dout.sum(axis=(0, 2, 3))
    assert_rejected(checks02.check_backward, mutant("ex02_mobilenet_v1",
                                                    batchnorm2d_backward=backward),
                    "ex02 batchnorm2d_backward: dx", "of shape (2, 3, 4, 5)", "largest difference",
                    "the terms through the batch mean are missing")


def test_batchnorm_backward_without_the_variance_term_is_caught():
    def backward(dout, cache):
        x, gamma, invstd = cache.x, cache.gamma, cache.invstd
        xhat = (x - cache.mean[:, None, None]) * invstd[:, None, None]
        dx = (gamma * invstd)[:, None, None] * (dout - dout.mean(axis=(0, 2, 3), keepdims=True))
        return dx, (dout * xhat).sum(axis=(0, 2, 3)), dout.sum(axis=(0, 2, 3))
    assert_rejected(checks02.check_backward, mutant("ex02_mobilenet_v1",
                                                    batchnorm2d_backward=backward),
                    "ex02 batchnorm2d_backward: dx", "the term through the batch variance")


def test_running_statistics_with_cs231n_momentum_convention_are_caught():
    def update(running_mean, running_var, mean, var, count, momentum=0.1):
        return (momentum * running_mean + (1 - momentum) * mean,
                momentum * running_var + (1 - momentum) * var * count / (count - 1))
    assert_rejected(checks02.check_running_statistics,
                    mutant("ex02_mobilenet_v1", update_running_statistics=update),
                    "running_mean", "CS231n's convention")


def test_depthwise_backward_that_ignores_the_stride_is_caught():
    solution = _load("ex01_depthwise_separable", True)

    def backward(dout, cache):
        x, w, p = cache.x, cache.w, cache.padding
        K, (Ho, Wo) = w.shape[2], dout.shape[2:]
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
        dxp, dw = np.zeros_like(xp), np.zeros_like(w)
        for ki in range(K):
            for kj in range(K):
                window = (slice(None), slice(None), slice(ki, ki + Ho), slice(kj, kj + Wo))
                dw[:, 0, ki, kj] = (dout * xp[window]).sum(axis=(0, 2, 3))
                dxp[window] += dout * w[:, 0, ki, kj][None, :, None, None]
        return dxp[:, :, p:p + x.shape[2], p:p + x.shape[3]], dw
    assert solution.depthwise_conv2d_backward is not backward
    assert_rejected(checks01.check_depthwise_backward,
                    mutant("ex01_depthwise_separable", depthwise_conv2d_backward=backward),
                    "ex01 depthwise_conv2d_backward: dx", "stride=2", "x of shape (2, 3, 7, 7)",
                    "every stride-1 shape passes and every failure is at stride 2",
                    "i * stride")


def test_depthwise_kernel_that_accumulates_into_uninitialised_outputs_is_caught():
    solution = _load("ex01_depthwise_separable", True)

    def forward_kernel(out, x, w, stride, pad):  # plain Python: a mutant need not compile
        N, C, H, W = x.shape
        K = w.shape[2]
        for n in range(N):
            for c in range(C):
                for i in range(out.shape[2]):
                    for j in range(out.shape[3]):
                        for ki in range(K):
                            for kj in range(K):
                                r, s = i * stride + ki - pad, j * stride + kj - pad
                                if 0 <= r < H and 0 <= s < W:
                                    out[n, c, i, j] += w[c, 0, ki, kj] * x[n, c, r, s]
    assert_rejected(checks01.check_depthwise_kernels,
                    mutant("ex01_depthwise_separable", depthwise_conv2d_forward_kernel=
                           forward_kernel,
                           depthwise_conv2d_backward_kernel=solution
                           .depthwise_conv2d_backward_kernel),
                    "ex01 depthwise_conv2d_forward_kernel: out", "NaN", "uninitialised")


def test_relu6_without_the_upper_clip_is_caught():
    from minimobile.ops import ActivationCache
    assert_rejected(checks03.check_relu6_forward,
                    mutant("ex03_mobilenet_v2",
                           relu6_forward=lambda x: (np.maximum(x, 0), ActivationCache(x))),
                    "ex03 relu6_forward: out", "x of shape (2, 3, 4, 5)", "x > 6:",
                    "the upper clip at 6 is missing")
    message = assert_rejected(checks03.check_relu6_backward,
                              mutant("ex03_mobilenet_v2",
                                     relu6_backward=lambda dout, cache: dout * (cache.x > 0)),
                              "ex03 relu6_backward: dx", "0 elsewhere")
    assert re.search(r"x > 6: (\d+) of \1 wrong", message), message


def test_hardswish_gradient_wrong_on_the_middle_piece_is_caught():
    def backward(dout, cache):  # forgets the product rule: (x + 3) / 6 instead of x/3 + 1/2
        x = cache.x
        return dout * np.where(x < -3, 0.0, np.where(x <= 3, (x + 3) / 6, 1.0))
    message = assert_rejected(checks04.check_hardswish_backward,
                              mutant("ex04_mobilenet_v3", hardswish_backward=backward),
                              "ex04 hardswish_backward: dx", "where x = ", "x/3 + 1/2")
    assert re.search(r"x < -3: 0 of \d+ wrong; -3 <= x <= 3: (\d+) of \1 wrong; x > 3: 0 of",
                     message), message


def test_hardsigmoid_gradient_on_the_closed_interval_is_caught_at_the_kinks():
    def backward(dout, cache):
        return dout * ((cache.x >= -3) & (cache.x <= 3)) / 6
    assert_rejected(checks04.check_hardsigmoid_backward,
                    mutant("ex04_mobilenet_v3", hardsigmoid_backward=backward),
                    "ex04 hardsigmoid_backward: dx", "at and around the kinks", "PyTorch")


def _inverted_residual_mutant(**methods):
    solution = _load("ex03_mobilenet_v2", True)
    return mutant("ex03_mobilenet_v2", InvertedResidual=type(
        "InvertedResidual", (solution.InvertedResidual,), methods))


def test_residual_added_where_shapes_differ_is_caught():
    solution = _load("ex03_mobilenet_v2", True)

    def init_ignoring_stride(self, in_channels, out_channels, stride, expand_ratio, **kwargs):
        solution.InvertedResidual.__init__(self, in_channels, out_channels, stride,
                                           expand_ratio, **kwargs)
        self.use_res_connect = in_channels == out_channels
    assert_rejected(checks03.check_inverted_residual,
                    _inverted_residual_mutant(__init__=init_ignoring_stride),
                    "ex03 InvertedResidual(6, 6, stride=2, expand_ratio=6)",
                    "use_res_connect is True; expected False", "stride == 1")

    def forward_adding_by_channels(self, x):
        out = self.conv.forward(x)
        return x + out if self.in_channels == self.out_channels else out
    assert_rejected(checks03.check_inverted_residual,
                    _inverted_residual_mutant(forward=forward_adding_by_channels),
                    "InvertedResidual(6, 6, stride=2, expand_ratio=6).forward raised ValueError",
                    "stride == 1 and in_channels == out_channels")


def test_inverted_residual_backward_without_the_skip_gradient_is_caught():
    assert_rejected(checks03.check_inverted_residual,
                    _inverted_residual_mutant(backward=lambda self, dout:
                                              self.conv.backward(dout)),
                    "ex03 InvertedResidual(4, 4, stride=1, expand_ratio=6).backward: dx",
                    "two paths")


def test_squeeze_excitation_backward_without_the_gate_path_is_caught():
    solution = _load("ex04_mobilenet_v3", True)

    def backward(self, dout):
        x, s = self._take()
        ds = (dout * x).sum(axis=(2, 3), keepdims=True)
        self.fc1.backward(self.activation.backward(self.fc2.backward(
            self.scale_activation.backward(ds))))
        return dout * s
    se = type("SqueezeExcitation", (solution.SqueezeExcitation,), {"backward": backward})
    assert_rejected(checks04.check_squeeze_excitation,
                    mutant("ex04_mobilenet_v3", SqueezeExcitation=se),
                    "ex04 SqueezeExcitation(8, 8).backward: dx", "through the gate")


def test_fold_batchnorm_that_drops_the_conv_bias_is_caught():
    def fold(w, b, gamma, beta, running_mean, running_var, eps=1e-5):
        scale = gamma / np.sqrt(running_var + eps)
        return w * scale.reshape((-1,) + (1,) * (w.ndim - 1)), beta - running_mean * scale
    assert_rejected(checks07.check_fold, mutant("ex07_deploy", fold_batchnorm=fold),
                    "ex07 fold_batchnorm", "depthwise conv", "the weights are right and the bias "
                    "is off")


def test_a_forward_that_returns_only_out_is_caught():
    assert_rejected(checks03.check_relu6_forward,
                    mutant("ex03_mobilenet_v2", relu6_forward=lambda x: np.clip(x, 0, 6)),
                    "ex03 relu6_forward returned ndarray; expected the tuple (out, cache)")
