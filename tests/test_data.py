"""Tests for minimobile.data: finding and reading CIFAR-10, augmentation and batching.

Nothing here touches the network: an autouse fixture replaces data._urlopen, and the tests of
the download path hand it a fake response instead.
"""

import hashlib
import io
import os
import pickle
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from minimobile import data
from minimobile.data import (
    ARCHIVE_NAME,
    CIFAR10_MEAN,
    CIFAR10_STD,
    CIFAR10_URL,
    FOLDER_NAME,
    REQUIRED_FILES,
    Batches,
    CorruptDataError,
    DataNotFoundError,
    crop_flip,
    iterate_minibatches,
    load_cifar10,
    normalize,
    random_crop_flip,
    write_fake_cifar10,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck")


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Make any unexpected download fail the way a closed network does."""
    def refuse(url, timeout=None):
        raise urllib.error.URLError("network is unreachable (tests run offline)")
    monkeypatch.setattr(data, "_urlopen", refuse)


class FakeResponse(io.BytesIO):
    """Stands in for urlopen's response: a readable body plus headers."""

    def __init__(self, payload):
        super().__init__(payload)
        self.headers = {"Content-Length": str(len(payload))}


def fake_archive_bytes(tmp_path):
    """The bytes of a small fake cifar-10-python.tar.gz."""
    return write_fake_cifar10(tmp_path / "source", as_archive=True).read_bytes()


def serve(monkeypatch, payload, requested):
    """Answer every download with `payload`, recording the URLs asked for in `requested`."""
    def fake_urlopen(url, timeout=None):
        requested.append(url)
        return FakeResponse(payload)
    monkeypatch.setattr(data, "_urlopen", fake_urlopen)


def unpickle(path):
    with open(path, "rb") as f:
        return pickle.load(f, encoding="bytes")


def rewrite_batch(path, **changes):
    """Re-pickle the batch at `path` with some of its byte-string keys replaced."""
    batch = unpickle(path)
    batch.update({key.encode(): value for key, value in changes.items()})
    path.write_bytes(pickle.dumps(batch, protocol=4))


def trust_archive(monkeypatch, path):
    """Make the fake archive at `path` pass as the official one (its MD5 becomes the expected)."""
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(Path(path).read_bytes()).hexdigest())


def check_fake_dataset(ds, n_train_per_batch=20, n_test=20):
    assert ds.x_train.shape == (5 * n_train_per_batch, 3, 32, 32)
    assert ds.x_test.shape == (n_test, 3, 32, 32)
    assert ds.x_train.dtype == ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (5 * n_train_per_batch,) and ds.y_train.dtype == np.int64
    assert ds.y_test.shape == (n_test,) and ds.y_test.dtype == np.int64
    assert ds.classes == CLASSES


def test_write_fake_cifar10_writes_the_official_layout(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train_per_batch=7, n_test=12)
    assert folder == tmp_path / FOLDER_NAME
    assert sorted(p.name for p in folder.iterdir()) == sorted(REQUIRED_FILES)
    batch = unpickle(folder / "data_batch_1")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (7, 3072)
    assert len(batch[b"labels"]) == 7 and set(batch[b"labels"]) <= set(range(10))
    assert set(unpickle(folder / "test_batch")[b"labels"]) == set(range(10))
    assert unpickle(folder / "batches.meta")[b"label_names"][0] == b"airplane"

    archive = write_fake_cifar10(tmp_path / "a", as_archive=True)
    assert archive == tmp_path / "a" / ARCHIVE_NAME
    with tarfile.open(archive) as tar:
        assert sorted(tar.getnames()) == sorted(f"{FOLDER_NAME}/{n}" for n in REQUIRED_FILES)


