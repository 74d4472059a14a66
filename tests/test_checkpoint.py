import numpy as np
import pytest

import minimobile as mm
from minimobile import checkpoint
from minimobile.checkpoint import CorruptCheckpointError


def small_model(seed):
    rng = np.random.default_rng(seed)
    return mm.Sequential(mm.Conv2d(3, 4, 3, padding=1, rng=rng), mm.BatchNorm2d(4), mm.ReLU6(),
                         mm.GlobalAvgPool2d(), mm.Flatten(), mm.Linear(4, 10, rng=rng))


def test_save_then_load_round_trips_arrays_scalars_and_meta(tmp_path):
    arrays = {"model/0.weight": np.arange(6, dtype=np.float32).reshape(2, 3),
              "optimizer/momentum_buffer/0.weight": np.ones(3),
              "count": np.int64(7), "flag": True, "lr": 0.1}
    meta = {"epoch": 3, "state": {"state": 2 ** 127 + 5, "inc": 11}, "tags": ["a", "b"],
            "value": np.float32(1.5), "missing": None}
    checkpoint.save(tmp_path / "c.npz", arrays, meta)
    loaded, loaded_meta = checkpoint.load(tmp_path / "c.npz")
    assert set(loaded) == set(arrays)
    for key, value in arrays.items():
        assert np.array_equal(loaded[key], value)
        assert loaded[key].dtype == np.asarray(value).dtype
    assert loaded_meta == {**meta, "value": 1.5}
    assert checkpoint.load_meta(tmp_path / "c.npz") == loaded_meta


def test_a_failing_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "last.npz"
    checkpoint.save(path, {"w": np.zeros(4)}, {"epoch": 1})
    before = path.read_bytes()

    def savez_that_dies_midway(file, **arrays):
        file.write(b"PK\x03\x04 half a zip")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", savez_that_dies_midway)
    with pytest.raises(OSError, match="No space left"):
        checkpoint.save(path, {"w": np.ones(4)}, {"epoch": 2})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.npz"]  # no temporary file left
    monkeypatch.undo()
    arrays, meta = checkpoint.load(path)
    assert meta == {"epoch": 1} and np.array_equal(arrays["w"], np.zeros(4))


def test_save_refuses_the_reserved_key_and_object_arrays(tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        checkpoint.save(tmp_path / "c.npz", {checkpoint.META_KEY: np.zeros(1)})
    with pytest.raises(ValueError, match="'bad' is an object array"):
        checkpoint.save(tmp_path / "c.npz", {"bad": np.array([{}, None], dtype=object)})
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", "truncated"])
def test_an_unreadable_file_raises_an_error_naming_it(tmp_path, content):
    path = tmp_path / "broken.npz"
    if content == "truncated":
        checkpoint.save(path, {"w": np.zeros(1000)}, {"epoch": 1})
        content = path.read_bytes()[:-200]
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError, match="broken.npz"):
        checkpoint.load(path)
    with pytest.raises(CorruptCheckpointError, match="broken.npz"):
        checkpoint.load_meta(path)


def test_a_missing_file_raises_file_not_found_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        checkpoint.load(tmp_path / "nowhere.npz")


def test_save_model_then_load_model_restores_every_parameter_and_buffer(tmp_path):
    model = small_model(0)
    model.forward(np.random.default_rng(1).standard_normal((2, 3, 5, 5)).astype(np.float32))
    checkpoint.save_model(tmp_path / "m.npz", model, note="after one batch")
    other = small_model(1)
    meta = checkpoint.load_model(tmp_path / "m.npz", other)
    assert meta == {"note": "after one batch"}
    expected, got = model.state_dict(), other.state_dict()
    assert list(expected) == list(got)
    assert all(np.array_equal(expected[k], got[k]) for k in expected)


def test_load_model_lists_missing_unexpected_and_misshaped_keys_and_changes_nothing(tmp_path):
    state = small_model(0).state_dict()
    del state["1.running_var"]
    state["2.weight"] = np.zeros(3)
    state["5.weight"] = np.zeros((10, 5), dtype=np.float32)
    checkpoint.save(tmp_path / "bad.npz", state)
    model = small_model(1)
    before = model.state_dict()
    with pytest.raises(ValueError) as info:
        checkpoint.load_model(tmp_path / "bad.npz", model)
    message = str(info.value)
    for part in ("bad.npz", "missing keys (1): 1.running_var", "unexpected keys (1): 2.weight",
                 "5.weight: expected (10, 4), got (10, 5)"):
        assert part in message
    assert all(np.array_equal(before[k], v) for k, v in model.state_dict().items())


def test_load_model_takes_the_model_part_of_a_trainer_checkpoint(tmp_path):
    model = small_model(0)
    arrays = {checkpoint.MODEL_PREFIX + k: v for k, v in model.state_dict().items()}
    arrays["optimizer/step"] = 3
    checkpoint.save(tmp_path / "last.npz", arrays, {"epoch": 2})
    other = small_model(1)
    assert checkpoint.load_model(tmp_path / "last.npz", other) == {"epoch": 2}
    assert np.array_equal(other[5].params["weight"], model[5].params["weight"])


