"""The exercises judge in both directions, and their stubs keep the library's signatures.

- Run in a subprocess, `pytest exercises` passes every test with the reference solutions
  (MINIMOBILE_EXERCISES=solutions) and fails every test with the stubs as shipped, each with
  its own "exNN: ..." NotImplementedError. An exercise file a learner has started on is left
  out of that second check, with a note (solving an exercise must not turn the suite red).
- Planted mistakes (the reference solutions with one plausible error edited into their source)
  are rejected by the same check functions the exercise tests call, with a message that names
  what is wrong and a hint.
- Stubs, solutions and the library agree on every signature; no exercise imports a later one
  or the library's internals (minimobile.reference, minimobile.kernels).
"""

import importlib.util
import inspect
import itertools
import os
import pkgutil
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the exercises are a folder of the repository, not installed

from exercises.checks import (ex01_depthwise_separable as checks01,  # noqa: E402
                              ex02_mobilenet_v1 as checks02, ex03_mobilenet_v2 as checks03,
                              ex04_mobilenet_v3 as checks04, ex05_multipliers as checks05,
                              ex06_train_cifar10 as checks06, ex07_deploy as checks07)

EXERCISES = ["ex01_depthwise_separable", "ex02_mobilenet_v1", "ex03_mobilenet_v2",
             "ex04_mobilenet_v3", "ex05_multipliers", "ex06_train_cifar10", "ex07_deploy"]


def _load(name, solutions):
    import importlib
    return importlib.import_module(f"exercises.{'solutions.' if solutions else ''}{name}")


# --- both directions, in subprocesses ---------------------------------------------------------


def _start_pytest(which, junit):
    # exercises/conftest.py runs the tiny arrays on one Numba thread; the kernel race check
    # asks for every thread Numba has, so NUMBA_NUM_THREADS is left alone.
    env = dict(os.environ, MINIMOBILE_EXERCISES=which)
    env.pop("MINIMOBILE_HINTS", None)
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


# How many stub markers each exercise file ships with: `raise NotImplementedError("exNN: ...`
# lines, and ex01's by-hand numbers left at None. Fewer means a learner has started on it.
STUB_MARKERS = {"ex01": 13, "ex02": 7, "ex03": 5, "ex04": 9, "ex05": 2, "ex06": 2, "ex07": 1}


def _stub_markers(name):
    text = (ROOT / "exercises" / f"{name}.py").read_text()
    number = name[:4]
    return (len(re.findall(rf'raise NotImplementedError\("{number}:', text))
            + len(re.findall(r"^(STANDARD|SEPARABLE)_(MACS|PARAMS) = None$", text, re.M)))


def test_every_exercise_test_fails_with_its_not_implemented_message_on_the_shipped_stubs(
        exercise_runs):
    started = [name for name in EXERCISES if _stub_markers(name) < STUB_MARKERS[name[:4]]]
    solved, _ = exercise_runs["solutions"]
    results, output = exercise_runs["learner"]
    assert set(results) == set(solved), "the two runs collected different tests"
    for test_id, (outcome, text) in results.items():
        number = re.search(r"test_ex(\d\d)_", test_id).group(1)
        if any(name.startswith(f"ex{number}") for name in started):
            continue
        assert outcome == "failure" and f"NotImplementedError: ex{number}: implement" in text, (
            f"{test_id} {outcome} on the stubs, with {text[:500]!r}: the exercise files must "
            "ship unsolved, and every exercise test must reach a stub")
    if started:
        pytest.skip(f"the other stubs checked; left out, since you have started on them "
                    f"(good): {', '.join(started)}; their own tests judge them: "
                    "python -m pytest exercises")


def test_the_stub_markers_match_the_shipped_files():
    """Guards STUB_MARKERS itself: a stub added or removed must update it (in a clean tree,
    where no exercise is started, every count matches)."""
    counts = {name[:4]: _stub_markers(name) for name in EXERCISES}
    over = {k: v for k, v in counts.items() if v > STUB_MARKERS[k]}
    assert not over, f"more stub markers than STUB_MARKERS says: {over}"
    if _exercises_as_committed():
        # No learner has started here (CI's clean clone): then a count below STUB_MARKERS
        # means a stub was removed without updating it, and a learner's partly solved file
        # would later pass for one that was never started.
        under = {k: v for k, v in counts.items() if v < STUB_MARKERS[k]}
        assert not under, f"fewer stub markers than STUB_MARKERS says: {under}"


