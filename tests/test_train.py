from dataclasses import replace
from types import SimpleNamespace
import re

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
    for bad in ({"model": "v4"}, {"optimizer": "adam"}, {"schedule": "triangle"},
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
def test_every_schedule_warms_up_to_lr_and_never_exceeds_it(schedule):
    config = tiny_config("unused", schedule=schedule, epochs=4, warmup_epochs=1)
    lr_at = train.make_lr_schedule(config, steps_per_epoch=10)
    lrs = np.array([lr_at(step) for step in range(40)])
    assert lrs.max() <= 0.1 + 1e-12 and lrs.min() > 0
    assert lrs[:12].max() == pytest.approx(0.1), lrs[:12]  # at lr by the end of the warm-up
    if schedule in ("cosine", "linear", "onecycle"):  # these rise from near 0 over the warm-up
        assert lrs[0] < 0.02 and np.all(np.diff(lrs[:10]) > 0), lrs[:12]
    else:  # step and constant start at lr
        assert lrs[0] == pytest.approx(0.1), lrs[:12]
    if schedule in ("cosine", "step"):
        assert lrs[-1] < 0.02


def test_confusion_matrix_counts_true_rows_against_predicted_columns():
    cm = train.confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], num_classes=3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_evaluate_runs_in_eval_mode_and_restores_training_mode():
    model, data = tiny_model(0), colour_data(n_train=32, n_test=40)
    bn = model[1]
    before = {key: value.copy() for key, value in bn.buffers.items()}
    seen = []
    forward = bn.forward
    bn.forward = lambda x: (seen.append(bn.training), forward(x))[1]
    result = train.evaluate(model, data.x_test, data.y_test, batch_size=16)
    assert seen == [False] * 3  # 40 images in batches of 16, every one in eval mode
    for key, value in bn.buffers.items():  # a training-mode forward would move them
        np.testing.assert_array_equal(value, before[key], err_msg=key)
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


# Every technique that carries state across epochs: the EMA's average and update count, the
# alternating flips' parity, cutout's draws, and an evaluation with TTA; progressive resizing
# from 16x16 to 32x32 in the third epoch, after the interruption; data pruning's scores (the
# interrupted second epoch prunes).
FAST_TECHNIQUES = {"ema": 0.9, "flip": "alternate", "cutout": 8, "tta": "flip,translate",
                   "schedule": "linear", "label_smoothing": 0.2, "start_resolution": 16,
                   "resolution_ramp": (0.6, 0.6), "prune": 0.5}


@pytest.mark.parametrize("techniques", [{}, FAST_TECHNIQUES], ids=["defaults", "techniques"])
def test_resume_after_ctrl_c_ends_bit_for_bit_where_an_uninterrupted_run_ends(tmp_path, capsys,
                                                                              techniques):
    data = colour_data()
    straight = tiny_config(tmp_path / "straight", seed=3, **techniques)
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
    assert any(k.startswith("ema/") for k in a) == bool(techniques)
    assert (train.PRUNING_SCORES in a) == bool(techniques)
    for key in a:
        assert np.array_equal(a[key], b[key]), key
    for key in ("epoch", "step", "data_rng", "model_rngs", "ema_updates"):
        assert meta_a.get(key) == meta_b.get(key), key
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


def test_fit_refuses_a_batch_larger_than_the_training_set_before_training(tmp_path):
    with pytest.raises(mm.errors.ConfigError, match="--batch-size 128 is larger than the 64 "
                       "training images.*--batch-size 64 or less"):
        fit(tiny_config(tmp_path, batch_size=128), model=tiny_model(0),
            data=colour_data(64, 32), progress=False)
    assert not list(tmp_path.glob("*.npz"))


