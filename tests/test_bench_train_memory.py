"""benchmarks/bench_train_memory.py: each cell in a process of its own, activations counted."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_train_memory.py"

pytestmark = pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                reason="the benchmark reads Linux's /proc/self")


def start(*args):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=600)


def run(*args):
    done = start(*args)
    assert done.returncode == 0, done.stderr
    return done.stdout


def step_mb(batch_size, resolution=32):
    """One minimobile cell, as the table's parent process runs it."""
    figures = json.loads(run("--child", "mm", "--models", "v1:0.25", "--batch-size",
                             str(batch_size), "--steps", "1", "--threads", "1",
                             "--resolution", str(resolution)).splitlines()[-1])
    return figures["peak_mb"] - figures["base_mb"]


@pytest.mark.slow
def test_the_step_memory_grows_with_the_batch_it_keeps_for_backward():
    # V1 0.25's CIFAR variant keeps about 0.6 MB of float32 activations per image for
    # backward, so 96 more images must show as tens of MB; the kernels' compilation, done in
    # the batch-2 warm-up before the base is read, must not.
    small, large = step_mb(8), step_mb(104)
    assert 0 <= small < large
    assert large - small > 20, (small, large)


@pytest.mark.slow
def test_the_step_memory_grows_with_the_resolution():
    # Every map has (R/32)^2 times as many pixels at R x R, so at 64x64 the activations kept
    # for backward are four times those at 32x32: about 60 MB more for 32 images of V1 0.25.
    assert step_mb(32, resolution=64) - step_mb(32) > 30


def test_a_resolution_out_of_range_is_refused_before_any_process_starts():
    done = start("--resolution", "4")
    assert done.returncode != 0
    assert "--resolution: expected 8-1024, got 4" in done.stderr


@pytest.mark.slow
def test_the_table_has_a_row_per_network_with_minimobile_and_any_torch_figures():
    out = run("--models", "v1:0.25", "--batch-size", "8", "--steps", "1", "--threads", "1",
              "--resolution", "40")
    assert "batch 8, 40x40 CIFAR variants" in out.splitlines()[0]
    cpu, header, rule, row = out.splitlines()[1:5]
    assert cpu.startswith("CPU: ") and "bfloat16 in hardware: " in cpu
    assert header.split()[:3] == ["network", "mm", "MB"] and set(rule) == {"-"}
    cells = row.split()
    assert cells[:2] == ["v1", "0.25"] and float(cells[2]) >= 0
    try:
        import torch  # noqa: F401
    except ImportError:
        assert "torch not installed" in out and cells[3:] == ["-"] * 5
    else:
        assert cells[6] in ("pt", "ptCL", "ptBF") and float(cells[7]) > 0
