"""benchmarks/bench_ops.py: every case runs at batch 2 as well as 128, as the loops rung of
`--rungs` runs it (each per-image input cut to two images with x)."""

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_every_case_runs_forward_and_backward_at_both_batches():
    sys.path.insert(0, str(REPO / "benchmarks"))
    import bench_ops
    cases = bench_ops.make_cases(np.random.default_rng(0), [])
    assert len(cases) > 10
    for case in cases:
        case.small_bwd(case.small_fwd()[1])
        case.mm_bwd(case.mm_fwd()[1])
