"""benchmarks/bench_resolution.py: its arguments, its table, and a tiny run."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_resolution  # noqa: E402


def test_a_tiny_run_times_every_network_in_every_round_at_its_resolution(capsys):
    times = bench_resolution.main(["--networks", "v1:0.25@16,v1:0.25@24", "--batch-size", "2",
                                   "--rounds", "2", "--warmup", "1"])
    assert list(times) == [("v1", 0.25, 16), ("v1", 0.25, 24)]
    assert all(len(t) == 2 and min(t) > 0 for t in times.values())
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("training step, batch 2, median of 2 rounds")
    assert [line.split("  ")[0].strip() for line in lines[2:]] == ["v1 0.25 @16", "v1 0.25 @24"]


def test_the_step_is_timed_on_images_of_the_networks_resolution(monkeypatch):
    shapes = []
    monkeypatch.setattr(bench_resolution, "measure",
                        lambda steps, rounds, warmup: {k: [1.0] for k in steps})
    real_make_step = bench_resolution.make_step

    def recording_make_step(name, width, batch_size, resolution):
        shapes.append((name, width, batch_size, resolution))
        return real_make_step(name, width, batch_size, resolution=resolution)

    monkeypatch.setattr(bench_resolution, "make_step", recording_make_step)
    bench_resolution.main(["--networks", "v1:0.25@40", "--batch-size", "3", "--rounds", "1"])
    assert shapes == [("v1", 0.25, 3, 40)]


def test_the_table_sets_each_step_against_the_first_networks_round_by_round():
    # The second network takes twice the first's time in round 1 and the same in round 2.
    table = bench_resolution.format_table({("v1", 1.0, 32): [0.5, 1.0],
                                           ("v1", 0.5, 48): [1.0, 1.0]}, batch_size=100)
    first, second = (line.split() for line in table.splitlines()[1:])
    assert first[:3] == ["v1", "1", "@32"] and first[3:] == ["750.0", "133", "375", "1.00",
                                                             "1.00-1.00"]
    assert second[:3] == ["v1", "0.5", "@48"]
    assert second[3:] == ["1000.0", "100", "500", "1.50", "1.00-2.00"]


@pytest.mark.parametrize("argv, message", [
    (["--networks", "v1:0.5"], "expected NAME:WIDTH@RESOLUTION items such as v1:0.5@48"),
    (["--networks", "v1:0.5@x"], "got 'v1:0.5@x'"),
    (["--networks", "v9:0.5@32"], "got 'v9:0.5@32'"),
    (["--networks", "v1:0@32"], "got 'v1:0@32'"),
    (["--networks", "v1:0.5@4"], "RESOLUTION 8-1024"),
    (["--networks", "v1:0.5@32,v1:0.5@32"], "expected distinct networks"),
    (["--rounds", "0"], "--rounds and --batch-size: expected >= 1"),
])
def test_bad_arguments_name_what_was_expected(argv, message):
    with pytest.raises(SystemExit, match=message):
        bench_resolution.main(argv)
