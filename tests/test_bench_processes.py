"""benchmarks/bench_processes.py: threads, free-running and lockstep processes all train and
report their images per second, and the table says which is which."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_processes  # noqa: E402


def test_the_benchmark_prints_each_way_and_the_median_ratios(capsys):
    medians = bench_processes.main(["--model", "v1:0.25", "--batch-size", "8", "--steps", "1",
                                    "--rounds", "1", "--workers", "2"])
    assert set(medians) == {"free", "lockstep"} and all(v > 0 for v in medians.values())
    out = capsys.readouterr().out
    assert "2 processes of 1 thread, batch 4 each" in out
    assert out.strip().splitlines()[-1].startswith("median ratio to threads: free ")


def test_make_step_trains_the_model_it_returns():
    model, optimizer, gradients = bench_processes.make_step(("v1", 0.25), 4)
    before = [p.copy() for _, p, _ in model.named_parameters()]
    gradients()
    assert any(np.abs(g).sum() > 0 for _, _, g in model.named_parameters())
    optimizer.step()
    assert any(not np.array_equal(b, p) for b, (_, p, _) in zip(before,
                                                                 model.named_parameters()))


def test_parse_model_reads_a_name_and_a_width():
    assert bench_processes.parse_model("v3-small:0.75") == ("v3-small", 0.75)
    assert bench_processes.parse_model("v2") == ("v2", 1.0)
