import csv
import dataclasses
import importlib.util
import shlex
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
    fields = {f.name for f in dataclasses.fields(train.TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return train.TrainConfig(**{**train.RECIPES.get(args.recipe, {}), **given})


def test_every_variant_changes_exactly_what_it_names_against_the_baseline(tmp_path, capsys):
    assert ablation.main(["--dry-run", "--out", str(tmp_path), "--epochs", "3"]) == 0
    commands = capsys.readouterr().out.splitlines()
    assert len(commands) == len(ablation.VARIANTS)
    configs = {name: config_of(c) for (name, _, _), c in zip(ablation.VARIANTS, commands)}
    base = dataclasses.asdict(configs["baseline"])
    assert base["epochs"] == 3 and base["seed"] == 0
    for name, config in configs.items():
        changed = {k for k, v in dataclasses.asdict(config).items() if v != base[k]} - {"out"}
        if name == "recipe-fast":
            expected = {k for k in train.RECIPES["fast"]} - {"model", "width", "epochs",
                                                               "eval_every"} | {"lr"}
        elif name == "batch-256":
            expected = {"batch_size", "lr"}  # the lr scales with the batch
        else:
            assert len(changed) == (name != "baseline"), (name, changed)
            continue
        assert changed == expected, name


def test_unknown_variants_are_refused(capsys):
    with pytest.raises(SystemExit):
        ablation.main(["--variants", "baseline,magic"])
    assert "magic" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_ablation_writes_its_table_and_commands_from_the_runs_own_history(tmp_path):
    fake = data.write_fake_cifar10(tmp_path / "data", n_train_per_batch=103, n_test=64)
    out = tmp_path / "ablation"
    assert ablation.main(["--data", str(fake), "--model", "v1", "--width", "0.25", "--epochs",
                          "1", "--limit-train", "512", "--variants", "baseline,tta-flip",
                          "--out", str(out)]) == 0
    with open(out / "ablation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["variant"] for r in rows] == ["baseline", "tta-flip"]
    for r in rows:
        assert r["status"] == "ok" and "--limit-train 512" in r["command"]
        (history,) = train.read_history(out / "runs" / r["variant"] / "history.csv")
        assert r["best_test_acc"] == f"{history['test_acc']:.4f}"
    assert rows[0]["delta_final"] == "+0.0000" and "--tta flip" in rows[1]["command"]
    table = (out / "ablation.md").read_text()
    assert "| baseline |" in table and rows[1]["command"] in table
