import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from minimobile import checkpoint, cli, data, kernels, train
from minimobile.cli import main
from minimobile.errors import CorruptHistoryError, NonFiniteError, SettingError

REPO = Path(__file__).resolve().parents[1]  # subprocesses run this checkout's minimobile

# The smallest real run: V1 at width 0.25 on 64 fake images, one epoch of two batches.
TINY_RUN = ["--model", "v1", "--width", "0.25", "--epochs", "1", "--batch-size", "32",
            "--limit-train", "64", "--limit-test", "32", "--no-progress"]


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    return data.write_fake_cifar10(tmp_path_factory.mktemp("data"), n_train_per_batch=16,
                                   n_test=40)


@pytest.fixture(scope="module")
def trained_run(fake_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    assert main(["train", *TINY_RUN, "--data", str(fake_data), "--out", str(out)]) == 0
    return out


def test_help_lists_the_commands_and_exits_0(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(command in text for command in ("train", "eval", "plot", "summary"))
    assert main(["train", "--help"]) == 0
    assert "--resume" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["train", "--model", "v4"],
                                  ["train", "--width", "-1"], ["train", "--epochs", "two"],
                                  ["train", "--label-smoothing", "1"], ["summary"],
                                  ["eval"]])
def test_bad_arguments_print_the_usage_and_exit_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_missing_data_prints_the_loaders_message_and_exits_1(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(data, "_urlopen", offline)
    assert main(["train", *TINY_RUN, "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "CIFAR-10 not found" in err and "MINIMOBILE_DATA" in err and "Traceback" not in err


def test_train_writes_checkpoints_and_history(trained_run):
    assert {"last.npz", "best.npz", "history.csv"} <= {p.name for p in trained_run.iterdir()}
    (row,) = train.read_history(trained_run / "history.csv")
    assert row["epoch"] == 1 and row["step"] == 2 and row["test_acc"] is not None
    config = train.read_config(trained_run / "last.npz")
    assert (config.model, config.width, config.limit_train) == ("v1", 0.25, 64)


def test_train_resume_takes_the_settings_from_the_checkpoint(trained_run, tmp_path, capsys):
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("last.npz", "best.npz", "history.csv"):
        (out / name).write_bytes((trained_run / name).read_bytes())
    # Only --epochs is given: model, width, data, limits and lr (0.1 * 32 / 128) come from
    # last.npz.
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2", "--no-progress"]) == 0
    assert [row["epoch"] for row in train.read_history(out / "history.csv")] == [1, 2]
    assert main(["train", "--out", str(out), "--resume", "--lr", "0.5"]) == 2
    assert "lr 0.025 -> 0.5" in capsys.readouterr().err


def test_resume_without_a_checkpoint_exits_1(tmp_path, capsys):
    assert main(["train", "--out", str(tmp_path), "--resume"]) == 1
    assert "cannot resume" in capsys.readouterr().err


def test_eval_prints_per_class_accuracy_and_saves_a_confusion_matrix(trained_run, fake_data,
                                                                     tmp_path, capsys):
    assert main(["eval", str(trained_run / "best.npz"), "--data", str(fake_data),
                 "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "airplane" in out and "confusion matrix" in out
    png = tmp_path / "best_confusion_matrix.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eval_of_a_corrupt_checkpoint_exits_1_naming_it(tmp_path, capsys):
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    assert main(["eval", str(tmp_path / "broken.npz")]) == 1
    err = capsys.readouterr().err
    assert "broken.npz" in err and "Traceback" not in err


def test_plot_saves_loss_and_accuracy_curves(trained_run, tmp_path):
    assert main(["plot", str(trained_run), "--out", str(tmp_path)]) == 0
    for name in ("loss.png", "accuracy.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_plot_of_a_folder_without_history_exits_1(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 1
    assert "history.csv does not exist" in capsys.readouterr().err


def test_summary_prints_the_per_layer_table_with_totals(capsys):
    assert main(["summary", "v3-small", "--width", "0.5", "--cifar"]) == 0
    out = capsys.readouterr().out
    assert "total at 3x32x32" in out and "features.0.0" in out


@pytest.mark.parametrize("error, code", [(KeyboardInterrupt, 130),
                                         (NonFiniteError("loss is nan"), 1)])
def test_ctrl_c_exits_130_and_divergence_exits_1(error, code, tmp_path, monkeypatch, capsys):
    def failing_fit(*args, **kwargs):
        raise error
    monkeypatch.setattr(cli, "fit", failing_fit)
    assert main(["train", "--out", str(tmp_path)]) == code
    assert "Traceback" not in capsys.readouterr().err


def test_python_dash_m_minimobile_runs_the_command_line():
    done = subprocess.run([sys.executable, "-m", "minimobile", "--version"],
                          capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 0 and "minimobile" in done.stdout


def test_the_checkpoint_is_readable_by_load_model(trained_run):
    model = train.build_model("v1", width=0.25, seed=1)
    meta = checkpoint.load_model(trained_run / "last.npz", model)
    assert meta["epoch"] == 1


def test_export_writes_an_onnx_file_that_onnxruntime_runs_like_the_checkpoint(trained_run,
                                                                              tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    import numpy as np

    from minimobile.gradcheck import relative_error
    from minimobile.layers import no_grad
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained_run / "best.npz"), str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    onnx.checker.check_model(onnx.load(str(out)))
    model = train.build_model("v1", width=0.25, seed=123)
    checkpoint.load_model(trained_run / "best.npz", model)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with no_grad():
        expected = model.eval().forward(x)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert relative_error(expected, session.run(None, {"input": x})[0]) < 1e-4


@pytest.mark.parametrize("argv", [["export"], ["export", "only-one.npz"],
                                  ["export", "a.npz", "b.onnx", "--resolution", "0"]])
def test_export_with_bad_arguments_prints_the_usage_and_exits_2(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err


def test_export_of_a_missing_or_corrupt_checkpoint_exits_1(tmp_path, capsys):
    assert main(["export", str(tmp_path / "absent.npz"), str(tmp_path / "m.onnx")]) == 1
    (tmp_path / "broken.npz").write_bytes(b"garbage")
    assert main(["export", str(tmp_path / "broken.npz"), str(tmp_path / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "absent.npz" in err and "broken.npz" in err and "Traceback" not in err
    assert not (tmp_path / "m.onnx").exists()


def one_line_error(capsys):
    """The stderr of a command that failed: one line, no traceback."""
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and "\n" not in err, err
    return err


def copy_run(run, dest):
    dest.mkdir(parents=True)
    for name in ("last.npz", "best.npz", "history.csv"):
        (dest / name).write_bytes((run / name).read_bytes())
    return dest


def nan_checkpoint(run, path):
    arrays, meta = checkpoint.load(run / "best.npz")
    arrays["model/features.0.0.weight"][0, 0, 0, 0] = float("nan")
    checkpoint.save(path, arrays, meta)
    return path


def test_train_refuses_a_folder_holding_a_run_without_resume_or_overwrite(trained_run, fake_data,
                                                                          tmp_path, capsys):
    out = copy_run(trained_run, tmp_path / "run")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = ["train", *TINY_RUN, "--model", "v2", "--data", str(fake_data), "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert main(argv + ["--resume", "--overwrite"]) == 2
    assert main(argv + ["--overwrite"]) == 0
    assert train.read_config(out / "last.npz").model == "v2"


def test_an_output_folder_under_a_file_fails_at_once_in_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    # The data does not exist either: the folder is checked first, before any loading.
    assert main(["train", *TINY_RUN, "--data", str(tmp_path / "absent"),
                 "--out", str(tmp_path / "file" / "run")]) == 1
    err = one_line_error(capsys)
    assert "is under a file" in err and "choose another --out" in err


def test_a_batch_larger_than_the_training_set_is_a_usage_error(fake_data, tmp_path, capsys):
    assert main(["train", *TINY_RUN, "--batch-size", "100", "--data", str(fake_data),
                 "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--batch-size 100 is larger than the 64 training images" in err
    assert "Traceback" not in err


def test_resume_of_a_checkpoint_that_does_not_fit_exits_1_in_one_line(trained_run, tmp_path,
                                                                     capsys):
    out = copy_run(trained_run, tmp_path / "run")
    arrays, meta = checkpoint.load(out / "last.npz")
    del arrays["model/classifier.1.weight"]
    checkpoint.save(out / "last.npz", arrays, meta)
    assert main(["train", "--out", str(out), "--resume", "--epochs", "2"]) == 1
    err = one_line_error(capsys)
    assert "last.npz" in err and "classifier.1.weight" in err


def test_eval_of_a_checkpoint_with_an_invalid_config_exits_1_in_one_line(trained_run, tmp_path,
                                                                        capsys):
    arrays, meta = checkpoint.load(trained_run / "best.npz")
    meta["config"]["width"] = "wide"
    checkpoint.save(tmp_path / "edited.npz", arrays, meta)
    assert main(["eval", str(tmp_path / "edited.npz")]) == 1
    assert "edited.npz holds an invalid training config" in one_line_error(capsys)


def test_eval_of_a_csv_exits_1_without_numpys_pickle_advice(trained_run, capsys):
    assert main(["eval", str(trained_run / "history.csv")]) == 1
    err = one_line_error(capsys)
    assert "is not an .npz checkpoint" in err and "pickle" not in err


def test_plot_takes_a_checkpoint_for_its_run_folder(trained_run, tmp_path, capsys):
    assert main(["plot", str(trained_run / "best.npz"), "--out", str(tmp_path)]) == 0
    assert (tmp_path / "loss.png").exists()


def test_plot_of_a_malformed_history_exits_1_naming_the_line(tmp_path, capsys):
    (tmp_path / "history.csv").write_text("epoch,step,train_loss,train_acc,test_loss,test_acc\n"
                                          "1,2,zero,0.1,,\n")
    assert main(["plot", str(tmp_path)]) == 1
    assert "history.csv, line 2" in one_line_error(capsys)


def test_export_refuses_nan_weights_and_writes_nothing(trained_run, tmp_path, capsys):
    pytest.importorskip("onnx")
    bad = nan_checkpoint(trained_run, tmp_path / "nan.npz")
    assert main(["export", str(bad), str(tmp_path / "m.onnx")]) == 1
    assert "NaN" in one_line_error(capsys)
    assert not (tmp_path / "m.onnx").exists()


def test_quantize_is_a_subcommand_that_reports_and_refuses_nan_weights(trained_run, fake_data,
                                                                      tmp_path, capsys):
    assert main(["quantize", str(trained_run / "best.npz"), "--data", str(fake_data),
                 "--calibration", "8", "--limit-test", "16"]) == 0
    out = capsys.readouterr().out
    assert "accuracy   float32" in out and "int8" in out
    bad = nan_checkpoint(trained_run, tmp_path / "nan.npz")
    assert main(["quantize", str(bad), "--data", str(fake_data), "--calibration", "8"]) == 1
    assert "NaN" in one_line_error(capsys)


@pytest.mark.parametrize("option", ["--calibration", "--limit-test", "--batch-size"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_quantize_with_bad_arguments_prints_the_usage_and_exits_2(option, value, capsys):
    assert main(["quantize", "best.npz", option, value]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and option in err and "Traceback" not in err


def test_python_dash_m_minimobile_quantize_is_the_same_command():
    done = subprocess.run([sys.executable, "-m", "minimobile.quantize", "x.npz",
                           "--calibration", "0"], capture_output=True, text=True, timeout=120,
                          cwd=REPO)
    assert done.returncode == 2 and "minimobile quantize" in done.stderr


@pytest.mark.parametrize("argv", [["summary", "v1", "--width", "100"],
                                  ["summary", "v1", "--resolution", "100000"],
                                  ["train", "--width", "5"], ["train", "--resolution", "7"],
                                  ["train", "--start-resolution", "7"],
                                  ["train", "--start-resolution", "40"],
                                  ["train", "--resolution-ramp", "0.8,0.2"],
                                  ["train", "--resolution-ramp", "half"],
                                  ["eval", "x.npz", "--resolution", "2000"]])
def test_widths_and_resolutions_beyond_a_sane_range_are_usage_errors(argv, capsys):
    assert main(argv) == 2
    assert "expected" in capsys.readouterr().err


def test_resuming_a_finished_run_says_there_is_nothing_to_do(trained_run, tmp_path, capsys):
    out = copy_run(trained_run, tmp_path / "run")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "already finished epoch 1 of 1: nothing to do" in capsys.readouterr().err


def test_resuming_a_finished_run_repairs_a_cut_history(trained_run, tmp_path, capsys):
    """The advice of read_history's error, taken: last.npz's copy of the history replaces an
    edited or cut history.csv, and the run is not trained further."""
    out = copy_run(trained_run, tmp_path / "run")
    whole = (out / "history.csv").read_text()
    (out / "history.csv").write_text(whole[:len(whole) - 20])
    with pytest.raises(CorruptHistoryError):
        train.read_history(out / "history.csv")
    assert main(["train", "--out", str(out), "--resume", "--no-progress"]) == 0
    assert "history.csv rewritten from last.npz" in capsys.readouterr().err
    assert (out / "history.csv").read_text() == whole


def test_no_progress_still_prints_one_line_per_epoch(fake_data, tmp_path, capsys):
    assert main(["train", *TINY_RUN, "--epochs", "2", "--data", str(fake_data),
                 "--out", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/2  train loss" in out and "epoch 2/2  train loss" in out


def test_ctrl_c_while_the_process_shuts_down_prints_no_traceback():
    # An atexit hook stands in for a Ctrl-C in the last fraction of a second of a command.
    script = ("import atexit, os, signal, time\n"
              "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.5)))\n"
              "import sys; from minimobile.cli import main\n"
              "sys.argv = ['minimobile', '--version']\n"
              "sys.exit(main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, cwd=REPO)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


def test_outputs_that_cannot_be_written_fail_in_one_line_before_any_work(trained_run, tmp_path,
                                                                        monkeypatch, capsys):
    def never(*args, **kwargs):
        raise AssertionError("the data was loaded before the output was checked")
    monkeypatch.setattr(cli, "load_cifar10", never)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["eval", str(trained_run / "best.npz"), "--out", str(blocker)]) == 1
    assert "is a file, not a folder" in one_line_error(capsys)
    assert main(["plot", str(trained_run), "--out", str(blocker / "plots")]) == 1
    assert "is under a file" in one_line_error(capsys)
    pytest.importorskip("onnx")
    assert main(["export", str(trained_run / "best.npz"), str(tmp_path)]) == 1
    assert "is a folder: give a file name" in one_line_error(capsys)
    assert main(["export", str(trained_run / "best.npz"), str(blocker / "m.onnx")]) == 1
    assert "a folder on that path is a file" in one_line_error(capsys)


def test_train_help_lists_the_recipes_and_the_techniques(capsys):
    assert main(["train", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--recipe fast = --model=v1" in text
    assert "--recipe ninety = --model=v3-small" in text and "--batch-size=128" in text
    assert all(option in text for option in ("--ema DECAY", "--tta", "--flip", "--cutout SIZE",
                                             "--decay-norm-and-bias", "--decay-depthwise",
                                             "--crop-padding PX", "--tta-final-only",
                                             "--whiten-stem", "--prune R", "--prune-until F"))


@pytest.mark.parametrize("argv", [["--cutout", "33"], ["--cutout", "-1"], ["--ema", "1"],
                                  ["--crop-padding", "17"], ["--crop-padding", "-1"],
                                  ["--tta", "rotate"], ["--flip", "sometimes"],
                                  ["--recipe", "slowest"], ["--schedule", "triangle"],
                                  ["--prune", "1"], ["--prune-until", "1.5"]])
def test_bad_technique_options_are_usage_errors_in_one_line(argv, capsys):
    assert main(["train", *argv]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "Traceback" not in err and len(err.splitlines()) == 2


def test_the_ninety_recipe_is_the_command_of_the_run_that_reached_90_percent():
    # results/README.md's command for v3s-w1.25-e45-cp4 (90.17 % in 1 h 40 min), without
    # --data, --out and --no-progress: the recipe must train exactly that run.
    measured = ("--model v3-small --width 1.25 --epochs 45 --time-budget 120 --batch-size 128 "
                "--label-smoothing 0.2 --schedule linear --warmup-epochs 2 --ema 0.999 "
                "--flip alternate --tta flip,translate --tta-final-only --crop-padding 4 "
                "--eval-every 15").split()
    parser = cli.build_parser()
    explicit = cli.given_train_settings(parser.parse_args(["train", *measured]))
    recipe = cli.given_train_settings(parser.parse_args(["train", "--recipe", "ninety"]))
    assert recipe == explicit
    assert train.TrainConfig(**recipe) == train.recipe_config("ninety")
    recorded = (Path(__file__).parents[1] / "results" / "README.md").read_text(encoding="utf-8")
    assert "python -m minimobile train " + " ".join(measured) + " --data" in recorded


def test_a_recipe_sets_its_bundle_and_explicit_options_override_it(fake_data, tmp_path, capsys):
    out = tmp_path / "fast"
    assert main(["train", "--recipe", "fast", *TINY_RUN, "--cutout", "4", "--tta-final-only",
                 "--whiten-stem", "--prune", "0.3", "--data", str(fake_data), "--out",
                 str(out)]) == 0
    config = train.read_config(out / "last.npz")
    assert (config.model, config.width, config.epochs, config.cutout) == ("v1", 0.25, 1, 4)
    assert config.tta_final_only  # the one epoch is the last, so it is tested with the TTA
    assert config.whiten_stem and config.prune == 0.3
    assert (config.ema, config.tta, config.flip, config.schedule, config.label_smoothing) == (
        0.999, "flip,translate", "alternate", "linear", 0.2)
    assert any(key.startswith("ema/") for key in checkpoint.load(out / "last.npz")[0])
    capsys.readouterr()
    assert main(["eval", str(out / "best.npz"), "--data", str(fake_data), "--tta", "flip",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "test-time augmentation flip" in printed and "EMA weights (decay 0.999)" in printed
    # Without --tta, eval uses the run's own, so it reproduces the accuracy training logged.
    assert main(["eval", str(out / "best.npz"), "--data", str(fake_data), "--limit-test", "32",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    (row,) = train.read_history(out / "history.csv")
    assert "flip,translate" in printed and f"test accuracy {row['test_acc']:.4f}" in printed
    # --weights live: the weights the optimiser trained, saved as the checkpoint's model/ ones.
    arrays = checkpoint.load(out / "best.npz")[0]
    _, live = train.model_from_checkpoint(out / "best.npz", ema=False)
    assert all(np.array_equal(v, arrays["model/" + k]) for k, v in live.state_dict().items())
    assert any(not np.array_equal(arrays["model/" + k], arrays["ema/" + k])
               for k in live.state_dict())
    test = data.load_cifar10(fake_data, download=False)
    expected = train.evaluate(live, test.x_test, test.y_test, tta="flip,translate",
                              label_smoothing=0.2)
    assert main(["eval", str(out / "best.npz"), "--data", str(fake_data), "--weights", "live",
                 "--out", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "live weights (not the EMA)" in printed and "EMA weights" not in printed
    assert f"test accuracy {expected.accuracy:.4f}, loss {expected.loss:.4f}" in printed
    assert (tmp_path / "best_live_confusion_matrix.png").exists()


def test_train_at_resolution_24_and_eval_takes_the_runs_resolution(fake_data, tmp_path, capsys):
    out = tmp_path / "r24"
    assert main(["train", *TINY_RUN, "--resolution", "24", "--data", str(fake_data),
                 "--out", str(out)]) == 0
    assert train.read_config(out / "last.npz").resolution == 24
    capsys.readouterr()
    assert main(["eval", str(out / "last.npz"), "--data", str(fake_data)]) == 0
    assert "40 test images at 24x24" in capsys.readouterr().out
    assert main(["eval", str(out / "last.npz"), "--data", str(fake_data),
                 "--resolution", "32"]) == 0
    assert "at 24x24" not in capsys.readouterr().out


@pytest.mark.parametrize("variable, value, message", [
    ("MINIMOBILE_KERNELS", "quick", "MINIMOBILE_KERNELS: expected one of loops, simple, fast, "
                                    "got 'quick'"),
    ("MINIMOBILE_BLAS_THREADS", "two", "MINIMOBILE_BLAS_THREADS: expected a positive integer, "
                                       "got 'two'"),
    ("MINIMOBILE_BLAS_THREADS", "0", "MINIMOBILE_BLAS_THREADS: expected a positive integer, "
                                     "got '0'"),
])
def test_a_bad_environment_variable_is_one_line_exit_2_before_any_work(variable, value, message,
                                                                      tmp_path):
    env = dict(os.environ, **{variable: value})
    done = subprocess.run([sys.executable, "-m", "minimobile", "train", "--limit-train", "8",
                           "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == f"minimobile: error: {message}"
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "r").exists()
    # --help still works: the check runs once the command line is parsed.
    helped = subprocess.run([sys.executable, "-m", "minimobile", "--help"], capture_output=True,
                            text=True, env=env, timeout=120, cwd=REPO)
    assert helped.returncode == 0 and "usage" in helped.stdout, helped.stderr


def test_a_kept_setting_error_stops_train_fit_before_the_data(fake_data, tmp_path, monkeypatch,
                                                              capsys):
    """The same check, in process: the command line and train.fit stop before any work (the
    data, the run folder), the command line with exit code 2 in one line."""
    def never(*args, **kwargs):
        raise AssertionError("the data was loaded before the settings were checked")
    monkeypatch.setattr(kernels, "_setting_error", SettingError("MINIMOBILE_KERNELS: bad"))
    monkeypatch.setattr(cli, "load_cifar10", never)
    monkeypatch.setattr(train, "load_cifar10", never)
    assert main(["train", *TINY_RUN, "--data", str(fake_data), "--out", str(tmp_path / "r")]) == 2
    assert one_line_error(capsys) == "minimobile: error: MINIMOBILE_KERNELS: bad"
    with pytest.raises(SettingError, match="MINIMOBILE_KERNELS: bad"):
        train.fit(train.TrainConfig(out=str(tmp_path / "r2"), data=str(fake_data)))
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()