def test_load_cifar10_reads_folder_layout(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    ds = load_cifar10(tmp_path, download=False)
    check_fake_dataset(ds)
    # Rows are channel-planar (1024 R, 1024 G, 1024 B), so image 25 is row 5 of batch 2.
    row = unpickle(folder / "data_batch_2")[b"data"][5]
    for c in range(3):
        plane = row[1024 * c:1024 * (c + 1)].reshape(32, 32)
        np.testing.assert_array_equal(ds.x_train[25, c], plane)
    np.testing.assert_array_equal(ds.y_train[20:40], unpickle(folder / "data_batch_2")[b"labels"])
    np.testing.assert_array_equal(ds.y_test, unpickle(folder / "test_batch")[b"labels"])


def test_load_cifar10_accepts_the_batches_folder_itself(tmp_path):
    folder = write_fake_cifar10(tmp_path, n_train_per_batch=3, n_test=4)
    check_fake_dataset(load_cifar10(folder, download=False), n_train_per_batch=3, n_test=4)


def test_load_cifar10_reads_archive_layout_and_extracts_it_beside_the_archive(tmp_path,
                                                                              monkeypatch):
    trust_archive(monkeypatch, write_fake_cifar10(tmp_path, as_archive=True))
    check_fake_dataset(load_cifar10(str(tmp_path), download=False))
    assert sorted(p.name for p in (tmp_path / FOLDER_NAME).iterdir()) == sorted(REQUIRED_FILES)


def test_load_cifar10_falls_back_to_the_env_var(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path, n_train_per_batch=2)
    monkeypatch.setenv("MINIMOBILE_DATA", str(tmp_path))
    check_fake_dataset(load_cifar10(download=False), n_train_per_batch=2)


def test_load_cifar10_root_argument_takes_precedence_over_the_env_var(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path / "arg", n_train_per_batch=2)
    write_fake_cifar10(tmp_path / "env", n_train_per_batch=3)
    monkeypatch.setenv("MINIMOBILE_DATA", str(tmp_path / "env"))
    check_fake_dataset(load_cifar10(tmp_path / "arg", download=False), n_train_per_batch=2)


def test_load_cifar10_falls_back_to_the_home_cache(tmp_path, monkeypatch):
    write_fake_cifar10(tmp_path / ".cache" / "minimobile", n_train_per_batch=2)
    monkeypatch.delenv("MINIMOBILE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    check_fake_dataset(load_cifar10(download=False), n_train_per_batch=2)


@pytest.mark.parametrize("root_name", ["data", FOLDER_NAME])
def test_missing_data_message_lists_every_location_and_how_to_supply_data(tmp_path, root_name):
    root = tmp_path / root_name
    home = tmp_path if root_name == FOLDER_NAME else root  # where the archive would be
    home.mkdir(exist_ok=True)  # a --data folder that does not exist is never downloaded into
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10(root)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    for place in [root, home / FOLDER_NAME, home / ARCHIVE_NAME]:
        assert str(place) in message
    for hint in [CIFAR10_URL, "network is unreachable", "--data", "MINIMOBILE_DATA"]:
        assert hint in message
    assert not any(p.name.endswith(".part") for p in tmp_path.rglob("*"))


def test_missing_data_message_names_the_default_cache_when_nothing_is_given(tmp_path, monkeypatch):
    monkeypatch.delenv("MINIMOBILE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(DataNotFoundError, match="default cache") as info:
        load_cifar10()
    assert str(tmp_path / ".cache" / "minimobile" / ARCHIVE_NAME) in str(info.value)


def test_missing_data_with_download_false_never_opens_a_url(tmp_path, monkeypatch):
    requested = []
    serve(monkeypatch, b"", requested)
    with pytest.raises(DataNotFoundError, match="download=False"):
        load_cifar10(tmp_path, download=False)
    assert requested == []


def test_missing_data_message_says_which_files_an_incomplete_folder_lacks(tmp_path):
    folder = write_fake_cifar10(tmp_path)
    (folder / "test_batch").unlink()
    with pytest.raises(DataNotFoundError, match=r"incomplete, lacks test_batch"):
        load_cifar10(tmp_path, download=False)


def test_load_cifar10_downloads_verifies_and_extracts_the_archive(tmp_path, monkeypatch):
    payload = fake_archive_bytes(tmp_path)
    monkeypatch.setattr(data, "CIFAR10_MD5", hashlib.md5(payload).hexdigest())
    requested = []
    serve(monkeypatch, payload, requested)
    monkeypatch.delenv("MINIMOBILE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    root = tmp_path / ".cache" / "minimobile"  # the default cache: created on download
    check_fake_dataset(load_cifar10())
    assert requested == [CIFAR10_URL]
    assert (root / ARCHIVE_NAME).read_bytes() == payload
    assert sorted(p.name for p in root.iterdir()) == sorted([ARCHIVE_NAME, FOLDER_NAME])


def test_bad_checksum_raises_with_every_location_and_keeps_no_archive(tmp_path, monkeypatch):
    serve(monkeypatch, fake_archive_bytes(tmp_path), [])
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(CorruptDataError) as info:
        load_cifar10(root)
    message = str(info.value)
    assert isinstance(info.value, RuntimeError)
    assert "MD5" in message and data.CIFAR10_MD5 in message
    for hint in [str(root), str(root / FOLDER_NAME), str(root / ARCHIVE_NAME), "--data",
                 "MINIMOBILE_DATA"]:
        assert hint in message
    assert list(root.iterdir()) == []  # neither the archive nor a .part file is left behind


def test_truncated_batch_file_error_names_the_file(tmp_path):
    path = write_fake_cifar10(tmp_path) / "data_batch_3"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CorruptDataError, match="truncated") as info:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_wrong_row_length_error_names_the_file(tmp_path):
    path = write_fake_cifar10(tmp_path) / "data_batch_2"
    rewrite_batch(path, data=np.zeros((20, 3000), dtype=np.uint8))
    with pytest.raises(CorruptDataError, match="3072") as info:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_label_count_mismatch_error_names_the_file(tmp_path):
    path = write_fake_cifar10(tmp_path) / "test_batch"
    rewrite_batch(path, labels=list(range(10)) * 2 + [3])
    with pytest.raises(CorruptDataError, match="20 images but 21 labels") as info:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_corrupt_archive_error_names_the_archive(tmp_path):
    (tmp_path / ARCHIVE_NAME).write_bytes(b"this is not a gzip file")
    with pytest.raises(CorruptDataError) as info:
        load_cifar10(tmp_path, download=False)
    assert str(tmp_path / ARCHIVE_NAME) in str(info.value)


@pytest.mark.parametrize("member", ["../escaped.txt", "/tmp/minimobile_escaped.txt"])
def test_archive_extraction_refuses_paths_outside_the_root(tmp_path, member, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / ARCHIVE_NAME, "w:gz") as tar:
        info = tarfile.TarInfo(member)
        info.size = 4
        tar.addfile(info, io.BytesIO(b"evil"))
    trust_archive(monkeypatch, root / ARCHIVE_NAME)
    with pytest.raises(CorruptDataError, match="refusing"):
        load_cifar10(root, download=False)
    assert not (tmp_path / "escaped.txt").exists()
    assert not Path("/tmp/minimobile_escaped.txt").exists()


def test_a_local_archive_that_is_not_the_official_one_is_refused_before_extraction(tmp_path):
    archive = write_fake_cifar10(tmp_path, as_archive=True)
    with pytest.raises(CorruptDataError) as info:
        load_cifar10(tmp_path, download=False)
    message = str(info.value)
    assert str(archive) in message and data.CIFAR10_MD5 in message
    assert hashlib.md5(archive.read_bytes()).hexdigest() in message and "delete it" in message
    assert not (tmp_path / FOLDER_NAME).exists()


def test_a_data_folder_that_does_not_exist_is_not_created_or_downloaded_into(tmp_path,
                                                                              monkeypatch):
    requested = []
    serve(monkeypatch, fake_archive_bytes(tmp_path), requested)
    root = tmp_path / "typo"
    with pytest.raises(DataNotFoundError, match="does not exist, so nothing was downloaded"):
        load_cifar10(root)
    assert requested == [] and not root.exists()
    monkeypatch.setenv("MINIMOBILE_DATA", str(root))
    with pytest.raises(DataNotFoundError, match="MINIMOBILE_DATA"):
        load_cifar10()
    assert requested == [] and not root.exists()


class RunsCode:
    """What a tampered pickle holds: unpickling it calls os.mkdir(marker)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.mark.parametrize("key", ["data", "labels", "batch_label"])
def test_a_batch_that_asks_to_run_code_is_refused_and_the_code_never_runs(tmp_path, key):
    path = write_fake_cifar10(tmp_path / "d") / "data_batch_1"
    marker = tmp_path / "pwned"
    rewrite_batch(path, **{key: RunsCode(marker)})
    with pytest.raises(CorruptDataError, match="posix.mkdir|os.mkdir") as info:
        load_cifar10(tmp_path / "d", download=False)
    assert str(path) in str(info.value) and "not loaded" in str(info.value)
    assert not marker.exists()


def test_only_uint8_arrays_may_be_unpickled(tmp_path):
    path = write_fake_cifar10(tmp_path) / "data_batch_4"
    rewrite_batch(path, data=np.zeros((20, 3072), dtype=np.float64))
    with pytest.raises(CorruptDataError, match="dtype") as info:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_a_protocol_2_batch_written_by_numpy_1_loads(tmp_path):
    # The official files are Python 2 pickles (protocol 2) naming numpy.core.multiarray, NumPy
    # 1's module path; NumPy 2 writes numpy._core. Both must load.
    path = write_fake_cifar10(tmp_path, n_train_per_batch=4) / "data_batch_1"
    payload = pickle.dumps(unpickle(path), protocol=2)
    path.write_bytes(payload.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    check_fake_dataset(load_cifar10(tmp_path, download=False), n_train_per_batch=4)


@pytest.mark.parametrize("labels, why", [([0.0, 1.7] * 10, "list of integers, got list of float"),
                                         (np.arange(20) % 10, "dtype 'i8'"),
                                         ([True, False] * 10, "list of integers.*bool")])
def test_labels_that_are_not_a_list_of_ints_are_refused_not_truncated(tmp_path, labels, why):
    path = write_fake_cifar10(tmp_path) / "data_batch_5"
    rewrite_batch(path, labels=labels)
    with pytest.raises(CorruptDataError, match=why) as info:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)


def test_data_loading_does_not_import_the_network_kernels():
    import ast
    for name in ("data.py", "augment.py"):
        tree = ast.parse((REPO_ROOT / "minimobile" / name).read_text())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                    for alias in node.names} | {node.module or "" for node in ast.walk(tree)
                                                if isinstance(node, ast.ImportFrom)}
        assert not imported & {"kernels", "ops", "layers"}, (name, imported)


def crop_flip_reference(x, dy, dx, flipped, padding):
    """Slow and obviously correct: pad each image, slice its window, mirror the columns."""
    N, C, H, W = x.shape
    out = np.empty_like(x)
    for n in range(N):
        xp = np.pad(x[n], ((0, 0), (padding, padding), (padding, padding)))  # (C, H+2p, W+2p)
        window = xp[:, dy[n]:dy[n] + H, dx[n]:dx[n] + W]
        out[n] = window[:, :, ::-1] if flipped[n] else window
    return out


@pytest.mark.parametrize("dtype", [np.uint8, np.float32, np.float64])
@pytest.mark.parametrize("shape, padding", [((6, 3, 32, 32), 4), ((5, 1, 7, 5), 2),
                                            ((4, 2, 6, 6), 0), ((6, 3, 3, 4), 5)])
def test_crop_flip_matches_the_slow_reference(dtype, shape, padding):
    rng = np.random.default_rng(0)
    x = (rng.random(shape) * 255).astype(dtype)
    N = shape[0]
    dy, dx = rng.integers(0, 2 * padding + 1, size=(2, N))
    dy[:2], dx[:2] = [0, 2 * padding], [2 * padding, 0]  # the extreme corners, always
    flipped = np.arange(N) % 2 == 0
    out = crop_flip(x, dy, dx, flipped, padding)
    assert out.dtype == x.dtype and out.shape == x.shape
    np.testing.assert_array_equal(out, crop_flip_reference(x, dy, dx, flipped, padding))


def test_crop_flip_rejects_offsets_outside_the_padding():
    x = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match="0..8"):
        crop_flip(x, [0, 9], [0, 0], [False, False], padding=4)


def test_random_crop_flip_crops_are_genuine_sub_windows_of_the_padded_image():
    padding, N = 2, 64
    x = np.random.default_rng(0).integers(1, 256, size=(N, 3, 8, 10), dtype=np.uint8)
    out = random_crop_flip(x, np.random.default_rng(1), padding=padding)
    choices = [(i, j, f) for i in range(2 * padding + 1) for j in range(2 * padding + 1)
               for f in (False, True)]
    found = []
    for n in range(N):
        windows = {(i, j, f): crop_flip_reference(x[n:n + 1], [i], [j], [f], padding)[0]
                   for i, j, f in choices}
        matches = [c for c, window in windows.items() if np.array_equal(out[n], window)]
        assert len(matches) == 1, f"image {n} is not exactly one window of its padded image"
        found += matches
    # Every offset in 0..2*padding occurs, on both axes: no off-by-one in the draws.
    assert {i for i, _, _ in found} == {j for _, j, _ in found} == set(range(2 * padding + 1))
    assert {f for _, _, f in found} == {False, True}


def test_random_crop_flip_flips_about_half_and_flips_horizontally():
    x = np.random.default_rng(0).integers(0, 256, size=(1000, 3, 5, 6), dtype=np.uint8)
    out = random_crop_flip(x, np.random.default_rng(1), padding=0)
    kept = np.all(out == x, axis=(1, 2, 3))
    mirrored = np.all(out == x[:, :, :, ::-1], axis=(1, 2, 3))
    assert np.all(kept ^ mirrored)  # each image is either untouched or mirrored left-right
    assert 400 < mirrored.sum() < 600


def test_random_crop_flip_without_padding_or_flip_is_the_identity():
    x = np.random.default_rng(0).random((4, 3, 8, 8)).astype(np.float32)
    np.testing.assert_array_equal(random_crop_flip(x, np.random.default_rng(1), 0, False), x)


def test_random_crop_flip_is_determined_by_the_rng_state():
    x = np.random.default_rng(0).integers(0, 256, size=(50, 3, 32, 32), dtype=np.uint8)
    rng = np.random.default_rng(7)
    state = rng.bit_generator.state
    first = random_crop_flip(x, rng)
    second = random_crop_flip(x, rng)
    assert not np.array_equal(first, second)  # the rng moved on
    rng.bit_generator.state = state
    np.testing.assert_array_equal(random_crop_flip(x, rng), first)
    # Same draws for any dtype: augmenting floats crops and flips exactly like uint8.
    floats = random_crop_flip(x.astype(np.float32), np.random.default_rng(7))
    np.testing.assert_array_equal(floats, first.astype(np.float32))


def test_normalize_computes_x_over_255_minus_mean_over_std():
    x = np.random.default_rng(0).integers(0, 256, size=(4, 3, 5, 7), dtype=np.uint8)
    mean = np.array(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD).reshape(1, 3, 1, 1)
    expected = (x / 255.0 - mean) / std
    out = normalize(x)
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(normalize(x, dtype=np.float64), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(normalize(x, mean=(0.5,) * 3, std=(0.5,) * 3, dtype=np.float64),
                               x / 127.5 - 1.0, atol=1e-12)


def test_normalize_maps_the_mean_colour_to_zero_and_black_to_minus_mean_over_std():
    pixels = np.zeros((2, 3, 1, 1))
    pixels[0, :, 0, 0] = np.array(CIFAR10_MEAN) * 255.0
    out = normalize(pixels, dtype=np.float64)
    np.testing.assert_allclose(out[0, :, 0, 0], 0.0, atol=1e-12)
    np.testing.assert_allclose(out[1, :, 0, 0], -np.array(CIFAR10_MEAN) / CIFAR10_STD)


@pytest.mark.parametrize("N, batch_size, drop_last", [(10, 3, False), (10, 3, True), (12, 4, False),
                                                      (12, 4, True), (7, 10, False), (7, 10, True)])
def test_iterate_minibatches_covers_every_sample_exactly_once_per_epoch(N, batch_size, drop_last):
    x = np.arange(N)[:, None] * 10  # row n holds 10 * n, so pairs can be checked
    y = np.arange(N)
    batches = list(iterate_minibatches(x, y, batch_size, np.random.default_rng(0),
                                       drop_last=drop_last))
    sizes = [len(yb) for _, yb in batches]
    assert sizes == [batch_size] * (N // batch_size) + ([] if drop_last or N % batch_size == 0
                                                        else [N % batch_size])
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], 10 * yb)
    seen = np.concatenate([yb for _, yb in batches]) if batches else np.array([], dtype=int)
    assert len(set(seen.tolist())) == len(seen) == sum(sizes)  # no sample twice
    if not drop_last:
        np.testing.assert_array_equal(np.sort(seen), y)


def test_iterate_minibatches_shuffles_differently_each_epoch_and_not_without_shuffle():
    y = np.arange(100)
    rng = np.random.default_rng(0)
    epoch1 = np.concatenate([yb for _, yb in iterate_minibatches(y, y, 32, rng)])
    epoch2 = np.concatenate([yb for _, yb in iterate_minibatches(y, y, 32, rng)])
    assert not np.array_equal(epoch1, y) and not np.array_equal(epoch1, epoch2)
    ordered = np.concatenate([yb for _, yb in iterate_minibatches(y, y, 32, shuffle=False)])
    np.testing.assert_array_equal(ordered, y)


def test_iterate_minibatches_asks_for_an_rng_to_shuffle_at_call_time():
    with pytest.raises(ValueError, match="explicit rng"):
        iterate_minibatches(np.zeros(4), np.zeros(4), 2)


def test_batches_yield_normalised_float32_batches_and_know_their_length(tmp_path):
    ds = load_cifar10(write_fake_cifar10(tmp_path, n_train_per_batch=10), download=False)
    plain = Batches(ds.x_train, ds.y_train, 16, shuffle=False)
    assert len(plain) == 4 and len(Batches(ds.x_train, ds.y_train, 16, shuffle=False,
                                           drop_last=True)) == 3
    batches = list(plain)
    assert [len(yb) for _, yb in batches] == [16, 16, 16, 2]
    np.testing.assert_array_equal(np.concatenate([xb for xb, _ in batches]), normalize(ds.x_train))
    augmented = list(Batches(ds.x_train, ds.y_train, 16, augment=True,
                             rng=np.random.default_rng(0)))
    assert len(augmented) == 4
    assert all(xb.dtype == np.float32 and xb.shape[1:] == (3, 32, 32) for xb, _ in augmented)


def test_batches_replay_an_epoch_exactly_from_a_saved_rng_state():
    x = np.random.default_rng(0).integers(0, 256, size=(40, 3, 32, 32), dtype=np.uint8)
    y = np.arange(40) % 10
    batches = Batches(x, y, 16, augment=True, rng=np.random.default_rng(3))
    list(batches)  # epoch 1
    state = batches.rng.bit_generator.state  # what the trainer checkpoints
    epoch2 = list(batches)
    resumed = Batches(x, y, 16, augment=True, rng=np.random.default_rng())
    resumed.rng.bit_generator.state = state
    for (xb, yb), (xr, yr) in zip(epoch2, resumed, strict=True):
        np.testing.assert_array_equal(xb, xr)
        np.testing.assert_array_equal(yb, yr)


def test_batches_ask_for_an_rng_to_shuffle_or_augment():
    with pytest.raises(ValueError, match="explicit rng"):
        Batches(np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4), 2)


REAL_DATA = Path(os.environ.get("MINIMOBILE_DATA") or REPO_ROOT.parent / "shared" / FOLDER_NAME)


@pytest.mark.skipif(not REAL_DATA.exists(), reason=f"no real CIFAR-10 at {REAL_DATA}")
def test_real_cifar10_has_the_official_shapes_and_balanced_classes():
    ds = load_cifar10(REAL_DATA, download=False)
    assert ds.x_train.shape == (50000, 3, 32, 32) and ds.x_train.dtype == np.uint8
    assert ds.x_test.shape == (10000, 3, 32, 32) and ds.x_test.dtype == np.uint8
    assert ds.y_train.shape == (50000,) and ds.y_test.shape == (10000,)
    assert ds.classes == CLASSES
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [1000] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [5000] * 10)
    # The published constants standardise the real images: mean near 0, std near 1.
    z = normalize(ds.x_train[:5000], dtype=np.float64)
    np.testing.assert_allclose(z.mean(axis=(0, 2, 3)), 0.0, atol=0.03)
    np.testing.assert_allclose(z.std(axis=(0, 2, 3)), 1.0, atol=0.03)


def ramp_images(n):
    """Images whose value rises left to right (labels are their ids), so a flip, even after a
    crop of up to 4 px, shows as a falling centre row."""
    x = np.broadcast_to((10 + 7 * np.arange(32)).astype(np.uint8), (n, 3, 32, 32)).copy()
    return x, np.arange(n)


def flipped_ids(batches):
    """{image id: flipped?} over one epoch of `batches` of ramp_images."""
    return {int(i): bool(xb[k, 0, 16, 20] < xb[k, 0, 16, 12])
            for xb, yb in batches for k, i in enumerate(yb)}


def test_batches_default_flips_keep_the_random_stream_of_crop_then_flip_per_batch():
    x, y = ramp_images(40)
    got = list(Batches(x, y, 16, augment=True, rng=np.random.default_rng(5)))
    rng = np.random.default_rng(5)
    order = rng.permutation(40)
    for (xb, yb), i in zip(got, range(0, 40, 16), strict=True):
        idx = order[i:i + 16]
        np.testing.assert_array_equal(xb, normalize(random_crop_flip(x[idx], rng)))
        np.testing.assert_array_equal(yb, y[idx])


def test_batches_crop_from_their_crop_padding_and_refuse_a_bad_one():
    x, y = ramp_images(40)
    for padding in (0, 2):
        got = list(Batches(x, y, 16, augment=True, rng=np.random.default_rng(5),
                           crop_padding=padding))
        rng = np.random.default_rng(5)
        order = rng.permutation(40)
        for (xb, _), i in zip(got, range(0, 40, 16), strict=True):
            expected = random_crop_flip(x[order[i:i + 16]], rng, padding=padding)
            np.testing.assert_array_equal(xb, normalize(expected))
    # Padding 0 leaves only the flips: every image is itself or its mirror.
    xb, yb = next(iter(Batches(x, y, 40, augment=True, shuffle=False, crop_padding=0,
                               rng=np.random.default_rng(1))))
    plain, mirrored = normalize(x), normalize(x[..., ::-1])
    assert all(np.array_equal(a, p) or np.array_equal(a, m)
               for a, p, m in zip(xb, plain, mirrored))
    with pytest.raises(ValueError, match="crop_padding must be an integer from 0 to 32"):
        Batches(x, y, 4, augment=True, rng=np.random.default_rng(0), crop_padding=33)


def test_alternating_flips_flip_each_image_in_every_other_epoch_from_a_random_start():
    x, y = ramp_images(64)
    batches = Batches(x, y, 16, augment=True, rng=np.random.default_rng(0), flip="alternate")
    epochs = [flipped_ids(batches) for _ in range(3)]
    assert all(epochs[1][i] != epochs[0][i] for i in range(64))
    assert epochs[2] == epochs[0]
    assert 16 <= sum(epochs[0].values()) <= 48  # a random half, not all or none
    other = flipped_ids(Batches(x, y, 16, augment=True, rng=np.random.default_rng(1),
                                flip="alternate"))
    assert other != epochs[0]


def test_alternating_flips_resume_from_the_epoch_count_and_the_rng_state():
    x, y = ramp_images(32)
    batches = Batches(x, y, 8, augment=True, rng=np.random.default_rng(2), flip="alternate")
    list(batches)
    state = batches.rng.bit_generator.state
    epoch2 = list(batches)
    resumed = Batches(x, y, 8, augment=True, rng=np.random.default_rng(2), flip="alternate")
    resumed.rng.bit_generator.state, resumed.epoch = state, 1
    for (xb, yb), (xr, yr) in zip(epoch2, resumed, strict=True):
        np.testing.assert_array_equal(xb, xr)
        np.testing.assert_array_equal(yb, yr)


def test_cutout_zeroes_one_clipped_square_per_image_deterministically():
    from minimobile.data import cutout
    x = np.ones((200, 3, 32, 32), np.float32)
    out = cutout(x.copy(), 8, np.random.default_rng(0))
    holes = out[:, 0] == 0  # (N, H, W)
    assert (out == 0).sum(axis=1).max() <= 3 and np.array_equal(holes, out[:, 2] == 0)
    areas = holes.sum(axis=(1, 2))
    assert areas.max() == 64 and areas.min() >= 16  # a corner centre keeps a quarter
    rows, cols = holes.any(axis=2), holes.any(axis=1)
    assert np.array_equal(areas, rows.sum(1) * cols.sum(1))  # one rectangle, not scattered
    np.testing.assert_array_equal(cutout(x.copy(), 8, np.random.default_rng(0)), out)


def test_batches_apply_cutout_after_normalising_and_refuse_bad_options():
    x, y = ramp_images(16)
    xb, _ = next(iter(Batches(x, y, 16, shuffle=False, cutout=6, rng=np.random.default_rng(0))))
    assert (xb == 0).all(axis=1).sum(axis=(1, 2)).min() >= 9
    assert (normalize(x) != 0).all()  # so every zero is cutout's
    with pytest.raises(ValueError, match="flip must be one of"):
        Batches(x, y, 4, rng=np.random.default_rng(0), flip="sometimes")
    with pytest.raises(ValueError, match="cutout must be an integer"):
        Batches(x, y, 4, rng=np.random.default_rng(0), cutout=33)


def test_bilinear_resize_of_two_pixels_to_four_matches_the_hand_computed_half_pixel_weights():
    # Half-pixel centres: output i reads input s = (i + 0.5) / 2 - 0.5 = -0.25 (clamped to 0),
    # 0.25, 0.75, 1.25 (clamped to the last pixel), so [a, b] -> [a, 3a/4 + b/4, a/4 + 3b/4, b].
    x = np.array([[0.0, 4.0], [8.0, 16.0]]).reshape(1, 1, 2, 2)
    rows = np.array([[0.0, 4.0], [2.0, 7.0], [6.0, 13.0], [8.0, 16.0]])  # each column resized
    expected = np.stack([rows[:, 0], 0.75 * rows[:, 0] + 0.25 * rows[:, 1],
                         0.25 * rows[:, 0] + 0.75 * rows[:, 1], rows[:, 1]], axis=1)
    np.testing.assert_allclose(data.resize(x, 4)[0, 0], expected, rtol=1e-15)
    np.testing.assert_allclose(data.bilinear_matrix(2, 4),
                               [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]], rtol=1e-15)


def test_halving_by_bilinear_resize_averages_each_two_by_two_block():
    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8))
    blocks = x.reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))  # (2, 3, 4, 4)
    np.testing.assert_allclose(data.resize(x, 4), blocks, rtol=1e-12)


@pytest.mark.parametrize("resolution", [8, 24, 40, 33])
def test_resize_keeps_constant_images_constant_and_every_row_of_weights_sums_to_one(resolution):
    x = np.full((2, 3, 32, 32), -1.25, np.float32)
    x[1] = 2.5
    out = data.resize(x, resolution)
    assert out.shape == (2, 3, resolution, resolution) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], -1.25, rtol=1e-6)
    np.testing.assert_allclose(out[1], 2.5, rtol=1e-6)
    R = data.bilinear_matrix(32, resolution)
    np.testing.assert_allclose(R.sum(axis=1), 1, rtol=1e-15)
    assert (R >= 0).all() and ((R > 0).sum(axis=1) <= 2).all()


def test_resize_to_the_stored_size_returns_the_images_themselves():
    x = normalize(np.random.default_rng(0).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8))
    assert data.resize(x, 32) is x
    np.testing.assert_array_equal(data.bilinear_matrix(32, 32), np.eye(32))


def test_batches_resize_after_augmenting_and_normalising_with_the_same_random_stream():
    x, y = ramp_images(16)
    kwargs = dict(augment=True, cutout=6, shuffle=True)
    (plain, yp), = Batches(x, y, 16, rng=np.random.default_rng(5), **kwargs)
    (small, ys), = Batches(x, y, 16, rng=np.random.default_rng(5), resolution=24, **kwargs)
    np.testing.assert_array_equal(yp, ys)  # resizing draws nothing from the data generator
    assert small.shape == (16, 3, 24, 24) and small.dtype == np.float32
    np.testing.assert_allclose(small, data.resize(plain, 24), rtol=1e-6)
    same, = Batches(x, y, 16, rng=np.random.default_rng(5), resolution=32, **kwargs)
    np.testing.assert_array_equal(same[0], plain)
    with pytest.raises(ValueError, match="resolution must be"):
        Batches(x, y, 4, rng=np.random.default_rng(0), resolution=7)


def test_ragged_image_rows_and_bad_class_names_get_errors_that_name_the_file(tmp_path):
    path = write_fake_cifar10(tmp_path) / "data_batch_1"
    rewrite_batch(path, data=[np.zeros(3072, np.uint8), np.zeros(3000, np.uint8)])
    with pytest.raises(CorruptDataError, match="not an array of images") as info:
        load_cifar10(tmp_path, download=False)
    assert str(path) in str(info.value)
    for names, message in ((5, "got int"), ([b"\xff\xfe"] * 10, "not UTF-8"),
                           ([b"cat"] * 9, "got 9 names")):
        folder = write_fake_cifar10(tmp_path / message.replace(" ", "_"))
        meta = folder / "batches.meta"
        with open(meta, "wb") as f:
            pickle.dump({b"label_names": names}, f)
        with pytest.raises(CorruptDataError, match=message) as info:
            load_cifar10(folder.parent, download=False)
        assert str(meta) in str(info.value)


def test_crop_flip_resize_and_batches_name_what_came():
    x = np.zeros((2, 3, 8, 8), dtype=np.uint8)
    with pytest.raises(ValueError, match=r"crop_flip: crop offsets must lie in 0\.\.4, got dy "
                                         r"in 0\.\.5 and dx in -1\.\.0"):
        crop_flip(x, [0, 5], [-1, 0], [False, False], padding=2)
    with pytest.raises(ValueError, match=r"crop_flip: dy, dx and flipped need shape \(2,\), "
                                         r"got \(3,\), \(2,\) and \(2,\)"):
        crop_flip(x, [0, 0, 0], [0, 0], [False, False])
    images = np.zeros((2, 3, 8, 8), dtype=np.float32)
    with pytest.raises(ValueError, match=r"resize: expected a resolution that is an integer "
                                         r">= 1, got 0"):
        data.resize(images, 0)
    with pytest.raises(ValueError, match=r"resize: expected images of shape \(N, C, H, W\), "
                                         r"got shape \(3, 8, 8\)"):
        data.resize(images[0], 4)
    labels = np.zeros(2, dtype=np.int64)
    with pytest.raises(ValueError, match=r"Batches: batch_size must be an integer >= 1, got 0"):
        Batches(x, labels, 0, shuffle=False)
    with pytest.raises(ValueError, match=r"Batches: x has 2 images but y has 1 labels"):
        Batches(x, labels[:1], 1, shuffle=False)
    with pytest.raises(ValueError, match=r"batch_size must be an integer >= 1, got 2\.0"):
        iterate_minibatches(x, labels, 2.0, shuffle=False)
