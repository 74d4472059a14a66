"""benchmarks/bench_fused_sums.py: a tiny run prints a row per layer and per network, each
with both timings and their ratio, in its six tables."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_fused_sums.py"


def test_a_tiny_run_prints_both_ways_for_every_layer_and_network():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "1", "--repeats", "1",
                           "--batch", "2", "--models", "v1:0.25,v3-small:0.25"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    (pairs, pointwise_pairs, gradient_pairs, statistics_pairs, steps,
     statistics_steps) = done.stdout.split("\n\n")
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_fused_sums
    pair_rows = [line.split() for line in pairs.splitlines()[2:]]
    assert [row[:5] for row in pair_rows] == [
        [str(C), f"{H}x{H}", str(K), str(s), act] for C, H, K, s, act in bench_fused_sums.LAYERS]
    pointwise_rows = [line.split() for line in pointwise_pairs.splitlines()[2:]]
    assert [row[:4] for row in pointwise_rows] == [
        [str(C), f"{H}x{H}", str(C_out), act]
        for C, C_out, H, act in bench_fused_sums.POINTWISE_LAYERS]
    gradient_rows = [line.split() for line in gradient_pairs.splitlines()[2:]]
    assert [row[:6] for row in gradient_rows] == [
        [conv, str(C), str(C_out), f"{H}x{H}", str(s), str(act)]
        for conv, C, C_out, H, s, act in bench_fused_sums.GRADIENT_LAYERS]
    statistics_rows = [line.split() for line in statistics_pairs.splitlines()[2:]]
    assert [row[:7] for row in statistics_rows] == (
        [["depthwise", str(C), str(C), f"{H}x{H}", str(K), str(s), act]
         for C, H, K, s, act in bench_fused_sums.LAYERS]
        + [["pointwise", str(C), str(C_out), f"{H}x{H}", "1", "1", act]
           for C, C_out, H, act in bench_fused_sums.POINTWISE_LAYERS])
    step_rows = [line.split() for line in steps.splitlines()[2:]]
    statistics_step_rows = [line.split() for line in statistics_steps.splitlines()[2:]]
    for rows in (step_rows, statistics_step_rows):
        assert [row[:2] for row in rows] == [["v1", "0.25"], ["v3-small", "0.25"]]
    for row in ([r[5:] for r in pair_rows] + [r[4:] for r in pointwise_rows]
                + [r[6:] for r in gradient_rows] + [r[7:] for r in statistics_rows]
                + [r[2:] for r in step_rows] + [r[2:] for r in statistics_step_rows]):
        own, fused, ratio, spread = row
        assert float(own) > 0 and float(fused) > 0 and float(ratio) > 0
        assert spread == f"{ratio}-{ratio}"  # one round: the range is that ratio
