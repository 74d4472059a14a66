"""benchmarks/bench_depthwise_taps.py: a tiny run prints a row per layer, both ways timed."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_depthwise_taps.py"


def test_a_tiny_run_prints_both_timings_and_their_ratio_for_every_layer():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--repeats", "1",
                           "--batch", "2"], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[2:]]
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_depthwise_taps
    assert len(rows) == len(bench_depthwise_taps.LAYERS)
    for row, (C, H, s) in zip(rows, bench_depthwise_taps.LAYERS):
        assert row[:3] == [str(C), f"{H}x{H}", str(s)]
        passes, registers, ratio = map(float, row[3:6])
        assert passes >= 0 and registers >= 0 and ratio > 0
