"""Tests for minimobile.sweep and `minimobile sweep`: grid checks (no Ray needed), the message
without Ray, a trial's resume, and a tiny sweep of two trials through a local Ray instance
(skipped without the sweep extra)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import minimobile
from minimobile import data, sweep
from minimobile.cli import main
from minimobile.errors import ConfigError
from minimobile.train import TrainConfig, fit
from minimobile.train import read_history as train_history

REPO = Path(__file__).resolve().parents[1]  # subprocesses run this checkout's minimobile

TINY = ["--set", "batch_size=32", "--set", "limit_train=64", "--set", "limit_test=32"]


@pytest.fixture(scope="module")
def fake_data(tmp_path_factory):
    return data.write_fake_cifar10(tmp_path_factory.mktemp("data"), n_train_per_batch=16,
                                   n_test=32)


def test_the_grid_makes_one_config_per_network_width_resolution_and_seed(tmp_path):
    grid = sweep.Grid(models=["v1", "v2"], widths=[0.25, 0.5], resolutions=[24, 32],
                      seeds=[0, 1], epochs=3, options={"batch_size": 64, "ema": 0.99})
    configs = sweep.trial_configs(grid, tmp_path)
    assert len(configs) == 16
    assert all(c.epochs == 3 and c.batch_size == 64 and c.ema == 0.99 for c in configs)
    names = [Path(c.out).name for c in configs]
    assert names[:3] == ["v1-w0.25-r24-s0", "v1-w0.25-r24-s1", "v1-w0.25-r32-s0"]
    assert all(Path(c.out).parent == tmp_path.resolve() / "trials" for c in configs)
    fast = sweep.trial_configs(sweep.Grid(recipe="fast", options={"cutout": 4}), tmp_path)
    assert fast[0].ema == 0.999 and fast[0].cutout == 4 and fast[0].epochs == 30


@pytest.mark.parametrize("grid, match", [
    ({"models": ["v1", "v4"]}, "unknown network 'v4'"),
    ({"widths": [0.5, 0]}, "width 0 out of range"),
    ({"widths": [5.0]}, "width 5.0 out of range"),
    ({"resolutions": [32, 4]}, "resolution 4 out of range"),
    ({"resolutions": [2048]}, "resolution 2048 out of range"),
    ({"resolutions": [24.5]}, "resolution 24.5 out of range"),
    ({"options": {"batchsize": 64}}, "unknown option 'batchsize'"),
    ({"options": {"width": 0.5}}, "option 'width' is set by the grid"),
    ({"options": {"tta": "rotate"}}, "tta: expected one of"),
    ({"epochs": 0}, "epochs: expected an integer >= 1"),
    ({"recipe": "slowest"}, "unknown recipe"),
    ({"seeds": [0, 0]}, "repeats"),
])
def test_a_bad_grid_is_one_config_error_before_any_trial(grid, match, tmp_path):
    with pytest.raises(ConfigError, match=match):
        sweep.trial_configs(sweep.Grid(**grid), tmp_path)
    assert not (tmp_path / "trials").exists()


@pytest.mark.parametrize("argv", [["--models", "v9"], ["--widths", "0.25,9"],
                                  ["--resolutions", "4"], ["--set", "nonsense=1"],
                                  ["--widths", "a"]])
def test_a_bad_grid_on_the_command_line_exits_2_in_one_line(argv, tmp_path, capsys):
    pytest.importorskip("ray")  # without Ray the command stops earlier, at the install hint
    assert main(["sweep", *argv, "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("minimobile sweep: error: ") and err[0].startswith("usage:")
    assert not (tmp_path / "s").exists()


def test_a_grid_file_is_read_and_command_line_options_override_it(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('models = ["v1", "v3-small"]\nwidths = [0.25, 0.5]\nresolutions = [24]\n'
                    'epochs = 2\n[options]\nbatch_size = 64\nlimit_train = 128\n')
    grid = sweep.load_grid(path, widths=[1.0], epochs=None, options={"batch_size": 32})
    assert grid.models == ["v1", "v3-small"] and grid.widths == [1.0] and grid.epochs == 2
    assert grid.options == {"batch_size": 32, "limit_train": 128}
    path.write_text("models = ['v1']\nwidth = [0.5]\n")
    with pytest.raises(ConfigError, match="unknown keys width"):
        sweep.load_grid(path)
    path.write_text("models = [v1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        sweep.load_grid(path)


def test_also_tables_add_cross_products_at_the_same_epochs_and_options(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('models = ["v1"]\nwidths = [1.0, 0.5]\nresolutions = [32]\nepochs = 3\n'
                    '[options]\nbatch_size = 64\n'
                    '[[also]]\nwidths = [1.0]\nresolutions = [24, 16]\n'
                    '[[also]]\nmodels = ["v3-small"]\n')
    configs = sweep.trial_configs(sweep.load_grid(path), tmp_path)
    assert [Path(c.out).name for c in configs] == [
        "v1-w1-r32-s0", "v1-w0.5-r32-s0", "v1-w1-r24-s0", "v1-w1-r16-s0",
        "v3-small-w1-r32-s0", "v3-small-w0.5-r32-s0"]
    assert all(c.epochs == 3 and c.batch_size == 64 for c in configs)
    with pytest.raises(ConfigError, match=r"repeats .*\(v1-w1-r32-s0\)"):
        sweep.trial_configs(sweep.Grid(widths=[1.0], also=[{"resolutions": [24, 32]}]),
                            tmp_path)
    with pytest.raises(ConfigError, match="also: expected tables of"):
        sweep.trial_configs(sweep.Grid(also=[{"epochs": 2}]), tmp_path)
    with pytest.raises(ConfigError, match="width 9 out of range"):
        sweep.trial_configs(sweep.Grid(also=[{"widths": [9]}]), tmp_path)


def test_without_ray_the_sweep_says_how_to_install_it_and_exits_2(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.tune", None)
    assert main(["sweep", "--models", "v1"]) == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[sweep]"' in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ImportError, match="ray"):
        sweep.run(sweep.Grid(), "unused")


def test_a_restarted_trial_reports_its_done_epochs_again_then_resumes_from_last_npz(
        fake_data, tmp_path, monkeypatch):
    tune = pytest.importorskip("ray.tune")
    reported = []
    monkeypatch.setattr(tune, "report", lambda metrics: reported.append(metrics))
    config = TrainConfig(model="v1", width=0.25, epochs=2, batch_size=32, limit_train=64,
                         limit_test=32, data=str(fake_data), out=str(tmp_path / "t"),
                         resolution=16)
    fit(TrainConfig(**{**config.__dict__, "epochs": 1}), progress=False)  # then interrupted
    sweep.run_trial({"config": config.__dict__, "cpus": 1})
    assert [r["epoch"] for r in reported] == [1, 2]
    info = json.loads((tmp_path / "t" / sweep.TRIAL_INFO).read_text())
    assert info["resumed"] and info["threads"] == 1


def test_ray_is_given_the_trials_most_multiply_adds_first(fake_data, tmp_path, monkeypatch):
    tune = pytest.importorskip("ray.tune")
    given = []

    class FakeTuner:  # stands in for Ray: records the order, trains nothing
        can_restore = staticmethod(lambda path: False)

        def __init__(self, trainable, param_space, **kwargs):
            given.extend(Path(c["out"]).name for c in param_space["config"]["grid_search"])

        def fit(self):
            return type("Results", (list,), {"num_terminated": len(given), "num_errors": 0})()

    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    monkeypatch.setattr(sweep, "start_ray", lambda address, num_cpus: False)
    grid = sweep.Grid(widths=[0.25, 1.0], resolutions=[32], epochs=1,
                      also=[{"widths": [1.0], "resolutions": [16]}],
                      options={"data": str(fake_data)})
    rows = sweep.run(grid, tmp_path / "s")
    assert given == ["v1-w1-r32-s0", "v1-w1-r16-s0", "v1-w0.25-r32-s0"]
    assert [(r["width"], r["resolution"]) for r in rows] == [(0.25, 32), (1.0, 32), (1.0, 16)]


@pytest.mark.slow
def test_a_tiny_sweep_runs_two_trials_on_local_ray_and_writes_the_csv_and_the_plot(
        fake_data, tmp_path, capsys):
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    argv = ["sweep", "--models", "v1", "--widths", "0.25,0.5", "--resolutions", "16",
            "--epochs", "1", "--data", str(fake_data), *TINY, "--out", str(out),
            "--num-cpus", "2", "--cpus-per-trial", "1", "--quiet"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    rows = sweep.read_results(out / sweep.RESULTS_CSV)
    assert [(r["network"], r["width"], r["resolution"]) for r in rows] == [
        ("v1", 0.25, 16), ("v1", 0.5, 16)]
    for r in rows:
        assert r["status"] == "done" and r["epochs_run"] == r["epochs"] == 1
        assert 0 <= r["accuracy"] <= 1 and r["seconds_per_epoch"] > 0 and r["threads"] == 1
        assert (r["params"], r["macs"]) == sweep.cost_of("v1", r["width"], 16)
        info = json.loads((out / r["folder"] / sweep.TRIAL_INFO).read_text())
        # The Ray workers imported the same minimobile as this test, not another install.
        assert Path(info["minimobile"]) == Path(minimobile.__file__).resolve().parent
    assert rows[1]["macs"] > rows[0]["macs"] and rows[1]["params"] > rows[0]["params"]
    assert (out / sweep.PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # Run again: Tune restores the finished sweep, nothing is retrained, the CSV is the same.
    before = (out / sweep.RESULTS_CSV).read_text()
    assert main(argv) == 0
    assert (out / sweep.RESULTS_CSV).read_text() == before
    assert main([*argv[:-1], "--scheduler", "asha", "--quiet"]) == 2
    assert "holds another sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_a_sweep_interrupted_by_ctrl_c_resumes_its_unfinished_trials_from_their_last_epoch(
        fake_data, tmp_path):
    pytest.importorskip("ray.tune")
    out = tmp_path / "sweep"
    argv = [sys.executable, "-m", "minimobile", "sweep", "--models", "v1", "--widths",
            "0.25,0.5", "--resolutions", "16", "--epochs", "40", "--data", str(fake_data),
            *TINY, "--out", str(out), "--num-cpus", "2", "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    sweep_process = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
    # Interrupt once both trials have finished an epoch, so both have a checkpoint to resume
    # from. On a busy machine Ray and the trials start slowly: wait up to 5 minutes for that
    # (interrupting earlier would leave nothing to resume and the test would prove nothing).
    deadline = time.monotonic() + 300
    histories = [out / "trials" / name / "history.csv" for name in ("v1-w0.25-r16-s0",
                                                                   "v1-w0.5-r16-s0")]
    while not all(h.exists() for h in histories):
        assert time.monotonic() < deadline, "no trial finished an epoch within 5 minutes"
        time.sleep(0.2)
        assert sweep_process.poll() is None, sweep_process.communicate()[1][-2000:]
    sweep_process.send_signal(signal.SIGINT)
    _, err = sweep_process.communicate(timeout=120)
    assert sweep_process.returncode == 130, err[-2000:]
    assert "run the same command again to resume" in err
    rows = sweep.read_results(out / sweep.RESULTS_CSV)
    assert any(r["status"] == "unfinished" and r["epochs_run"] < 40 for r in rows)
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = sweep.read_results(out / sweep.RESULTS_CSV)
    assert all(r["status"] == "done" and r["epochs_run"] == 40 for r in rows)
    for r in rows:
        info = json.loads((out / r["folder"] / sweep.TRIAL_INFO).read_text())
        history = train_history(out / r["folder"] / "history.csv")
        assert [row["epoch"] for row in history] == list(range(1, 41))
        assert info["resumed"] or r["overhead_seconds"] is not None
    assert any(json.loads((out / r["folder"] / sweep.TRIAL_INFO).read_text())["resumed"]
               for r in rows)


def test_grid_files_with_values_of_the_wrong_kind_get_one_line_errors(tmp_path):
    path = tmp_path / "grid.toml"
    for text, message in (("options = 5\n", "expected options to be a table"),
                          ('recipe = ["fast"]\n', "expected recipe to be a name"),
                          ('models = [["v1"]]\n', "unknown network")):
        path.write_text(text)
        with pytest.raises(ConfigError, match=message):
            sweep.trial_configs(sweep.load_grid(path), tmp_path / "out")
    path.write_bytes(b"models = ['v1']\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        sweep.load_grid(path)


def test_failed_trials_end_in_one_error_line_that_names_them(monkeypatch, tmp_path, capsys):
    """Ray prints each failed trial's traceback as it happens; the command then ends as every
    other failure does, in one `minimobile: error:` line, with the failed folders named."""
    rows = [{"folder": "trials/v1-w0.25-r32-s0", "status": "done"},
            {"folder": "trials/v1-w0.5-r32-s0", "status": "error"}]
    monkeypatch.setattr(sweep, "require_ray", lambda: None)
    monkeypatch.setattr(sweep, "run", lambda *args, **kwargs: rows)
    monkeypatch.setattr(sweep, "format_results", lambda rows: "the results table")
    out = tmp_path / "sweep"
    assert main(["sweep", "--models", "v1", "--widths", "0.25,0.5", "--epochs", "1",
                 "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"minimobile: error: 1 of 2 trials failed (trials/v1-w0.5-r32-s0, under "
                   f"{out}; Ray printed each one's error above); run the same command again "
                   "to retry them"]
