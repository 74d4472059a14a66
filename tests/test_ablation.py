import csv
import dataclasses
import importlib.util
import os
import shlex
import sys
from pathlib import Path

import pytest

from minimobile import cli, data, train

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("ablation", REPO / "benchmarks" / "ablation.py")
ablation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ablation)


def config_of(command):
    """The TrainConfig that `minimobile train` builds from a shown command, as cli._train does."""
    args = cli.build_parser().parse_args(shlex.split(command)[3:])  # drop python -m minimobile
    return train.TrainConfig(**cli.given_train_settings(args))


def test_every_variant_changes_exactly_what_it_names_against_the_baseline(tmp_path, capsys):
    assert ablation.main(["--dry-run", "--out", str(tmp_path), "--epochs", "3"]) == 0
    commands = dict(zip([name for name, _, _ in ablation.VARIANTS],
                        capsys.readouterr().out.splitlines(), strict=True))
    for name in ablation.EVALUATED:  # evaluations of the baseline's final weights, no training
        evaluation = shlex.split(commands.pop(name))
        assert evaluation[3:5] == ["eval", str(tmp_path / "runs" / "baseline" / "last.npz")]
        assert "--tta" in evaluation
    configs = {name: config_of(c) for name, c in commands.items()}
    base = dataclasses.asdict(configs["baseline"])
    assert base["epochs"] == 3 and base["seed"] == 0
    for name, config in configs.items():
        changed = {k for k, v in dataclasses.asdict(config).items() if v != base[k]} - {"out"}
        if name == "recipe-fast":
            expected = {k for k in train.RECIPES["fast"]} - {"model", "width", "epochs",
                                                               "eval_every"} | {"lr"}
        elif name == "batch-256":
            expected = {"batch_size", "lr"}  # the lr scales with the batch
        elif name == "progressive-24":
            expected = {"start_resolution", "resolution_ramp"}
        else:
            assert len(changed) == (name != "baseline"), (name, changed)
            continue
        assert changed == expected, name


def test_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "baseline,magic"])
    assert "magic" in capsys.readouterr().err


def test_evaluations_need_the_baseline_and_jobs_must_be_positive(capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "tta-flip", "--dry-run"])
    assert "choose baseline too" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ablation.main(["--jobs", "0", "--dry-run"])
    assert "got 0" in capsys.readouterr().err


def test_with_jobs_each_command_says_its_threads(capsys):
    assert ablation.main(["--dry-run", "--jobs", "2", "--variants", "baseline"]) == 0
    threads = max(1, (os.cpu_count() or 1) // 2)
    assert capsys.readouterr().out.startswith(f"NUMBA_NUM_THREADS={threads} python -m minimobile")


@pytest.mark.slow
def test_a_tiny_ablation_writes_its_table_from_the_runs_and_resumes(tmp_path, capsys):
    fake = data.write_fake_cifar10(tmp_path / "data", n_train_per_batch=103, n_test=64)
    out = tmp_path / "ablation"
    argv = ["--data", str(fake), "--model", "v1", "--width", "0.25", "--epochs", "1",
            "--limit-train", "512", "--variants", "baseline,tta-flip,no-nesterov", "--jobs", "2",
            "--out", str(out)]
    assert ablation.main(argv) == 0
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["baseline", "no-nesterov", "tta-flip"]  # as VARIANTS
    assert all(r["status"] == "ok" for r in rows), rows
    for r in rows[:2]:  # trainings: their figures come from their own history
        assert "--limit-train 512" in r["command"]
        (history,) = train.read_history(out / "runs" / r["variant"] / "history.csv")
        assert r["best_test_acc"] == f"{history['test_acc']:.4f}"
    tta = rows[2]  # the baseline's final weights, evaluated with flips
    assert "eval" in tta["command"] and "--tta flip" in tta["command"]
    assert tta["best_test_acc"] == tta["final_test_acc"] and tta["best_epoch"] == "1"
    assert tta["final_train_loss"] == rows[0]["final_train_loss"]
    assert "test accuracy " + tta["final_test_acc"] in (out / "runs" / "tta-flip.log").read_text()
    assert rows[0]["delta_final"] == "+0.0000"
    table = (out / "ablation.md").read_text()
    assert "| baseline |" in table and tta["command"] in table

    # Run again: every row is finished, so nothing runs and the table is the same
    capsys.readouterr()
    before = (out / "ablation.csv").read_text()
    assert ablation.main(argv) == 0
    assert capsys.readouterr().out.count("kept from") == 3
    assert (out / "ablation.csv").read_text() == before

    # A subset leaves the other rows of the same budget in the table
    assert ablation.main([*argv[:-6], "--variants", "no-nesterov", *argv[-4:]]) == 0
    assert (out / "ablation.csv").read_text() == before

    # The table lost (the script killed before writing it): the finished trainings are found
    # in their folders, not trained again; the evaluation, seconds long, runs again
    (out / "ablation.csv").unlink()
    capsys.readouterr()
    assert ablation.main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("found finished in") == 2 and "minimobile eval" in printed
    assert "minimobile train" not in printed
    with open(out / "ablation.csv") as f:
        again = list(csv.DictReader(f))
    for old_row, new_row in zip(rows, again, strict=True):
        assert {**old_row, "wall_seconds": ""} == {**new_row, "wall_seconds": ""}

    # A folder holding another configuration's run is not taken for this one
    other = shlex.split(rows[1]["command"])
    other = other[other.index("python"):]  # without NUMBA_NUM_THREADS=1
    assert ablation.finished_training([sys.executable, *other[1:]], out / "runs" / "no-nesterov")
    other[other.index("--epochs") + 1] = "2"
    assert not ablation.finished_training([sys.executable, *other[1:]],
                                          out / "runs" / "no-nesterov")