def test_a_run_folder_under_a_file_fails_before_the_data_is_loaded(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    data = SimpleNamespace()  # any attribute access would fail: the data must not be touched
    for out in (tmp_path / "file", tmp_path / "file" / "run"):
        with pytest.raises(mm.errors.OutputError, match=f"{out}.*choose another --out"):
            fit(tiny_config(out), model=tiny_model(0), data=data, progress=False)


def test_a_full_disk_mid_run_is_one_error_that_keeps_the_last_checkpoint(tmp_path,
                                                                         monkeypatch):
    import errno
    savez, calls = np.savez, [0]

    def savez_on_a_full_disk(file, **arrays):
        if checkpoint.load_meta(tmp_path / "last.npz")["epoch"] == 1 if (
                tmp_path / "last.npz").exists() else False:
            file.write(b"PK\x03\x04 the start of a zip")
            raise OSError(errno.ENOSPC, "No space left on device")
        return savez(file, **arrays)
    monkeypatch.setattr(np, "savez", savez_on_a_full_disk)
    with pytest.raises(mm.errors.OutputError) as info:
        fit(tiny_config(tmp_path), model=tiny_model(0), data=colour_data(64, 32),
            progress=False)
    message = str(info.value)
    assert "No space left on device" in message and "epoch 1, untouched" in message
    assert "--resume" in message and "\n" not in message
    monkeypatch.undo()
    assert checkpoint.load_meta(tmp_path / "last.npz")["epoch"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.npz", "history.csv", "last.npz"]


def test_resuming_with_another_network_is_a_mismatch_error_naming_the_file(tmp_path):
    data = colour_data(n_train=64, n_test=32)
    config = tiny_config(tmp_path, epochs=1)
    fit(config, model=tiny_model(0), data=data, progress=False)
    other = mm.Sequential(mm.Conv2d(3, 4, 3, rng=np.random.default_rng(0)), mm.GlobalAvgPool2d(),
                          mm.Flatten(), mm.Linear(4, 10, rng=np.random.default_rng(0)))
    with pytest.raises(mm.errors.CheckpointMismatchError, match="last.npz.*do not fit"):
        fit(replace(config, epochs=2), model=other, data=data, resume=True, progress=False)


def test_resuming_from_nan_weights_says_so_instead_of_advising_a_lower_lr(tmp_path):
    data = colour_data(n_train=64, n_test=32)
    config = tiny_config(tmp_path, epochs=1)
    fit(config, model=tiny_model(0), data=data, progress=False)
    arrays, meta = checkpoint.load(tmp_path / "last.npz")
    arrays["model/0.weight"][0, 0, 0, 0] = np.nan
    checkpoint.save(tmp_path / "last.npz", arrays, meta)
    with pytest.raises(mm.errors.CheckpointMismatchError) as info:
        fit(replace(config, epochs=2), model=tiny_model(0), data=data, resume=True,
            progress=False)
    assert "already holds NaN" in str(info.value) and "0.weight" in str(info.value)
    assert "--lr" not in str(info.value)


def test_ctrl_c_before_the_first_epoch_ends_does_not_offer_a_resume(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_config(tmp_path), model=interrupt_at(tiny_model(0), n=1), data=colour_data(),
            progress=False)
    err = capsys.readouterr().err
    assert "No epoch finished" in err and "--resume" not in err and "start over" in err


@pytest.mark.parametrize("text, match", [
    ("name,value\nx,1\n", "lacks the columns epoch"),
    ("epoch,step,train_loss,train_acc,test_loss,test_acc\n1,8,0.5,0.3,,\n2,16,oops,0.4,,\n",
     "line 3"),
    ("epoch,step,train_loss,train_acc,test_loss,test_acc\n1,8,0.5", "line 2"),
    ("epoch,step,train_loss,train_acc,test_loss,test_acc,test_tta\n1,8,0.5,0.3,0.6,0.2,none\n"
     "2,16,0.4,0.4,0.5,0.3,rotate\n", "line 3: test_tta: expected one of"),
])
def test_a_malformed_history_names_the_file_and_the_line(tmp_path, text, match):
    (tmp_path / "history.csv").write_text(text)
    with pytest.raises(mm.errors.CorruptHistoryError, match=match) as info:
        train.read_history(tmp_path / "history.csv")
    assert "history.csv" in str(info.value)


@pytest.mark.parametrize("bad", [{"model": "v9"}, {"width": -1}, {"epochs": "ten"},
                                 {"width": 100.0}])
def test_a_checkpoint_with_an_invalid_saved_config_is_a_corrupt_checkpoint(tmp_path, bad):
    from dataclasses import asdict
    config = {**asdict(tiny_config(tmp_path)), **bad}
    checkpoint.save(tmp_path / "c.npz", {"w": np.zeros(1)},
                    {"kind": train.CHECKPOINT_KIND, "config": config})
    with pytest.raises(checkpoint.CorruptCheckpointError, match="c.npz holds an invalid"):
        train.read_config(tmp_path / "c.npz")


def test_warm_up_compiles_on_a_copy_says_so_when_slow_and_leaves_the_model_alone(
        tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "COMPILE_NOTE_AFTER", 0.0)
    model, data = tiny_model(0), colour_data(n_train=32, n_test=8)
    before = {k: v.copy() for k, v in model.state_dict().items()}
    rngs = train.generator_states(model)
    train.warm_up(model, tiny_config(tmp_path), data.x_train, data.y_train)
    assert "compiling kernels, once" in capsys.readouterr().err
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())
    assert train.generator_states(model) == rngs and model[0]._cache is None


def test_without_progress_bars_one_line_per_epoch_is_still_printed(tmp_path, capsys):
    fit(tiny_config(tmp_path, epochs=2), model=tiny_model(0), data=colour_data(64, 32),
        progress=False, log=True)
    out = capsys.readouterr().out
    assert "epoch 1/2  train loss" in out and "epoch 2/2  train loss" in out


def test_a_run_killed_during_a_checkpoint_write_resumes_and_leaves_no_temporary_file(
        tmp_path):
    """Fault injection: a child process trains and is killed (SIGKILL, no clean-up of any
    kind) in the middle of its epoch-2 checkpoint write. The previous checkpoint must load,
    the half-written temporary file is removed by the next start, and the resumed run ends
    bit for bit where an uninterrupted one does."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap
    from pathlib import Path
    tests, repo = Path(__file__).parent, Path(__file__).parents[1]
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(tests)!r})
        import numpy as np
        import test_train as t
        savez, calls = np.savez, [0]
        def savez_killed_midway(file, **arrays):
            calls[0] += 1
            if calls[0] == 3:  # epoch 1 wrote best.npz and last.npz; this is epoch 2
                file.write(b"PK\\x03\\x04" + bytes(1000))
                file.flush()
                os.kill(os.getpid(), signal.SIGKILL)
            return savez(file, **arrays)
        np.savez = savez_killed_midway
        t.fit(t.tiny_config({str(killed)!r}, seed=3), model=t.tiny_model(0),
              data=t.colour_data(), progress=False)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True,
                          text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = checkpoint.temporary_files(killed, train.RUN_FILES)
    assert len(left) == 1 and left[0].stat().st_size > 1000
    assert checkpoint.load_meta(killed / "last.npz")["epoch"] == 1

    config = tiny_config(killed, seed=3)
    fit(config, model=tiny_model(99), data=colour_data(), resume=True, progress=False)
    assert checkpoint.temporary_files(killed, train.RUN_FILES) == []
    straight = replace(config, out=str(tmp_path / "straight"))
    fit(straight, model=tiny_model(0), data=colour_data(), progress=False)
    a, _ = checkpoint.load(tmp_path / "straight" / "last.npz")
    b, _ = checkpoint.load(killed / "last.npz")
    assert set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("meta_change", [{"history": "lost"}, {"epoch": None}])
def test_resuming_from_a_checkpoint_with_a_broken_training_state_is_a_corrupt_checkpoint(
        tmp_path, meta_change):
    data = colour_data(n_train=64, n_test=32)
    config = tiny_config(tmp_path, epochs=1)
    fit(config, model=tiny_model(0), data=data, progress=False)
    arrays, meta = checkpoint.load(tmp_path / "last.npz")
    checkpoint.save(tmp_path / "last.npz", arrays, {**meta, **meta_change})
    with pytest.raises(checkpoint.CorruptCheckpointError, match="valid training state"):
        fit(replace(config, epochs=2), model=tiny_model(0), data=data, resume=True,
            progress=False)


def test_the_same_seed_gives_the_same_run_with_every_technique_on(tmp_path):
    data = colour_data(n_train=128, n_test=32)
    runs = [fit(tiny_config(tmp_path / name, epochs=2, **FAST_TECHNIQUES), model=tiny_model(0),
                data=data, progress=False) for name in ("a", "b")]
    strip = [[{k: v for k, v in row.items() if k not in TIMING} for row in run] for run in runs]
    assert strip[0] == strip[1]
    a, _ = checkpoint.load(tmp_path / "a" / "last.npz")
    b, _ = checkpoint.load(tmp_path / "b" / "last.npz")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    other = fit(tiny_config(tmp_path / "c", epochs=2, seed=1, **FAST_TECHNIQUES),
                model=tiny_model(0), data=data, progress=False)
    assert other[-1]["train_loss"] != runs[0][-1]["train_loss"]  # the seed moves the data


def test_decay_norm_and_bias_decays_every_parameter_and_the_default_only_weights():
    model = tiny_model(0)
    default = train.make_optimizer(tiny_config("unused"), model)
    names = dict(zip(default.names, default.decay))
    assert names["0.weight"] and names["6.weight"]  # conv and linear weights
    assert not any(names[k] for k in ("1.weight", "1.bias", "6.bias"))  # batch norm, bias
    everything = train.make_optimizer(tiny_config("unused", decay_norm_and_bias=True), model)
    assert all(everything.decay)


def test_crop_padding_reaches_the_batches_and_bad_values_are_refused(tmp_path, monkeypatch):
    assert TrainConfig().crop_padding == 4  # the standard CIFAR augmentation
    seen = []

    class Spy(train.Batches):
        def __init__(self, *args, **kwargs):
            seen.append(kwargs["crop_padding"])
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(train, "Batches", Spy)
    fit(tiny_config(tmp_path, epochs=1, crop_padding=2), model=tiny_model(0),
        data=colour_data(n_train=32, n_test=16), progress=False)
    assert seen == [2]
    for bad in (-1, 17, 2.5):
        with pytest.raises(ValueError, match="crop_padding"):
            TrainConfig(crop_padding=bad)


def test_no_decay_depthwise_spares_exactly_the_depthwise_filters():
    model = mm.mobilenet_v1(width_mult=0.25, cifar=True, seed=0)
    depthwise = {f"{path}.weight" for path, m in model.named_modules()
                 if isinstance(m, mm.DepthwiseConv2d)}
    assert len(depthwise) == 13  # V1's 13 depthwise separable blocks
    default = train.make_optimizer(tiny_config("unused", model="v1"), model)
    spared = train.make_optimizer(tiny_config("unused", model="v1", decay_depthwise=False), model)
    for name, param, before, after in zip(default.names, default.params, default.decay,
                                          spared.decay):
        assert before == (param.ndim >= 2), name  # the default: every weight, depthwise too
        assert after == (before and name not in depthwise), name
    both = train.make_optimizer(tiny_config("unused", model="v1", decay_depthwise=False,
                                            decay_norm_and_bias=True), model)
    assert [not d for d in both.decay] == [n in depthwise for n in both.names]


def test_evaluate_without_tta_is_the_plain_forward_pass_of_the_normalised_images():
    model, data = tiny_model(0), colour_data(n_train=32, n_test=40)
    result = train.evaluate(model, data.x_test, data.y_test, batch_size=16)
    with mm.no_grad():
        logits = model.eval().forward(mm.data.normalize(data.x_test))
    np.testing.assert_array_equal(result.predictions, logits.argmax(axis=1))


def test_flip_tta_averages_the_logits_of_each_image_and_its_mirror():
    model, data = tiny_model(0), colour_data(n_train=32, n_test=40)
    x, y = data.x_test.copy(), data.y_test
    x[:, :, :, :16] //= 2  # left and right halves differ, so a mirror changes the logits
    plain = train.evaluate(model, x, y, 16)
    flip = train.evaluate(model, x, y, 16, tta="flip")
    mirrored = train.evaluate(model, x[..., ::-1], y, 16, tta="flip")
    assert flip.loss != plain.loss
    assert flip.loss == pytest.approx(mirrored.loss, rel=1e-6)  # the average is mirror-blind
    model.eval()
    with mm.no_grad():
        expected = (model.forward(mm.data.normalize(x)) +
                    model.forward(mm.data.normalize(x[..., ::-1].copy()))) / 2
    np.testing.assert_allclose(train.tta_logits(model, x, "flip"), expected, rtol=1e-5)


def test_translate_tta_weighs_the_unshifted_and_the_two_reflect_shifted_pairs_as_airbench():
    model, data = tiny_model(0).eval(), colour_data(n_train=32, n_test=8)
    x = data.x_test

    def pair(images):
        with mm.no_grad():
            return sum(model.forward(mm.data.normalize(v.copy())) for v in
                       (images, images[..., ::-1])) / 2
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    expected = (0.5 * pair(x) + 0.25 * pair(padded[..., :32, :32])
                + 0.25 * pair(padded[..., 2:, 2:]))
    with mm.no_grad():
        got = train.tta_logits(model, x, "flip,translate")
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="tta"):
        train.evaluate(model, x, data.y_test, tta="rotate")


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_with_ema_the_averaged_model_is_tested_checkpointed_and_chosen_as_best(tmp_path, tta):
    data = colour_data()
    history = fit(tiny_config(tmp_path, epochs=3, ema=0.9, tta=tta), model=tiny_model(0),
                  data=data, progress=False)
    arrays, meta = checkpoint.load(tmp_path / "last.npz")
    assert meta["ema_updates"] == 24 and any(k.startswith("ema/") for k in arrays)
    live = tiny_model(0)
    live.load_state_dict(checkpoint.model_arrays(arrays, ema=False))
    # The loader above builds the config's network, not our tiny one: load the EMA by hand.
    ema_model = tiny_model(0)
    checkpoint.load_model(tmp_path / "last.npz", ema_model)
    assert not np.array_equal(ema_model[0].params["weight"], live[0].params["weight"])
    tested = train.evaluate(ema_model, data.x_test, data.y_test, 32, 0.1, tta=tta)
    assert tested.loss == pytest.approx(history[-1]["test_loss"], rel=1e-6)
    assert tested.loss != train.evaluate(live, data.x_test, data.y_test, 32, 0.1, tta=tta).loss
    best = max(history, key=lambda row: row["test_acc"])
    assert checkpoint.load_meta(tmp_path / "best.npz")["epoch"] == best["epoch"]


def test_tta_final_only_tests_the_earlier_epochs_in_one_pass_and_the_last_with_tta(tmp_path):
    # Test-time augmentation changes only the evaluation, so the three runs train alike: the
    # final-only run's earlier tests must be the plain run's, its last the TTA run's.
    data = colour_data()
    runs = {name: fit(tiny_config(tmp_path / name, eval_every=1, **settings),
                      model=tiny_model(0), data=data, progress=False)
            for name, settings in [("plain", {}), ("tta", {"tta": "flip"}),
                                   ("final", {"tta": "flip", "tta_final_only": True})]}
    plain, tta, final = runs["plain"], runs["tta"], runs["final"]
    assert [row["test_tta"] for row in final] == ["none", "none", "flip"]
    assert [row["test_tta"] for row in tta] == ["flip"] * 3
    for row in (0, 1):
        assert final[row]["test_loss"] == plain[row]["test_loss"] != tta[row]["test_loss"]
    assert final[2]["test_loss"] == tta[2]["test_loss"] != plain[2]["test_loss"]
    written = train.read_history(tmp_path / "final" / "history.csv")
    assert [row["test_tta"] for row in written] == ["none", "none", "flip"]
    assert [row["test_acc"] for row in written] == [row["test_acc"] for row in final]


def test_tta_final_only_may_change_on_resume_as_it_changes_no_training(tmp_path):
    data = colour_data(n_train=64, n_test=32)
    config = tiny_config(tmp_path, epochs=1, tta="flip")
    fit(config, model=tiny_model(0), data=data, progress=False)
    history = fit(replace(config, epochs=3, tta_final_only=True), model=tiny_model(0),
                  data=data, resume=True, progress=False)
    assert [row["test_tta"] for row in history] == ["flip", "none", "flip"]


def test_the_fast_recipe_is_a_valid_config_whose_values_explicit_settings_override():
    config = train.recipe_config("fast", out="x")
    for key, value in train.RECIPES["fast"].items():
        assert getattr(config, key) == value, key
    assert config.ema > 0 and config.tta != "none" and config.cutout > 0
    assert train.recipe_config("fast", ema=0.0, out="x").ema == 0.0
    with pytest.raises(ValueError, match="recipe"):
        train.recipe_config("slowest")


def test_fit_hands_the_flip_mode_and_cutout_to_its_batches(tmp_path, monkeypatch):
    made = []

    class SpyBatches(train.Batches):
        def __init__(self, *args, **kwargs):
            made.append(kwargs)
            super().__init__(*args, **kwargs)
    monkeypatch.setattr(train, "Batches", SpyBatches)
    fit(tiny_config(tmp_path, epochs=1, flip="alternate", cutout=5), model=tiny_model(0),
        data=colour_data(64, 16), progress=False)
    (kwargs,) = made
    assert kwargs["flip"] == "alternate" and kwargs["cutout"] == 5 and kwargs["augment"]


def test_fit_trains_with_the_configs_label_smoothing_and_nesterov_setting(tmp_path, monkeypatch):
    seen = []
    loss_fn = train.softmax_cross_entropy

    def spy(logits, y, smoothing=0.0):
        seen.append(smoothing)
        return loss_fn(logits, y, smoothing)
    monkeypatch.setattr(train, "softmax_cross_entropy", spy)
    fit(tiny_config(tmp_path, epochs=1, label_smoothing=0.2), model=tiny_model(0),
        data=colour_data(64, 16), progress=False)
    assert seen and set(seen) == {0.2}  # training steps and the test loss alike
    assert train.make_optimizer(tiny_config("unused"), tiny_model(0)).nesterov
    assert not train.make_optimizer(tiny_config("unused", nesterov=False), tiny_model(0)).nesterov


def test_fit_at_resolution_24_trains_and_tests_on_24x24_images_and_saves_the_resolution(tmp_path):
    model, seen = tiny_model(0), []
    forward = model.forward

    def spy(x):
        seen.append((model.training, x.shape[1:]))
        return forward(x)
    model.forward = spy
    history = fit(tiny_config(tmp_path, epochs=2, resolution=24), model=model,
                  data=colour_data(64, 16), progress=False)
    assert len(history) == 2 and all(row["test_acc"] is not None for row in history)
    assert set(seen) == {(True, (3, 24, 24)), (False, (3, 24, 24))}
    assert train.read_config(tmp_path / "last.npz").resolution == 24
    with pytest.raises(ValueError, match="resolution"):
        TrainConfig(resolution=7)
    with pytest.raises(ValueError, match="cannot resume.*resolution 24 -> 32"):
        fit(tiny_config(tmp_path, epochs=3), model=tiny_model(0), data=colour_data(64, 16),
            resume=True, progress=False)


def test_progressive_resolution_holds_rises_in_steps_and_ends_at_full():
    at = [train.progressive_resolution(e, 8, 16, 32, 0.25, 0.75) for e in range(8)]
    # done = e/8: below 0.25 the start, from 0.75 the end, between a rise rounded down to
    # 16 + a multiple of 4 (0.25 -> 16, 0.375 -> 20, 0.5 -> 24, 0.625 -> 28).
    assert at == [16, 16, 16, 20, 24, 28, 32, 32]
    jump = [train.progressive_resolution(e, 46, 24, 32, 0.63, 0.63) for e in range(46)]
    assert jump == [24] * 29 + [32] * 17
    assert [train.progressive_resolution(e, 4, 32, 32) for e in range(4)] == [32] * 4
    assert [train.progressive_resolution(e, 3, 20, 32, 0.0, 0.0) for e in range(3)] == [32] * 3
    for kwargs, name in [({"epoch": 8}, "epoch"), ({"start": 40}, "start"),
                         ({"ramp_start": 0.9}, "ramp_start"), ({"multiple": 0}, "multiple")]:
        args = {"epoch": 0, "epochs": 8, "start": 16, "end": 32, "ramp_start": 0.25,
                "ramp_end": 0.75, **kwargs}
        with pytest.raises(ValueError, match=name):
            train.progressive_resolution(**args)


def test_fit_with_progressive_resizing_trains_small_first_and_tests_at_full_size(tmp_path):
    model, seen = tiny_model(0), []
    forward = model.forward

    def spy(x):
        seen.append((model.training, x.shape[-1]))
        return forward(x)
    model.forward = spy
    config = tiny_config(tmp_path, epochs=4, start_resolution=16, resolution_ramp=(0.25, 0.75))
    history = fit(config, model=model, data=colour_data(64, 16), progress=False)
    assert [row["resolution"] for row in history] == [16, 16, 24, 32]
    assert sorted({size for training, size in seen if training}) == [16, 24, 32]
    assert {size for training, size in seen if not training} == {32}  # tests at full size
    assert [row["resolution"] for row in train.read_history(tmp_path / "history.csv")] == \
        [16, 16, 24, 32]
    saved = train.read_config(tmp_path / "last.npz")
    assert saved.start_resolution == 16 and saved.resolution_ramp == (0.25, 0.75)
    with pytest.raises(ValueError, match="cannot resume.*start_resolution 16 -> 0"):
        fit(tiny_config(tmp_path, epochs=5), model=tiny_model(0), data=colour_data(64, 16),
            resume=True, progress=False)


@pytest.mark.parametrize("settings, match", [
    ({"start_resolution": 40}, "start_resolution"), ({"start_resolution": 4}, "start_resolution"),
    ({"start_resolution": 24, "resolution": 20}, "start_resolution"),
    ({"resolution_ramp": (0.8, 0.2)}, "resolution_ramp"),
    ({"resolution_ramp": (0.5,)}, "resolution_ramp")])
def test_bad_progressive_resizing_settings_are_refused_up_front(settings, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**settings)


def test_fit_calls_on_epoch_with_each_rows_once_it_is_on_disk(tmp_path):
    rows = []

    def on_epoch(row):
        assert train.read_history(tmp_path / "history.csv")[-1]["epoch"] == row["epoch"]
        rows.append(row)
    history = fit(tiny_config(tmp_path, epochs=2), model=tiny_model(0), data=colour_data(64, 16),
                  progress=False, on_epoch=on_epoch)
    assert rows == history


@pytest.mark.parametrize("field, value", [
    ("width", "0.5"), ("lr", float("inf")), ("weight_decay", float("nan")), ("momentum", None),
    ("label_smoothing", "0.1"), ("nesterov", "false"), ("augment", "no"), ("cifar", 1),
    ("model", ["v1"]), ("schedule", 3), ("time_budget", "60")])
def test_a_setting_of_the_wrong_kind_is_named_with_what_came(field, value):
    with pytest.raises(ValueError, match=f"^{field}: expected .*got {re.escape(repr(value))}$"):
        TrainConfig(**{field: value})


def test_evaluate_and_confusion_matrix_refuse_bad_arguments_by_name():
    model, data = tiny_model(0), colour_data(n_train=32, n_test=40)
    with pytest.raises(ValueError, match="batch_size: expected an integer >= 1, got 0"):
        train.evaluate(model, data.x_test, data.y_test, batch_size=0)
    with pytest.raises(ValueError, match="as many labels as images \\(40\\), got 39"):
        train.evaluate(model, data.x_test, data.y_test[:39])
    with pytest.raises(ValueError, match="y_true in 0..9, got values from 0 to 12"):
        train.confusion_matrix([0, 12], [0, 1])
    with pytest.raises(ValueError, match="shapes \\(1,\\) and \\(2,\\)"):
        train.confusion_matrix([0], [0, 1])