def test_a_bad_entry_late_in_the_state_dict_fails_the_load_and_changes_nothing():
    model, other = small_model(0), small_model(1)
    before = model.state_dict()
    state = other.state_dict()
    last = list(state)[-1]
    state[last] = np.full(state[last].shape, "x")  # the right shape, but not numbers
    with pytest.raises(ValueError, match=f"not numbers \\(1\\): {last}"):
        model.load_state_dict(state)
    for key, value in model.state_dict().items():
        assert np.array_equal(value, before[key]), key


def test_loading_another_network_summarises_the_keys_in_one_short_line(tmp_path):
    checkpoint.save_model(tmp_path / "v2.npz", mm.mobilenet_v2(width_mult=0.25, cifar=True,
                                                               seed=0))
    with pytest.raises(ValueError) as info:
        checkpoint.load_model(tmp_path / "v2.npz", mm.mobilenet_v3_small(width_mult=0.25,
                                                                         cifar=True, seed=0))
    message = str(info.value)
    assert "\n" not in message and len(message) < 1500, len(message)
    assert "v2.npz" in message and " more" in message and "missing keys (" in message


@pytest.mark.parametrize("content", [b"epoch,step,train_loss\n1,2,0.5\n", b"\x93NUMPY fake"])
def test_a_file_that_is_not_an_npz_is_refused_without_advising_allow_pickle(tmp_path, content):
    path = tmp_path / "history.csv"
    path.write_bytes(content)
    with pytest.raises(CorruptCheckpointError) as info:
        checkpoint.load(path)
    assert "history.csv is not an .npz checkpoint" in str(info.value)
    assert "allow_pickle" not in str(info.value) and "pickle" not in str(info.value)


def test_temporary_files_left_by_a_killed_write_are_found_and_removed(tmp_path):
    checkpoint.save(tmp_path / "last.npz", {"w": np.zeros(3)})
    left = [tmp_path / ".last.npz.abc123.tmp", tmp_path / ".history.csv.x_y.tmp"]
    for path in left:
        path.write_bytes(b"PK\x03\x04 half a zip")
    (tmp_path / ".notes.txt.tmp").write_bytes(b"someone else's")
    assert checkpoint.temporary_files(tmp_path, ["last.npz", "history.csv"]) == sorted(left)
    assert checkpoint.remove_temporary_files(tmp_path, ["last.npz", "history.csv"]) == sorted(left)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".notes.txt.tmp", "last.npz"]


@pytest.mark.parametrize("find", [checkpoint.temporary_files, checkpoint.remove_temporary_files])
def test_temporary_files_want_a_list_of_names_not_one_bare_name(find, tmp_path):
    (tmp_path / ".last.npz.abc123.tmp").write_bytes(b"PK")
    with pytest.raises(ValueError, match=rf"{find.__name__}: names: expected a list of file "
                                         r"names, such as \['last.npz'\], got 'last.npz'"):
        find(tmp_path, "last.npz")  # read letter by letter, it would find nothing
    assert (tmp_path / ".last.npz.abc123.tmp").exists()


def test_model_arrays_prefer_the_ema_of_a_trainer_checkpoint_unless_told_otherwise():
    from minimobile.checkpoint import model_arrays
    arrays = {"model/w": np.zeros(2), "ema/w": np.ones(2), "optimizer/step": np.array(3)}
    np.testing.assert_array_equal(model_arrays(arrays)["w"], 1)
    np.testing.assert_array_equal(model_arrays(arrays, ema=False)["w"], 0)
    assert set(model_arrays({"model/w": np.zeros(2)})) == {"w"}
    plain = {"w": np.zeros(2)}
    assert model_arrays(plain) is plain


def test_meta_that_is_not_a_json_object_is_a_corrupt_checkpoint(tmp_path):
    import json
    path = tmp_path / "c.npz"
    np.savez(path, w=np.zeros(3), **{checkpoint.META_KEY: np.frombuffer(
        json.dumps([1, 2]).encode(), dtype=np.uint8)})
    with pytest.raises(CorruptCheckpointError, match="expected the .* entry to be a JSON object"):
        checkpoint.load(path)


def test_save_refuses_what_load_would_refuse_and_atomic_open_only_writes(tmp_path):
    path = tmp_path / "c.npz"
    with pytest.raises(ValueError, match=r"save: expected meta to be a dict or None, got str"):
        checkpoint.save(path, {"w": np.zeros(2)}, meta="a note")
    with pytest.raises(ValueError, match=r"save: expected arrays as a mapping .* got "
                                         r"MobileNetV1"):
        checkpoint.save(path, mm.mobilenet_v1(width_mult=0.25, cifar=True, seed=0))
    assert not path.exists()
    path.write_text("kept")
    for mode in ("a", "r", "rb"):
        with pytest.raises(ValueError, match=rf"atomic_open: expected mode 'w' or 'wb', got "
                                             rf"'{mode}'"):
            with checkpoint.atomic_open(path, mode):
                pass
    assert path.read_text() == "kept"
