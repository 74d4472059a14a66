from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

import minimobile as mm
from minimobile import checkpoint, train
from minimobile.train import TrainConfig, fit

TIMING = ("epoch_seconds", "images_per_second")


def colour_data(n_train=256, n_test=64, seed=0):
    """Ten classes of noisy single-colour images; the colours lie on a circle in RGB space, so
    each is a vertex of their convex hull and a linear read-out of the mean colour separates
    them. A tiny model learns this in a few epochs, where random images teach nothing."""
    def draw(n, rng):
        y = np.arange(n) % 10
        angle = 2 * np.pi * y / 10
        centre = np.stack([128 + 80 * np.cos(angle), 128 + 80 * np.sin(angle),
                           np.full(n, 128.0)], axis=1)  # (n, 3)
        x = centre[:, :, None, None] + rng.normal(0, 30, (n, 3, 32, 32))
        return np.clip(x, 0, 255).astype(np.uint8), y.astype(np.int64)
    rng = np.random.default_rng(seed)
    x_train, y_train = draw(n_train, rng)
    x_test, y_test = draw(n_test, rng)
    return SimpleNamespace(x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)


def tiny_model(seed):
    # The Dropout draws from the same generator as the initialisation, as the models' do, so
    # an exact resume has to restore that generator's state.
    rng = np.random.default_rng(seed)
    return mm.Sequential(mm.Conv2d(3, 8, 3, stride=2, padding=1, rng=rng), mm.BatchNorm2d(8),
                         mm.ReLU6(), mm.GlobalAvgPool2d(), mm.Flatten(), mm.Dropout(0.1, rng=rng),
                         mm.Linear(8, 10, rng=rng))


def tiny_config(out, **kw):
    return TrainConfig(**{"epochs": 3, "batch_size": 32, "lr": 0.1, "out": str(out), **kw})


def interrupt_at(model, n, make_error=KeyboardInterrupt):
    """Make the model's n-th training forward raise (an instance attribute shadows the method,
    and is not a Module, so the state dict does not change)."""
    forward, calls = model.forward, [0]

    def forward_until_n(x):
        if model.training:
            calls[0] += 1
            if calls[0] == n:
                raise make_error()
        return forward(x)
    model.forward = forward_until_n
    return model