def _exercises_as_committed():
    """True when git says the exercise files are as committed; False if they changed, or
    if this is not a git checkout (an unpacked copy may be a learner's, started)."""
    files = [str(Path("exercises") / f"{name}.py") for name in EXERCISES]
    try:
        status = subprocess.run(["git", "status", "--porcelain", "--", *files], cwd=ROOT,
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return status.returncode == 0 and status.stdout.strip() == ""


def test_failures_are_one_concise_message(exercise_runs):
    """The learner's loop: a check's failure is its message alone (no traceback through the
    checks, no argument arrays), and a stub is one line."""
    results, output = exercise_runs["learner"]
    assert "array(" not in output, output[:3000]
    for test_id, (outcome, text) in results.items():
        if outcome == "failure" and "NotImplementedError" in text:
            assert text.count("NotImplementedError") <= 2 and len(text) < 800, (test_id, text)


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
    """The library modules whose public names the exercises mirror. minimobile.kernels may be a
    module or a package of one module per op (each with its rungs): all of them count."""
    import importlib
    from minimobile import blocks, kernels, layers, models, ops, train
    modules = [ops, blocks, layers, models, train, kernels]
    if hasattr(kernels, "__path__"):
        modules += [importlib.import_module(f"{kernels.__name__}.{info.name}")
                    for info in pkgutil.iter_modules(kernels.__path__)]
    try:
        from minimobile import deploy
        modules.append(deploy)
    except ImportError:
        pass
    return modules


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
                    for member, sig in mine.items():
                        assert sig == library[member], (
                            f"{name}.{attr}.{member}{sig} differs from "
                            f"{module.__name__}.{attr}.{member}{library[member]}")
                    compared_with_library.add(attr)
                    break
    expected = {"relu6_forward", "relu6_backward", "hardswish_forward", "hardswish_backward",
                "hardsigmoid_forward", "hardsigmoid_backward", "depthwise_conv2d_forward",
                "depthwise_conv2d_backward", "depthwise_conv2d_forward_simple",
                "depthwise_conv2d_backward_simple", "pointwise_conv2d_forward",
                "pointwise_conv2d_backward", "batchnorm2d_forward", "batchnorm2d_backward",
                "InvertedResidual", "SqueezeExcitation", "Bneck", "DepthwiseSeparable",
                "MobileNetV1", "confusion_matrix"}
    if any(m.__name__ == "minimobile.deploy" for m in _library_counterparts()):
        expected.add("fold_batchnorm")
    assert expected <= compared_with_library, sorted(expected - compared_with_library)


def _imports(path):
    import ast
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
    return names


def test_no_exercise_depends_on_a_later_one_or_on_the_librarys_internals():
    folder = ROOT / "exercises"
    files = sorted(folder.glob("*.py")) + sorted((folder / "solutions").glob("*.py")) + sorted(
        (folder / "checks").glob("*.py")) + sorted((folder / "tests").glob("*.py"))
    for path in files:
        imports = _imports(path)
        internal = {m for m in imports if m.startswith(("minimobile.reference",
                                                         "minimobile.kernels"))}
        assert not internal, f"{path.relative_to(ROOT)} imports {sorted(internal)}"
        own = re.match(r"(ex\d\d)_", path.name) or re.match(r"test_(ex\d\d)_", path.name)
        if own is None:
            continue
        for module in imports:
            used = re.search(r"\b(ex\d\d)_", module)
            assert used is None or used.group(1) <= own.group(1), (
                f"{path.relative_to(ROOT)} imports {module}, a later exercise")


def test_hint_command_prints_each_exercises_full_recipe(capsys):
    from exercises.__main__ import main
    for name in EXERCISES:
        assert main(["hint", name[:4]]) == 0
        assert len(capsys.readouterr().out) > 200
    assert main(["hint", "ex99"]) == 2




@pytest.fixture(autouse=True)
def one_numba_thread():
    """The checks run tiny arrays; one thread spares the pool's wake-ups, as
    exercises/conftest.py does (the race check asks for more threads itself)."""
    import minimobile
    previous = minimobile.get_num_threads()
    minimobile.set_num_threads(1)
    yield
    minimobile.set_num_threads(previous)


# --- planted mistakes are caught ------------------------------------------------------------
# Each is the reference solution with one plausible mistake edited into its source (old text ->
# new text, each old text found exactly once), imported as its own module and judged by the
# same check the exercise test calls. The message must name the problem and carry a hint.


def plant(name, edits, folder):
    """The reference solution of exercise `name` with `edits` [(old, new), ...] applied."""
    source = (ROOT / "exercises" / "solutions" / f"{name}.py").read_text()
    for old, new in edits:
        assert source.count(old) == 1, f"{old!r} is not found exactly once in {name}"
        source = source.replace(old, new)
    module_name = f"planted_{name}_{next(_counter)}"
    path = folder / f"{module_name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_counter = itertools.count()


def assert_rejected(check, module, *fragments):
    with pytest.raises(AssertionError) as caught:
        check(module)
    message = str(caught.value)
    for fragment in fragments + ("hint:",):
        assert fragment in message, f"{fragment!r} is missing from the message:\n{message}"
    assert "array(" not in message and len(message) < 1500, f"not concise:\n{message}"
    return message


def _kernel_check(ex):
    checks01.check_depthwise_kernels(ex)


def _training_check(ex):
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        checks06.check_training(ex, Path(folder))


EX01, EX02, EX03 = "ex01_depthwise_separable", "ex02_mobilenet_v1", "ex03_mobilenet_v2"
EX04, EX05, EX06, EX07 = ("ex04_mobilenet_v3", "ex05_multipliers", "ex06_train_cifar10",
                          "ex07_deploy")
DW_BACKWARD_LOOP = '''    for ki in range(K):
        for kj in range(K):
            rows = slice(ki, ki + stride * Ho, stride)
            cols = slice(kj, kj + stride * Wo, stride)
            dw[:, 0, ki, kj] = np.sum(dout * xp[:, :, rows, cols], axis=(0, 2, 3))
            dxp[:, :, rows, cols] += dout * w[:, 0, ki, kj][None, :, None, None]
'''
BN_DX = '''    dx = (gamma * invstd)[:, None, None] * (g - dbeta[:, None, None] / M
                                            - xhat * dgamma[:, None, None] / M)'''

# (id, exercise, check, edits, fragments the message must hold)
PLANTED = [
    # ex01: by hand, counting, the NumPy depthwise conv, the kernels, the pointwise conv
    ("by-hand number computed by code", EX01, checks01.check_by_hand,
     [("STANDARD_MACS = 231_211_008", "STANDARD_MACS = 32 * 64 * 9 * 112 * 112")],
     ["ex01 STANDARD_MACS is computed by an expression", "integer literal"]),
    ("by-hand parameters with a bias", EX01, checks01.check_by_hand,
     [("STANDARD_PARAMS = 18_432", "STANDARD_PARAMS = 18_496")],
     ["ex01 STANDARD_PARAMS = 18,496", "counts 18,432", "one (C_in, K, K) filter"]),
    ("by-hand separable without the depthwise part", EX01, checks01.check_by_hand,
     [("SEPARABLE_MACS = 29_302_784", "SEPARABLE_MACS = 25_690_112")],
     ["ex01 SEPARABLE_MACS = 25,690,112", "29,302,784", "add them"]),
    ("standard conv without the kernel area", EX01, checks01.check_macs,
     [("return C_out * C_in * K * K * H_out * W_out", "return C_out * C_in * H_out * W_out")],
     ["ex01 standard_conv_macs returned", "C_in * K * K products"]),
    ("separable without the depthwise conv", EX01, checks01.check_macs,
     [("    return depthwise + pointwise", "    return pointwise")],
     ["ex01 depthwise_separable_macs returned", "depthwise conv costs"]),
    ("depthwise forward that ignores the stride", EX01, checks01.check_depthwise_forward,
     [("""            rows = slice(ki, ki + stride * Ho, stride)  # the Ho input rows tap ki sees
            cols = slice(kj, kj + stride * Wo, stride)""", """            rows = slice(ki, ki + Ho)
            cols = slice(kj, kj + Wo)""")],
     ["ex01 depthwise_conv2d_forward: out", "stride=2", "every failure is at stride 2",
      "i * stride"]),
    ("depthwise forward without padding", EX01, checks01.check_depthwise_forward,
     [("xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))  # (N, C, "
       "H+2p, W+2p)", "xp = np.pad(x, ((0, 0), (0, 0), (0, 2 * padding), (0, 2 * padding)))")],
     ["ex01 depthwise_conv2d_forward: out", "pad x by `padding` zeros on each side"]),
    ("depthwise backward that ignores the stride", EX01, checks01.check_depthwise_backward,
     [(DW_BACKWARD_LOOP, DW_BACKWARD_LOOP.replace("slice(ki, ki + stride * Ho, stride)",
                                                  "slice(ki, ki + Ho)")
       .replace("slice(kj, kj + stride * Wo, stride)", "slice(kj, kj + Wo)"))],
     ["ex01 depthwise_conv2d_backward: dx", "stride=2", "x of shape (2, 3, 7, 7)",
      "every stride-1 shape passes and every failure is at stride 2", "i * stride"]),
    ("depthwise backward with the kernel not flipped", EX01, checks01.check_depthwise_backward,
     [("    H, W = x.shape[2], x.shape[3]\n    return dxp[:, :, padding:padding + H, "
       "padding:padding + W], dw", "    from minimobile.ops import depthwise_conv2d_forward as f\n"
       "    return f(dout, w, 1, K - 1 - padding)[0], dw")],
     ["ex01 depthwise_conv2d_backward: dx", "flipped in both axes"]),
    ("depthwise backward that overwrites where windows overlap", EX01,
     checks01.check_depthwise_backward,
     [("dxp[:, :, rows, cols] += dout", "dxp[:, :, rows, cols] = dout")],
     ["ex01 depthwise_conv2d_backward: dx", "add, do not overwrite"]),
    ("depthwise backward with dw from the first image only", EX01,
     checks01.check_depthwise_backward,
     [("dw[:, 0, ki, kj] = np.sum(dout * xp[:, :, rows, cols], axis=(0, 2, 3))",
       "dw[:, 0, ki, kj] = np.sum(dout[0] * xp[0, :, rows, cols], axis=(1, 2))")],
     ["ex01 depthwise_conv2d_backward: dw", "over n, i and j"]),
    ("depthwise backward that keeps the padding", EX01, checks01.check_depthwise_backward,
     [("    return dxp[:, :, padding:padding + H, padding:padding + W], dw",
       "    return dxp, dw")],
     ["ex01 depthwise_conv2d_backward: dx has shape", "expected (2, 3, 6, 6)"]),
    ("forward kernel accumulating into an uninitialised output", EX01, _kernel_check,
     [("                out[n, c, i, j] = total", "                out[n, c, i, j] += total")],
     ["ex01 depthwise_conv2d_forward_simple: out", "NaN", "uninitialised"]),
    ("backward kernel that never zeroes dw", EX01, _kernel_check,
     [("        dw[c] = 0.0\n", "")],
     ["ex01 depthwise_conv2d_backward_simple: dw", "NaN", "uninitialised"]),
    ("backward kernel that is not compiled", EX01, _kernel_check,
     [("@njit(cache=True, parallel=True)\ndef depthwise_conv2d_backward_simple",
       "def depthwise_conv2d_backward_simple")],
     ["ex01 depthwise_conv2d_backward_simple is correct but not compiled", "@njit"]),
    ("pointwise forward that drops the bias", EX01, checks01.check_pointwise_forward,
     [("        out = out + b[None, :, None, None]", "        pass")],
     ["ex01 pointwise_conv2d_forward: out", "with a bias", "plus b[o]"]),
    ("pointwise backward with dw transposed", EX01, checks01.check_pointwise_backward,
     [('dw = np.einsum("nohw,nchw->oc", dout, x).reshape(w.shape)',
       'dw = np.einsum("nohw,nchw->co", dout, x).reshape(w.shape)')],
     ["ex01 pointwise_conv2d_backward: dw", "dw[o, c] = sum over n, h, w"]),
    ("pointwise backward with a bias gradient without a bias", EX01,
     checks01.check_pointwise_backward,
     [("db = dout.sum(axis=(0, 2, 3)).astype(x.dtype) if cache.has_bias else None",
       "db = dout.sum(axis=(0, 2, 3)).astype(x.dtype)")],
     ["ex01 pointwise_conv2d_backward: db is ndarray", "expected None"]),
    # ex02: batch norm forward, backward, running statistics, the block, the network
    ("batch norm backward without the mean terms", EX02, checks02.check_backward,
     [(BN_DX, "    dx = (gamma * invstd)[:, None, None] * (g - xhat * dgamma[:, None, None] "
              "/ M)")],
     ["ex02 batchnorm2d_backward: dx", "of shape (2, 3, 4, 5)", "largest difference",
      "the terms through the batch mean are missing"]),
    ("batch norm backward without the variance term", EX02, checks02.check_backward,
     [(BN_DX, "    dx = (gamma * invstd)[:, None, None] * (g - dbeta[:, None, None] / M)")],
     ["ex02 batchnorm2d_backward: dx", "the term through the batch variance"]),
    ("batch norm backward without gamma in dx", EX02, checks02.check_backward,
     [(BN_DX, BN_DX.replace("(gamma * invstd)", "invstd"))],
     ["ex02 batchnorm2d_backward: dx", "a factor is off; look at gamma"]),
    ("batch norm backward with dgamma from x, not xhat", EX02, checks02.check_backward,
     [("    dgamma = (g * xhat).sum(axis=(0, 2, 3))",
       "    dgamma = (g * xhat).sum(axis=(0, 2, 3))\n"
       "    dgamma_wrong = (g * x).sum(axis=(0, 2, 3))"),
      ("dgamma.astype(x.dtype), dbeta", "dgamma_wrong.astype(x.dtype), dbeta")],
     ["ex02 batchnorm2d_backward: dgamma", "dout * xhat summed"]),
    ("batch norm backward with dbeta a mean", EX02, checks02.check_backward,
     [("return dx.astype(x.dtype), dgamma.astype(x.dtype), dbeta.astype(x.dtype)",
       "return dx.astype(x.dtype), dgamma.astype(x.dtype), (dbeta / M).astype(x.dtype)")],
     ["ex02 batchnorm2d_backward: dbeta", "summed over (N, H, W)"]),
    ("batch norm with eps outside the square root", EX02, checks02.check_forward,
     [("invstd = 1.0 / np.sqrt(var + eps)", "invstd = 1.0 / (np.sqrt(var) + eps)")],
     ["ex02 batchnorm2d_forward: cache.invstd", "relative error", "look at eps"]),
    ("batch norm with eps hard-coded", EX02, checks02.check_forward,
     [("invstd = 1.0 / np.sqrt(var + eps)", "invstd = 1.0 / np.sqrt(var + 1e-5)")],
     ["ex02 batchnorm2d_forward: cache.invstd", "eps=0.1"]),
    ("batch norm with the unbiased variance", EX02, checks02.check_forward,
     [("var = xd.var(axis=(0, 2, 3))  # (C,) biased", "var = xd.var(axis=(0, 2, 3), ddof=1)")],
     ["ex02 batchnorm2d_forward: cache.var", "divide by N*H*W"]),
    ("running statistics with CS231n's momentum convention", EX02,
     checks02.check_running_statistics,
     [("    return ((1 - momentum) * running_mean + momentum * mean,\n"
       "            (1 - momentum) * running_var + momentum * unbiased)",
       "    return (momentum * running_mean + (1 - momentum) * mean,\n"
       "            momentum * running_var + (1 - momentum) * unbiased)")],
     ["running_mean", "CS231n's convention"]),
    ("running variance biased", EX02, checks02.check_running_statistics,
     [("(1 - momentum) * running_var + momentum * unbiased",
       "(1 - momentum) * running_var + momentum * var")],
     ["ex02 update_running_statistics: running_var", "you used the biased batch variance"]),
    ("depthwise separable block that drops bn_momentum", EX02,
     checks02.check_depthwise_separable,
     [("bn = dict(activation=activation, bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng,",
       "bn = dict(activation=activation, bn_eps=bn_eps, rng=rng,")],
     ["bn_momentum=0.3", "running_mean after one training-mode forward", "pass bn_eps and "
      "bn_momentum on"]),
    ("depthwise separable block that drops the activation", EX02,
     checks02.check_depthwise_separable,
     [("bn = dict(activation=activation, bn_eps", "bn = dict(activation=ReLU, bn_eps")],
     ["activation=Hardswish", ".forward: out"]),
    ("V1 block with a skip", EX02, checks02.check_depthwise_separable,
     [("        self.use_res_connect = False", "        self.use_res_connect = True")],
     ["ex02 DepthwiseSeparable(", "use_res_connect is True; expected False",
      "V1's block has no skip connection"]),
    ("MobileNetV1 with int() channel counts", EX02, checks02.check_mobilenet_v1,
     [("out_channels = make_divisible(c * width_mult)", "out_channels = int(c * width_mult)"),
      ("channels = make_divisible(V1_STEM_CHANNELS * width_mult)",
       "channels = int(V1_STEM_CHANNELS * width_mult)")],
     ["width_mult=0.35", "names or shapes differ", "make_divisible"]),
    ("MobileNetV1 whose stem ignores cifar", EX02, checks02.check_mobilenet_v1,
     [("channels, 3, stride=1 if cifar else 2", "channels, 3, stride=2")],
     ["cifar=True", "the stem runs at stride 1 with cifar=True"]),
    # ex03: ReLU6 and the inverted residual
    ("relu6 without the upper clip", EX03, checks03.check_relu6_forward,
     [("out = np.minimum(np.maximum(x, 0), 6).astype(x.dtype)",
       "out = np.maximum(x, 0).astype(x.dtype)")],
     ["ex03 relu6_forward: out", "x of shape (2, 3, 4, 5)", "x > 6:",
      "the upper clip at 6 is missing"]),
    ("relu6 gradient 1 above 6", EX03, checks03.check_relu6_backward,
     [("return (dout * ((x > 0) & (x < 6))).astype(x.dtype)",
       "return (dout * (x > 0)).astype(x.dtype)")],
     ["ex03 relu6_backward: dx", "0 elsewhere", "x > 6:"]),
    ("relu6 gradient 1 at the kinks", EX03, checks03.check_relu6_backward,
     [("return (dout * ((x > 0) & (x < 6))).astype(x.dtype)",
       "return (dout * ((x >= 0) & (x <= 6))).astype(x.dtype)")],
     ["ex03 relu6_backward: dx", "at and around the kinks", "0 at x = 0 and at x = 6"]),
    ("inverted residual whose skip ignores the stride", EX03, checks03.check_inverted_residual,
     [("self.use_res_connect = stride == 1 and in_channels == out_channels",
       "self.use_res_connect = in_channels == out_channels")],
     ["ex03 InvertedResidual(6, 6, stride=2, expand_ratio=6)",
      "use_res_connect is True; expected False", "x's shape"]),
    ("inverted residual that adds the skip by channels in forward", EX03,
     checks03.check_inverted_residual,
     [("return x + out if self.use_res_connect else out",
       "return x + out if self.in_channels == self.out_channels else out")],
     ["InvertedResidual(6, 6, stride=2, expand_ratio=6).forward raised ValueError",
      "x's shape"]),
    ("inverted residual backward without the skip's gradient", EX03,
     checks03.check_inverted_residual,
     [("            dx = dx + dout  # the skip", "            dx = dx  # the skip")],
     ["ex03 InvertedResidual(4, 4, stride=1, expand_ratio=6).backward: dx", "two paths"]),
    ("inverted residual backward delegated to the Sequential", EX03,
     checks03.check_inverted_residual,
     [("        dx = dout\n        for layer in reversed(list(self.conv)):  # each layer's "
       "backward fills its .grads\n            dx = layer.backward(dx)",
       "        dx = self.conv.backward(dout)")],
     ["called self.conv.backward", "write the backward out"]),
    ("inverted residual with int() hidden width", EX03, checks03.check_inverted_residual,
     [("hidden = int(round(in_channels * expand_ratio))\n", "hidden = int(in_channels * "
       "expand_ratio)\n")],
     ["expand_ratio=1.5", "names or shapes differ", "shapes differ: conv.0.0.weight"]),
    ("inverted residual that drops bn_momentum", EX03, checks03.check_inverted_residual,
     [("bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)",
       "bn = dict(bn_eps=bn_eps, rng=rng, dtype=dtype)")],
     ["bn_momentum=0.3", "after one training-mode forward"]),
    ("inverted residual with an activation after the projection", EX03,
     checks03.check_inverted_residual,
     [("            out = layer.forward(out)\n        return x + out",
       "            out = layer.forward(out)\n        out = np.clip(out, 0, 6)\n"
       "        return x + out")],
     ["ex03 InvertedResidual(4, 4, stride=1, expand_ratio=6).forward: out",
      "no activation after the last batch norm"]),
    ("inverted residual that ignores its activation", EX03, checks03.check_inverted_residual,
     [("ConvBNActivation(in_channels, hidden, 1, activation=activation, **bn)",
       "ConvBNActivation(in_channels, hidden, 1, activation=ReLU6, **bn)"),
      ("groups=hidden, activation=activation,", "groups=hidden, activation=ReLU6,")],
     ["activation=Hardswish", ".forward: out", "pass activation"]),
    # ex04: hard-swish, hard-sigmoid, squeeze-excite, bneck
    ("hard-swish gradient without the product rule", EX04, checks04.check_hardswish_backward,
     [("slope = np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0))",
       "slope = np.where(x < -3, 0.0, np.where(x <= 3, (x + 3) / 6, 1.0))")],
     ["ex04 hardswish_backward: dx", "where x = ", "x/3 + 1/2", "-3 <= x <= 3: "]),
    ("hard-swish gradient on the open interval", EX04, checks04.check_hardswish_backward,
     [("slope = np.where(x < -3, 0.0, np.where(x <= 3, x / 3 + 0.5, 1.0))",
       "slope = np.where(x <= -3, 0.0, np.where(x < 3, x / 3 + 0.5, 1.0))")],
     ["ex04 hardswish_backward: dx", "at and around the kinks", "closed [-3, 3]"]),
    ("hard-sigmoid gradient on the closed interval", EX04, checks04.check_hardsigmoid_backward,
     [("return (dout * ((x > -3) & (x < 3)) / 6).astype(x.dtype)",
       "return (dout * ((x >= -3) & (x <= 3)) / 6).astype(x.dtype)")],
     ["ex04 hardsigmoid_backward: dx", "at and around the kinks", "PyTorch"]),
    ("hard-sigmoid without the division by 6", EX04, checks04.check_hardsigmoid_forward,
     [("out = (np.clip(x + 3, 0, 6) / 6).astype(x.dtype)",
       "out = np.clip(x + 3, 0, 6).astype(x.dtype)")],
     ["ex04 hardsigmoid_forward: out", "0 below -3, 1 above 3"]),
    ("squeeze-excite backward without the gate's path", EX04,
     checks04.check_squeeze_excitation,
     [("return dx + self.avgpool.backward(ds)", "return dx")],
     ["ex04 SqueezeExcitation(8, 8).backward: dx", "two paths"]),
    ("squeeze-excite backward that skips the pooling's backward", EX04,
     checks04.check_squeeze_excitation,
     [("return dx + self.avgpool.backward(ds)", "return dx + ds")],
     ["ex04 SqueezeExcitation(8, 8).backward: dx", "two paths"]),
    ("bneck without make_divisible on the squeeze width", EX04, checks04.check_bneck,
     [("make_divisible(expanded_channels // 4, 8)", "expanded_channels // 4")],
     ["ex04 Bneck(8, 5, 16, 8, True, 'HS', 1)", "shapes differ: block.2.fc1.weight",
      "make_divisible(expanded // 4, 8)"]),
    ("bneck whose skip ignores the stride", EX04, checks04.check_bneck,
     [("self.use_res_connect = stride == 1 and in_channels == out_channels",
       "self.use_res_connect = in_channels == out_channels")],
     ["ex04 Bneck(6, 3, 12, 6, False, 'HS', 2)", "use_res_connect is True; expected False"]),
    ("bneck backward delegated to the Sequential", EX04, checks04.check_bneck,
     [("        dx = dout\n        for layer in reversed(list(self.block)):\n"
       "            dx = layer.backward(dx)", "        dx = self.block.backward(dout)")],
     ["called self.block.backward", "write the backward out"]),
    ("bneck backward without the skip's gradient", EX04, checks04.check_bneck,
     [("            dx = dx + dout", "            dx = dx")],
     ["ex04 Bneck(8, 5, 16, 8, True, 'HS', 1).backward: dx", "two paths"]),
    ("bneck that drops bn_momentum", EX04, checks04.check_bneck,
     [("bn = dict(bn_eps=bn_eps, bn_momentum=bn_momentum, rng=rng, dtype=dtype)",
       "bn = dict(bn_eps=bn_eps, rng=rng, dtype=dtype)")],
     ["ex04 Bneck(8, 5, 16, 8, True, 'HS', 1): block.0.1.running_mean after one "
      "training-mode forward", "pass bn_eps and bn_momentum on"]),
    # ex05: predicting multiply-adds, measuring latency
    ("V1 multiply-adds with int() channel counts", EX05, checks05.check_v1_prediction,
     [("out_channels = make_divisible(c * width_mult)", "out_channels = int(c * width_mult)"),
      ("channels = make_divisible(V1_STEM_CHANNELS * width_mult)",
       "channels = int(V1_STEM_CHANNELS * width_mult)")],
     ["ex05 v1_multiply_adds(width_mult=0.35", "minimobile summary v1 --width 0.35"]),
    ("V1 pointwise counted at the input size", EX05, checks05.check_v1_prediction,
     [("""        size = (size - 1) // stride + 1
        macs += channels * 9 * size * size  # depthwise
        macs += channels * out_channels * size * size  # pointwise""",
       """        macs += channels * out_channels * size * size  # pointwise
        size = (size - 1) // stride + 1
        macs += channels * 9 * size * size  # depthwise""")],
     ["ex05 v1_multiply_adds(width_mult=1.0, resolution=64)", "off by"]),
    ("latency measured in training mode", EX05, checks05.check_measurements,
     [("cifar=resolution <= 64, seed=seed).eval()", "cifar=resolution <= 64, seed=seed)")],
     ["ex05 measure_inference_time: width 0.25 ran its forward in training mode", "eval"]),
    ("latency measured with gradients on", EX05, checks05.check_measurements,
     [("        with no_grad():\n", "        if True:\n")],
     ["gradients enabled", "no_grad"]),
    ("latency measured without a warm-up", EX05, checks05.check_measurements,
     [("            for _ in range(2):  # warm-up", "            for _ in range(0):  # warm-up")],
     ["no warm-up", "before timing"]),
    ("latency in milliseconds", EX05, checks05.check_measurements,
     [("float(np.median(times))))", "float(np.median(times)) * 1000))")],
     ["the check times the same model", "report seconds"]),
    ("latency of a batch of 16", EX05, checks05.check_measurements,
     [("x = rng.standard_normal((1, 3, resolution, resolution))",
       "x = rng.standard_normal((16, 3, resolution, resolution))")],
     ["timed a batch of 16", "a batch of 1"]),
    ("latency at the default resolution", EX05, checks05.check_measurements,
     [("x = rng.standard_normal((1, 3, resolution, resolution))",
       "x = rng.standard_normal((1, 3, 32, 32))")],
     ["never ran a forward at 40 x 40", "(1, 3, resolution, resolution)"]),
    # ex06: the training loop and the confusion matrix
    ("training without shuffling", EX06, _training_check,
     [("batches = Batches(x, y, batch_size, augment=augment, drop_last=True,",
       "batches = Batches(x, y, batch_size, augment=augment, drop_last=True, shuffle=False,")],
     ["the loss of step 0 differs", "not shuffled"]),
    ("training with the optimiser made every step", EX06, _training_check,
     [("            model.backward(dlogits)  # every layer's .grads, which the optimiser reads",
       "            model.backward(dlogits)\n            optimizer = SGD(model.named_parameters()"
       ", lr, momentum=0.9, nesterov=True, weight_decay=5e-4)")],
     ["the loss of step 2 differs", "made anew every step"]),
    ("training that steps before backward", EX06, _training_check,
     [("            model.backward(dlogits)  # every layer's .grads, which the optimiser reads\n"
       "            optimizer.step()",
       "            optimizer.step()\n            model.backward(dlogits)")],
     ["the loss of step 1 differs", "before model.backward(dlogits)"]),
    ("training without weight decay", EX06, _training_check,
     [("nesterov=True,\n                    weight_decay=5e-4)", "nesterov=True)")],
     ["differs from the reference loop", "weight decay is missing"]),
    ("training with the default learning rate", EX06, _training_check,
     [("optimizer = SGD(model.named_parameters(), lr,",
       "optimizer = SGD(model.named_parameters(), 0.05,")],
     ["the loss of step 1 differs", "the learning rate is the default"]),
    ("training that prints only at the end", EX06, _training_check,
     [("            if print_every and len(losses) % print_every == 0:",
       "            if print_every and len(losses) == steps:")],
     ["printed 1 lines", "not all at the end"]),
    ("training before exercise 03 is done", EX06, _training_check,
     [("from exercises.solutions.ex03_mobilenet_v2 import InvertedResidual",
       "class InvertedResidual:\n    def __init__(self, *args, **kwargs):\n"
       "        raise NotImplementedError('ex03: implement InvertedResidual.__init__')")],
     ["ex06 train_mobilenet_v2 needs your InvertedResidual from exercise 03",
      "do exercise 03 first"]),
    ("confusion matrix sized by the labels seen", EX06, checks06.check_confusion_matrix,
     [("minlength=num_classes ** 2).reshape(num_classes, num_classes)",
       ").reshape(int(np.sqrt(index.max() + 1)), -1)")],
     ["ex06 confusion_matrix", "never occur"]),
    ("confusion matrix transposed", EX06, checks06.check_confusion_matrix,
     [("index = np.asarray(y_true, np.int64) * num_classes + np.asarray(y_pred, np.int64)",
       "index = np.asarray(y_pred, np.int64) * num_classes + np.asarray(y_true, np.int64)")],
     ["ex06 confusion_matrix(y_true=[0, 0, 1, 2, 2, 2]", "rows are the true classes"]),
    # ex07: folding batch norm
    ("folding that drops the conv's bias", EX07, checks07.check_fold,
     [("b_folded = (b - running_mean) * scale + beta", "b_folded = beta - running_mean * scale")],
     ["ex07 fold_batchnorm", "depthwise conv", "the weights are right and the bias is off"]),
    ("folding without eps", EX07, checks07.check_fold,
     [("np.sqrt(np.asarray(running_var, np.float64) + eps)",
       "np.sqrt(np.asarray(running_var, np.float64))")],
     ["ex07 fold_batchnorm", "eps=0.001", "look at eps"]),
    ("folding that scales along the last axis", EX07, checks07.check_fold,
     [("w_folded = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))",
       "w_folded = w * scale[:w.shape[-1]] if w.shape[-1] == len(scale) else w * scale[0]")],
     ["ex07 fold_batchnorm", "along w's first axis"]),
    ("folding that changes w in place", EX07, checks07.check_fold,
     [("w_folded = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))",
       "w *= scale.reshape((-1,) + (1,) * (w.ndim - 1)).astype(w.dtype)\n    w_folded = w")],
     ["ex07 fold_batchnorm changed one of its arguments"]),
]


@pytest.fixture(scope="module")
def planted_folder(tmp_path_factory):
    return tmp_path_factory.mktemp("planted")


@pytest.mark.parametrize("label, name, check, edits, fragments", PLANTED,
                         ids=[p[0].replace(" ", "_") for p in PLANTED])
def test_planted_mistake_is_rejected_with_a_message_that_names_it(label, name, check, edits,
                                                                  fragments, planted_folder):
    assert_rejected(check, plant(name, edits, planted_folder), *fragments)


def test_a_racy_kernel_is_caught_every_time():
    """prange over images in the backward: threads add into the same dw[c]. With fewer than two
    Numba threads nothing runs in parallel and the check (rightly) has nothing to catch."""
    from numba import config
    if config.NUMBA_NUM_THREADS < 2:
        pytest.skip("one Numba thread: no race can happen")
    from numba import njit, prange

    @njit(parallel=True)
    def racy_backward(dx, dw, dout, x, w, stride, pad):
        N, C, H, W = x.shape
        K = w.shape[2]
        Ho, Wo = dout.shape[2], dout.shape[3]
        dx[:] = 0.0
        dw[:] = 0.0
        for n in prange(N):
            for c in range(C):
                for i in range(Ho):
                    for j in range(Wo):
                        g = dout[n, c, i, j]
                        for ki in range(K):
                            r = i * stride + ki - pad
                            if r < 0 or r >= H:
                                continue
                            for kj in range(K):
                                s = j * stride + kj - pad
                                if 0 <= s < W:
                                    dx[n, c, r, s] += g * w[c, 0, ki, kj]
                                    dw[c, 0, ki, kj] += g * x[n, c, r, s]
    solution = _load(EX01, True)

    class Racy:
        depthwise_conv2d_forward_simple = solution.depthwise_conv2d_forward_simple
        depthwise_conv2d_backward_simple = racy_backward
    for _ in range(5):
        with pytest.raises(AssertionError) as caught:
            checks01._check_threads_agree(Racy)
        assert "differs from the one-thread run" in str(caught.value)
        assert "a race" in str(caught.value)


def test_values_are_printed_with_enough_digits_to_differ():
    from exercises.checks.common import fmt_pair
    assert fmt_pair(1.0000001, 1.0000002) == ("1.0000001", "1.0000002")
    assert fmt_pair(0.5, 0.25) == ("0.5", "0.25")


def test_full_hints_only_on_request(monkeypatch):
    from exercises.checks.common import Hint, format_hint
    hint = Hint("first", "the recipe")
    monkeypatch.delenv("MINIMOBILE_HINTS", raising=False)
    assert "first" in format_hint(hint) and "the recipe" not in format_hint(hint)
    assert "MINIMOBILE_HINTS=full" in format_hint(hint)
    monkeypatch.setenv("MINIMOBILE_HINTS", "full")
    assert "recipe: the recipe" in format_hint(hint)


def test_a_failure_points_to_its_own_exercises_recipe(monkeypatch):
    from exercises.checks.common import Hint, fail
    monkeypatch.delenv("MINIMOBILE_HINTS", raising=False)
    with pytest.raises(AssertionError) as caught:
        fail("ex03 relu6_forward: out differs", Hint("first", "the recipe"))
    assert "python -m exercises hint ex03)" in str(caught.value)
    with pytest.raises(AssertionError) as caught:
        fail("a message without an exercise", Hint("first", "the recipe"))
    assert "python -m exercises hint exNN)" in str(caught.value)


def test_a_forward_that_returns_only_out_is_caught(planted_folder):
    assert_rejected(checks03.check_relu6_forward, plant(EX03, [(
        "    return out, ActivationCache(x)\n\n\ndef relu6_backward",
        "    return out\n\n\ndef relu6_backward")], planted_folder),
        "ex03 relu6_forward returned ndarray; expected the tuple (out, cache)")


def test_there_are_at_least_40_planted_mistakes_in_every_exercise_mostly_backward():
    per_exercise = {name: sum(p[1] == name for p in PLANTED) for name in EXERCISES}
    assert len(PLANTED) >= 40 and all(per_exercise.values()), per_exercise
    backward = [p for p in PLANTED if "backward" in p[0] or "gradient" in p[0]]
    assert len(backward) >= 15, len(backward)
