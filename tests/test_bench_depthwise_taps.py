"""benchmarks/bench_depthwise_taps.py: a tiny run prints a row per layer, forward and
backward both ways timed on phase planes and channels last."""

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
    planes, channels_last = done.stdout.split("\n\n")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_depthwise_taps
    for text, layers, ways in ((planes, bench_depthwise_taps.LAYERS, 2),
                               (channels_last, bench_depthwise_taps.CHANNELS_LAST_LAYERS, 2)):
        rows = [line.split() for line in text.splitlines()[3:] if line]
        assert len(rows) == len(layers)
        for row, (C, H, s) in zip(rows, layers):
            assert row[:3] == [str(C), f"{H}x{H}", str(s)]
            assert len(row) == 3 + 4 * ways
            for way in range(ways):
                passes, registers, ratio, spread = row[3 + 4 * way:7 + 4 * way]
                assert float(passes) >= 0 and float(registers) >= 0 and float(ratio) > 0
                assert spread == f"{ratio}-{ratio}"  # one round: the range is that ratio
