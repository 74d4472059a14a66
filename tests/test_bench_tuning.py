"""benchmarks/bench_tuning.py: a tuned number changed for a few steps, against today's."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_tuning  # noqa: E402

from minimobile import tuning  # noqa: E402


def test_each_value_gets_a_row_and_today_s_values_come_back(capsys):
    before = tuning.BN_BY_IMAGE_MAX_PIXELS
    bench_tuning.main(["--models", "v1:0.25", "--batch-size", "4", "--rounds", "2", "--steps",
                       "1", "--set", "BN_BY_IMAGE_MAX_PIXELS=0,1024",
                       "--set", "POINTWISE_SMALL_MAPS=channel_major"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].startswith("v1 0.25") and "(today)" in lines[2]
    labels = [line.split()[0] for line in lines[3:]]
    assert labels == ["BN_BY_IMAGE_MAX_PIXELS=0", "BN_BY_IMAGE_MAX_PIXELS=1024",
                      "POINTWISE_SMALL_MAPS=channel_major"]
    for line in lines[3:]:
        ms, ratio = float(line.split()[2]), float(line.split()[3])
        assert ms > 0 and ratio > 0
    assert tuning.BN_BY_IMAGE_MAX_PIXELS == before


def test_with_setting_restores_the_value_when_the_step_fails():
    before = tuning.SUM_TASKS

    def fails():
        assert tuning.SUM_TASKS == 7
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError):
        bench_tuning.with_setting(("SUM_TASKS", 7), fails)
    assert tuning.SUM_TASKS == before


@pytest.mark.parametrize("text, message", [
    ("NOT_A_SETTING=3", "expected one of the tuned numbers in minimobile/tuning.py .*got "
                        "'NOT_A_SETTING'"),
    ("GOMP_SPINCOUNT=0", "got 'GOMP_SPINCOUNT'"),  # read at import: no effect in-process
    ("SUM_TASKS", "expected NAME=VALUE"),
    ("SUM_TASKS=four",
     f"expected whole numbers \\(today's value is {tuning.SUM_TASKS}\\), got 'four'"),
    ("SUM_TASKS=-1", "expected a number >= 0, got -1"),
    ("POINTWISE_SMALL_MAPS=rows", "expected one of groups, channel_major, got 'rows'"),
])
def test_a_bad_setting_is_refused_with_what_was_expected(text, message):
    with pytest.raises(SystemExit, match=message):
        bench_tuning.parse_setting(text)
