"""benchmarks/bench_depthwise_taps.py: a tiny run prints a row per layer, forward and
backward both ways timed."""

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
    rows = [line.split() for line in done.stdout.splitlines()[3:]]
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_depthwise_taps
    assert len(rows) == len(bench_depthwise_taps.LAYERS)
    for row, (C, H, s) in zip(rows, bench_depthwise_taps.LAYERS):
        assert row[:3] == [str(C), f"{H}x{H}", str(s)]
        forward, backward = row[3:7], row[7:11]
        for passes, registers, ratio, spread in (forward, backward):
            assert float(passes) >= 0 and float(registers) >= 0 and float(ratio) > 0
            assert spread == f"{ratio}-{ratio}"  # one round: the range is that round's ratio
