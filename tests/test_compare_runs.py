import importlib.util
from pathlib import Path

from minimobile import train

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("compare_runs",
                                              REPO / "benchmarks" / "compare_runs.py")
compare_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(compare_runs)


def epoch(n, test_acc, train_loss=1.0, seconds=10.0):
    return {"epoch": n, "step": 10 * n, "train_loss": train_loss, "train_acc": 0.5,
            "test_loss": None if test_acc is None else 1.0, "test_acc": test_acc, "lr": 0.1,
            "epoch_seconds": seconds, "images_per_second": 100.0, "resolution": 32}


def history(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    train.write_history(path, rows)
    return path


def test_the_table_takes_final_accuracies_against_the_first_run(tmp_path, capsys):
    base = history(tmp_path / "base" / "history.csv",
                   [epoch(1, None, seconds=12.0), epoch(2, 0.80, 0.9, seconds=20.0),
                    epoch(3, 0.81, 0.8, seconds=14.0)])
    other = history(tmp_path / "lr-history.csv", [epoch(1, 0.70), epoch(2, 0.8125, 0.7)])
    assert compare_runs.main([str(base), str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| " + " | ".join(compare_runs.COLUMNS) + " |"
    assert lines[2] == "| base | 3 | 0.8100 | +0.0000 | 0.8000 | 14 |"
    assert lines[3] == "| lr | 2 | 0.8125 | +0.0025 | 0.7000 | 10 |"
    assert compare_runs.main([str(base), str(other), "--reference", "lr"]) == 0
    assert "| base | 3 | 0.8100 | -0.0025 |" in capsys.readouterr().out


def test_an_untested_last_epoch_or_an_unknown_reference_is_refused(tmp_path, capsys):
    good = history(tmp_path / "a-history.csv", [epoch(1, 0.5)])
    untested = history(tmp_path / "b-history.csv", [epoch(1, 0.5), epoch(2, None)])
    assert compare_runs.main([str(good), str(untested)]) == 1
    assert "last epoch (2) was not tested" in capsys.readouterr().err
    assert compare_runs.main([str(good), "--reference", "zzz"]) == 1
    assert "expected one of ['a'], got 'zzz'" in capsys.readouterr().err
    assert compare_runs.main([str(tmp_path / "missing.csv")]) == 1
    assert "missing.csv" in capsys.readouterr().err


def test_images_adds_the_training_images_each_run_passed_through(tmp_path, capsys):
    pruned = history(tmp_path / "pruned-history.csv",
                     [{**epoch(1, None), "train_images": 500},
                      {**epoch(2, 0.8), "train_images": 320}])
    old = history(tmp_path / "old-history.csv", [epoch(1, 0.7)])  # written before the column
    assert compare_runs.main([str(pruned), str(old), "--images"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("| median_epoch_s | train_images |")
    assert lines[2].endswith("| 10 | 820 |") and lines[3].endswith("| 10 |  |")
    assert compare_runs.main([str(pruned)]) == 0  # without --images, the table as it was
    assert "train_images" not in capsys.readouterr().out
