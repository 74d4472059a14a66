"""benchmarks/bench_batch_size.py: its arguments, its table, and a tiny run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_batch_size  # noqa: E402


def test_a_tiny_run_times_every_batch_size_in_every_round(capsys):
    times = bench_batch_size.main(["--model", "v1:0.25", "--batch-sizes", "2,4", "--rounds",
                                   "2", "--warmup", "1"])
    assert list(times) == [2, 4] and all(len(t) == 2 and min(t) > 0 for t in times.values())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("v1 0.25, training step at 32x32, median of 2 rounds")
    assert [line.split()[0] for line in lines[2:]] == ["2", "4"]


def test_the_table_sets_each_batch_per_image_against_batch_128_round_by_round():
    # Batch 64 in half batch 128's time per step in round 1, in the same time in round 2.
    table = bench_batch_size.format_table({64: [0.5, 1.0], 128: [1.0, 1.0]})
    row = table.splitlines()[1].split()
    assert row[0] == "64" and row[1] == "750.0" and row[2] == "85"
    assert row[3] == "0.75" and row[4] == "0.50-1.00"  # median and range of the ratio
    assert table.splitlines()[2].split()[3:] == ["1.00", "1.00-1.00"]
    assert "vs 128" not in bench_batch_size.format_table({64: [0.5]})


@pytest.mark.parametrize("argv, message", [
    (["--batch-sizes", "64,x"], "--batch-sizes: expected distinct integers >= 1"),
    (["--batch-sizes", "64,64"], "got '64,64'"),
    (["--batch-sizes", "0"], "got '0'"),
    (["--model", "v1:wide"], "--model: expected NAME:WIDTH such as v1:1.0, got 'v1:wide'"),
    (["--rounds", "0"], "--rounds: expected >= 1"),
])
def test_bad_arguments_name_what_was_expected(argv, message):
    with pytest.raises(SystemExit, match=message):
        bench_batch_size.main(argv)
