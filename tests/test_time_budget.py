"""--time-budget (train.plan_epochs): the arithmetic of the plan, the run it makes is the run
that the planned --epochs makes, and what cannot be sized after one epoch is refused."""

from dataclasses import replace

import numpy as np
import pytest

from minimobile import checkpoint, train
from minimobile.errors import ConfigError
from minimobile.train import TrainConfig, fit, plan_epochs

from test_train import colour_data, tiny_config, tiny_model


def test_plan_takes_the_most_epochs_that_fit_with_their_evaluations():
    # 100 s gone, epochs of 10 s (10.8 with the margin), a final evaluation of 20 s.
    plan = dict(elapsed=100, done=1, max_epochs=50, epoch_seconds=10, eval_seconds=0,
                final_eval_seconds=20, eval_every=1000, margin=0.08)
    assert plan_epochs(100 + 20 + 10 * 10.8, **plan) == 11
    assert plan_epochs(100 + 20 + 10 * 10.8 - 0.01, **plan) == 10
    assert plan_epochs(10_000, **plan) == 50  # never more than asked for
    assert plan_epochs(50, **plan) == 2  # nothing fits: one more epoch, and an overrun
    assert plan_epochs(50, **{**plan, "max_epochs": 1}) == 1  # --epochs 1: nothing to plan
    # An evaluation of 5 s every 4th epoch: epochs 4 and 8 before the last.
    with_evals = {**plan, "eval_seconds": 5, "eval_every": 4}
    assert plan_epochs(100 + 20 + 9 * 10.8 + 2 * 5, **with_evals) == 10
    assert plan_epochs(100 + 20 + 9 * 10.8 + 2 * 5 - 0.01, **with_evals) == 9


def test_a_sized_run_is_the_run_of_its_planned_epochs(tmp_path, monkeypatch, capsys):
    data = colour_data()
    planned = fit(tiny_config(tmp_path / "planned", seed=2, epochs=3, schedule="linear",
                              warmup_epochs=1), model=tiny_model(0), data=data,
                  progress=False)
    # The budget run may train up to 8 epochs; its plan (patched: this machine's timing is
    # not the test's business) says 3.
    calls = []

    def plan(*args, **kwargs):
        calls.append(args)
        return 3
    monkeypatch.setattr(train, "plan_epochs", plan)
    config = tiny_config(tmp_path / "sized", seed=2, epochs=8, schedule="linear",
                         warmup_epochs=1, time_budget=30.0)
    sized = fit(config, model=tiny_model(0), data=data, progress=False, log=True)
    assert len(calls) == 1 and calls[0][3] == 8  # max_epochs
    assert config.epochs == 8  # the caller's config is left as it was
    assert "time budget 30 min: 3 epochs (at most 8)" in capsys.readouterr().out
    assert len(sized) == 3
    a = checkpoint.load(tmp_path / "planned" / "last.npz")[0]
    b, meta = checkpoint.load(tmp_path / "sized" / "last.npz")
    assert meta["config"]["epochs"] == 3 and meta["config"]["time_budget"] == 30.0
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    for row_a, row_b in zip(planned, sized):
        assert row_a["lr"] == row_b["lr"] and row_a["train_loss"] == row_b["train_loss"]


def test_the_real_plan_runs_and_a_generous_budget_keeps_every_epoch(tmp_path):
    config = tiny_config(tmp_path / "run", epochs=3, schedule="linear", warmup_epochs=1,
                         time_budget=600.0, tta="flip", tta_final_only=True)
    history = fit(config, model=tiny_model(0), data=colour_data(), progress=False)
    assert len(history) == 3 and history[-1]["test_tta"] == "flip"


def test_a_budget_never_trains_more_epochs_than_asked_for(tmp_path, capsys):
    # A budget of 6 ms (1e-4 min) that the first epoch already overruns, with --epochs 1: before,
    # the plan's "one more epoch" made it 2, beyond the cap the help and docs/API.md promise.
    config = tiny_config(tmp_path / "run", epochs=1, schedule="constant", time_budget=1e-4)
    history = fit(config, model=tiny_model(0), data=colour_data(), progress=False, log=True)
    assert len(history) == 1
    assert "1 epochs (at most 1)" in capsys.readouterr().out


@pytest.mark.parametrize("settings, message", [
    ({"schedule": "onecycle"}, "schedule='onecycle'"),
    ({"schedule": "linear", "warmup_epochs": 0.5}, "--warmup-epochs 1 or more"),
    ({"schedule": "cosine", "warmup_epochs": 1, "prune": 0.5}, "prune=0.5"),
    ({"schedule": "linear", "warmup_epochs": 2, "start_resolution": 24}, "start_resolution"),
])
def test_what_the_first_epoch_cannot_size_is_refused(settings, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(time_budget=60, **settings)


def test_the_budget_must_be_positive_minutes():
    with pytest.raises(ValueError, match="time_budget"):
        TrainConfig(time_budget=0, schedule="constant")
    assert replace(TrainConfig(schedule="constant"), time_budget=1.5).time_budget == 1.5


def test_the_starting_command_given_again_with_resume_keeps_the_plan(tmp_path, monkeypatch):
    data = colour_data()
    monkeypatch.setattr(train, "plan_epochs", lambda *args, **kwargs: 3)
    config = tiny_config(tmp_path / "run", seed=2, epochs=8, schedule="linear",
                         warmup_epochs=1, time_budget=30.0)
    straight = fit(replace(config, out=str(tmp_path / "straight")), model=tiny_model(0),
                   data=data, progress=False)

    def stop(row):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        fit(config, model=tiny_model(0), data=data, progress=False, on_epoch=stop)
    # The same config (cap 8, budget 30) again, resumed: 3 epochs, as planned.
    resumed = fit(config, model=tiny_model(99), data=data, resume=True, progress=False)
    assert len(resumed) == 3
    assert [r["train_loss"] for r in resumed] == [r["train_loss"] for r in straight]
