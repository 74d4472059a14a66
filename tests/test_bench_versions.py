"""benchmarks/bench_versions.py: a tiny ops run, with this checkout on both sides, times the
cases asked for and prints a row for each."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_versions.py"


def test_a_tiny_ops_run_prints_a_row_per_case_asked_for():
    cases = ["depthwise3x3_4x4", "batchnorm_relu6_8x8"]
    done = subprocess.run([sys.executable, str(SCRIPT), str(REPO), str(REPO), "--payload",
                           "ops", "--ops", ",".join(cases), "--rounds", "1", "--repeats", "1"],
                          capture_output=True, text=True, env=dict(os.environ), timeout=600)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    table = lines[[line.split()[:1] for line in lines].index(["case"]) + 1:]
    rows = {line.split()[0]: line.split()[1:] for line in table if line.strip()}
    assert sorted(rows) == sorted(cases)  # those cases, and no others
    for old_ms, new_ms, ratio, spread in rows.values():
        assert float(old_ms) > 0 and float(new_ms) > 0
        assert spread == f"{ratio}-{ratio}"  # one round: the range is that round's ratio


def test_an_unknown_tree_is_refused_with_what_was_expected(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), str(REPO)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "expected a checkout of minimobile" in done.stderr