def test_config_fills_the_optimizers_defaults_and_rejects_bad_values():
    config = TrainConfig(batch_size=256)
    assert config.lr == pytest.approx(0.2) and config.weight_decay == 5e-4
    assert config.out == "runs/v2-w0.5"
    adamw = TrainConfig(optimizer="adamw", lr=1e-3)
    assert adamw.lr == 1e-3 and adamw.weight_decay == 0.05
    for bad in ({"model": "v4"}, {"optimizer": "adam"}, {"schedule": "linear"},
                {"epochs": 0}, {"label_smoothing": 1.0}, {"limit_train": 0}, {"width": 0},
                {"dtype": "float16"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TrainConfig(**bad)


def test_build_model_maps_every_name_to_its_mobilenet():
    expected = {"v1": "MobileNetV1", "v2": "MobileNetV2", "v3-small": "MobileNetV3",
                "v3-large": "MobileNetV3"}
    for name, cls in expected.items():
        model = train.build_model(name, width=0.25, dropout=0.0, seed=0)
        assert type(model).__name__ == cls
        assert model.classifier[-1].params["weight"].shape[0] == 10
    with pytest.raises(ValueError, match="v3-tiny"):
        train.build_model("v3-tiny")


@pytest.mark.parametrize("schedule", train.SCHEDULE_NAMES)
def test_every_schedule_starts_near_lr_and_never_exceeds_it(schedule):
    config = tiny_config("unused", schedule=schedule, epochs=4, warmup_epochs=1)
    lr_at = train.make_lr_schedule(config, steps_per_epoch=10)
    lrs = np.array([lr_at(step) for step in range(40)])
    assert lrs.max() <= 0.1 + 1e-12 and lrs.min() > 0
    if schedule in ("cosine", "step"):
        assert lrs[-1] < 0.02


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    cm = train.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_evaluate_runs_in_eval_mode_and_restores_training_mode():
    model, data = tiny_model(0), colour_data(n_train=32, n_test=40)
    result = train.evaluate(model, data.x_test, data.y_test, batch_size=16)
    assert model.training and model[0]._cache is None
    assert result.predictions.shape == (40,)
    assert result.accuracy == np.mean(result.predictions == data.y_test)


def test_fit_lowers_the_loss_and_writes_checkpoints_and_history(tmp_path):
    history = fit(tiny_config(tmp_path, epochs=5), model=tiny_model(0), data=colour_data(),
                  progress=False)
    losses = [row["train_loss"] for row in history]
    assert losses[-1] < losses[0] - 0.3, losses
    assert history[-1]["test_acc"] > 0.3  # chance is 0.1
    assert [row["step"] for row in history] == [8, 16, 24, 32, 40]  # 256 // 32 per epoch
    assert train.read_history(tmp_path / "history.csv") == history
    best = max(history, key=lambda row: row["test_acc"])
    assert checkpoint.load_meta(tmp_path / "best.npz")["epoch"] == best["epoch"]
    assert checkpoint.load_meta(tmp_path / "last.npz")["epoch"] == 5


def test_resume_after_ctrl_c_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path, capsys):
    data = colour_data()
    straight = tiny_config(tmp_path / "straight", seed=3)
    fit(straight, model=tiny_model(0), data=data, progress=False)

    resumed = replace(straight, out=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        fit(resumed, model=interrupt_at(tiny_model(0), n=11), data=data, progress=False)
    assert "--resume" in capsys.readouterr().err
    assert checkpoint.load_meta(tmp_path / "resumed" / "last.npz")["epoch"] == 1
    # A model from another seed: everything that matters must come from the checkpoint.
    fit(resumed, model=tiny_model(99), data=data, resume=True, progress=False)

    a, meta_a = checkpoint.load(tmp_path / "straight" / "last.npz")
    b, meta_b = checkpoint.load(tmp_path / "resumed" / "last.npz")
    assert set(a) == set(b) and any(k.startswith("optimizer/momentum_buffer") for k in a)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    for key in ("epoch", "step", "data_rng", "model_rngs"):
        assert meta_a[key] == meta_b[key], key
    strip = [[{k: v for k, v in row.items() if k not in TIMING} for row in meta["history"]]
             for meta in (meta_a, meta_b)]
    assert strip[0] == strip[1]


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    last, saved = tmp_path / "last.npz", {}
    model = tiny_model(0)
    forward = model.forward

    def forward_that_diverges_in_epoch_2(x):
        logits = forward(x)
        if model.training and last.exists():
            saved.setdefault("bytes", last.read_bytes())
            logits = logits * np.inf
        return logits
    model.forward = forward_that_diverges_in_epoch_2
    with pytest.raises(mm.NonFiniteError) as info:
        fit(tiny_config(tmp_path), model=model, data=colour_data(), progress=False)
    message = str(info.value)
    assert "epoch 2" in message and "step 8" in message and "lr" in message
    assert "epoch 1, untouched" in message
    assert last.read_bytes() == saved["bytes"]
    assert len(train.read_history(tmp_path / "history.csv")) == 1


def test_resume_refuses_a_run_whose_settings_changed(tmp_path):
    data = colour_data(n_train=64, n_test=32)
    config = tiny_config(tmp_path, epochs=1)
    fit(config, model=tiny_model(0), data=data, progress=False)
    with pytest.raises(ValueError, match=r"lr 0.1 -> 0.2"):
        fit(replace(config, lr=0.2, epochs=2), model=tiny_model(0), data=data, resume=True,
            progress=False)
    history = fit(replace(config, epochs=2), model=tiny_model(0), data=data, resume=True,
                  progress=False)
    assert [row["epoch"] for row in history] == [1, 2]


def test_resume_without_a_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="last.npz does not exist"):
        fit(tiny_config(tmp_path), model=tiny_model(0), data=colour_data(64, 32), resume=True,
            progress=False)
