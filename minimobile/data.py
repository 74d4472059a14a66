"""CIFAR-10 in, minibatches out: find, download, verify and read the official python release,
then augment (random crop and flip), normalise and batch it.

The on-disk layout is the official "CIFAR-10 python version" (see DATA.md): a folder
`cifar-10-batches-py` with `data_batch_1` … `data_batch_5`, `test_batch` and `batches.meta`,
or the archive `cifar-10-python.tar.gz` that contains it. `write_fake_cifar10` writes the same
layout with a few random images, for tests and notebooks that must not need the real data.
"""

import gzip
import hashlib
import http.client
import io
import os
import pickle
import tarfile
import tempfile
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numba import njit, prange
from tqdm import tqdm  # the plain bar: tqdm.auto would want ipywidgets in notebooks

from .errors import CorruptDataError, DataNotFoundError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
FOLDER_NAME = "cifar-10-batches-py"
ARCHIVE_NAME = "cifar-10-python.tar.gz"
TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
REQUIRED_FILES = (*TRAIN_FILES, TEST_FILE, META_FILE)
ROW_LENGTH = 3 * 32 * 32  # one image per row, channel-planar: 1024 R, 1024 G, 1024 B
NUM_CLASSES = 10

# Per-channel statistics of the training images on the 0-1 scale, as used across the literature.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# The only door to the network. Tests replace it (monkeypatch) so they never go online.
_urlopen = urllib.request.urlopen


@dataclass(frozen=True, eq=False, repr=False)
class CIFAR10:
    """CIFAR-10 in memory: uint8 images in NCHW layout and int64 labels in 0..9.

    x_train: (N_train, 3, 32, 32) uint8, y_train: (N_train,) int64 (N_train = 50000 for the
    real data), x_test, y_test likewise (10000), classes: the 10 names from batches.meta.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple

    def __repr__(self):
        return (f"CIFAR10(x_train={self.x_train.shape} {self.x_train.dtype}, "
                f"x_test={self.x_test.shape} {self.x_test.dtype}, classes={self.classes})")


def load_cifar10(root=None, download=True):
    """Load CIFAR-10 from `root`, else $MINIMOBILE_DATA, else ~/.cache/minimobile.

    `root` may be the cifar-10-batches-py folder itself, a folder containing it, or a folder
    containing cifar-10-python.tar.gz (extracted beside itself). If none is there and
    `download` is true, the official archive is downloaded into `root`, MD5-checked and
    extracted. Raises DataNotFoundError (offline, or download=False) naming every place looked,
    and CorruptDataError for a bad checksum or a truncated or malformed file (named).
    """
    root, source = _resolve_root(root)
    folder = _find_or_fetch(root, source, download)
    classes = _read_classes(folder / META_FILE)
    train = [_read_batch(folder / name) for name in TRAIN_FILES]
    x_test, y_test = _read_batch(folder / TEST_FILE)
    return CIFAR10(
        x_train=np.concatenate([x for x, _ in train]),  # (N_train, 3, 32, 32)
        y_train=np.concatenate([y for _, y in train]),
        x_test=x_test,
        y_test=y_test,
        classes=classes,
    )


def _resolve_root(root):
    """Return (root, where it came from): the argument, else $MINIMOBILE_DATA, else the cache."""
    if root is not None:
        return Path(root).expanduser(), "the `root` argument (--data)"
    env = os.environ.get("MINIMOBILE_DATA")
    if env:
        return Path(env).expanduser(), "the MINIMOBILE_DATA environment variable"
    # Looked up at call time, not import time, so a changed HOME (as in tests) is honoured.
    cache = Path.home() / ".cache" / "minimobile"
    return cache, "the default cache (neither --data nor MINIMOBILE_DATA was given)"


def _find_or_fetch(root, source, download):
    """Return a complete cifar-10-batches-py folder under `root`, extracting or downloading it."""
    folders = [root] if root.name == FOLDER_NAME else [root, root / FOLDER_NAME]
    for folder in folders:
        if not _missing_files(folder):
            return folder
    # A root named like the folder is where the data should end up: fetch into its parent.
    home = root.parent if root.name == FOLDER_NAME else root
    archive = home / ARCHIVE_NAME
    looked = [_describe(folder) for folder in folders] + [_describe(archive)]
    if not archive.is_file():
        if not download:
            raise DataNotFoundError(_not_found_message(
                root, source, looked, f"download=False, so {CIFAR10_URL} was not tried."))
        try:
            home.mkdir(parents=True, exist_ok=True)
            download_url(CIFAR10_URL, archive, md5=CIFAR10_MD5)
        except CorruptDataError as e:
            raise CorruptDataError(_not_found_message(root, source, looked, f"{e}.")) from e
        except (OSError, http.client.HTTPException) as e:
            reason = f"Downloading {CIFAR10_URL} to {archive} failed: {e}."
            raise DataNotFoundError(_not_found_message(root, source, looked, reason)) from e
    _extract(archive, home)
    missing = _missing_files(home / FOLDER_NAME)
    if missing:
        raise CorruptDataError(f"{archive} was extracted but {home / FOLDER_NAME} still lacks "
                               f"{', '.join(missing)}; it is not the CIFAR-10 python archive.")
    return home / FOLDER_NAME


def _missing_files(folder):
    """The required CIFAR-10 files that `folder` lacks (all of them if it is not a folder)."""
    if not folder.is_dir():
        return list(REQUIRED_FILES)
    return [name for name in REQUIRED_FILES if not (folder / name).is_file()]


def _describe(path):
    """One line of the not-found message: a place we looked and what we found there."""
    if path.name == ARCHIVE_NAME:
        return f"{path} (archive): {'present' if path.is_file() else 'does not exist'}"
    if not path.exists():
        return f"{path} (folder): does not exist"
    if not path.is_dir():
        return f"{path} (folder): is a file, not a folder"
    missing = _missing_files(path)
    if len(missing) == len(REQUIRED_FILES):
        return f"{path} (folder): exists but holds no CIFAR-10 batch files"
    return f"{path} (folder): incomplete, lacks {', '.join(missing)}"


def _not_found_message(root, source, looked, reason):
    """The full error text: where we looked, why we gave up, and how to supply the data."""
    places = "\n".join(f"  - {line}" for line in looked)
    return (
        f"CIFAR-10 not found under {root} (from {source}). Looked in:\n{places}\n{reason}\n"
        "To supply the data, either\n"
        "  - pass `--data PATH` on the command line (root=PATH in Python), or\n"
        "  - set the environment variable MINIMOBILE_DATA=PATH,\n"
        f"where PATH is a {FOLDER_NAME} folder, a folder containing one, or a folder containing "
        f"{ARCHIVE_NAME} (from {CIFAR10_URL}, MD5 {CIFAR10_MD5})."
    )


def download_url(url, dest, md5=None, chunk_size=1 << 20):
    """Download `url` to the file `dest` with a progress bar, atomically; return `dest`.

    Bytes go to a temporary file beside `dest`, which is renamed only once complete and (if
    `md5` is given) verified, so an interrupted or corrupted download never looks finished.
    Network failures raise OSError (URLError is one); a checksum mismatch CorruptDataError.
    """
    dest = Path(dest)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as f, _urlopen(url, timeout=60) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                      desc=dest.name) as bar:
                while chunk := response.read(chunk_size):
                    f.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        if md5 is not None and digest.hexdigest() != md5:
            raise CorruptDataError(f"Downloaded {url} has MD5 {digest.hexdigest()}, expected "
                                   f"{md5} (corrupted download, or a proxy page); discarded it")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dest


def _extract(archive, dest):
    """Extract the regular files of `archive` under `dest`, refusing links and escaping paths.

    Each file is written to a temporary name and renamed, so an interrupted extraction leaves
    the folder incomplete (and re-extracted next time) rather than silently truncated.
    """
    dest = dest.resolve()
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                target = (dest / member.name).resolve()
                # Path traversal guard: "../x" or "/etc/x" would resolve outside `dest`.
                if not target.is_relative_to(dest) or not (member.isfile() or member.isdir()):
                    raise CorruptDataError(f"{archive}: refusing to extract {member.name!r} "
                                           f"(a link, device, or path outside {dest})")
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(tar.extractfile(member).read())
                    os.replace(tmp, target)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
    except (tarfile.TarError, gzip.BadGzipFile, zlib.error, EOFError) as e:
        raise CorruptDataError(f"{archive} is not a readable .tar.gz archive ({e}); delete it "
                               "to download it again, or supply the data another way") from e


def _unpickle(path):
    """Read one pickle of the official release (byte-string keys), naming `path` on failure.

    Unpickling can run code, so only point this at files you trust (the download is MD5-checked).
    """
    try:
        with open(path, "rb") as f:
            return pickle.load(f, encoding="bytes")
    except OSError:
        raise
    except Exception as e:  # a truncated pickle fails in many ways: EOF, UnpicklingError, ...
        raise CorruptDataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                               "replace it (or delete it to re-extract or re-download)") from e


def _read_batch(path):
    """Read one batch file into (x (n, 3, 32, 32) uint8, y (n,) int64), checking its shape."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CorruptDataError(f"{path}: expected a dict with keys b'data' and b'labels'")
    x = np.asarray(batch[b"data"])
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != ROW_LENGTH:
        raise CorruptDataError(f"{path}: b'data' is {x.dtype} of shape {x.shape}, expected "
                               f"uint8 of shape (n, {ROW_LENGTH}) (one 3x32x32 image per row)")
    try:
        y = np.asarray(batch[b"labels"], dtype=np.int64)
    except (TypeError, ValueError) as e:
        raise CorruptDataError(f"{path}: b'labels' is not a list of integers ({e})") from e
    if y.shape != (len(x),):
        raise CorruptDataError(f"{path}: {len(x)} images but {y.size} labels (shape {y.shape})")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise CorruptDataError(f"{path}: labels range over {y.min()}..{y.max()}, expected 0..9")
    return x.reshape(-1, 3, 32, 32), y  # rows are channel-planar, so this is NCHW


def _read_classes(path):
    """The 10 class names from batches.meta, decoded to str."""
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if names is None or len(names) != NUM_CLASSES:
        raise CorruptDataError(f"{path}: expected b'label_names' with {NUM_CLASSES} names")
    return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)


def write_fake_cifar10(root, n_train_per_batch=20, n_test=20, seed=0, as_archive=False):
    """Write a tiny random CIFAR-10 in the official layout under `root`; return its path.

    Random uint8 images, labels cycling through 0..9 (so every class appears when n >= 10) in
    shuffled order. Returns `root/cifar-10-batches-py`, or with `as_archive` only
    `root/cifar-10-python.tar.gz` (whose MD5 is of course not the official one).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer",
             b"dog", b"frog", b"horse", b"ship", b"truck"]
    files = {META_FILE: {b"label_names": names, b"num_cases_per_batch": n_train_per_batch,
                         b"num_vis": ROW_LENGTH}}
    batches = [(name, f"training batch {i + 1} of 5", n_train_per_batch)
               for i, name in enumerate(TRAIN_FILES)]
    batches.append((TEST_FILE, "testing batch 1 of 1", n_test))
    for name, label, n in batches:
        files[name] = {
            b"batch_label": label.encode(),
            b"labels": rng.permutation(np.arange(n) % NUM_CLASSES).tolist(),
            b"data": rng.integers(0, 256, size=(n, ROW_LENGTH), dtype=np.uint8),
            b"filenames": [f"fake_{name}_{i:05d}.png".encode() for i in range(n)],
        }
    payloads = {name: pickle.dumps(obj, protocol=4) for name, obj in files.items()}
    if as_archive:
        path = root / ARCHIVE_NAME
        with tarfile.open(path, "w:gz") as tar:
            for name, payload in payloads.items():
                info = tarfile.TarInfo(f"{FOLDER_NAME}/{name}")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
        return path
    folder = root / FOLDER_NAME
    folder.mkdir(exist_ok=True)
    for name, payload in payloads.items():
        (folder / name).write_bytes(payload)
    return folder


def normalize(x_uint8, mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=np.float32):
    """Per-channel standardisation: out = (x / 255 - mean) / std, for x in 0..255.

    x: (N, C, H, W) with C = len(mean); out: same shape, `dtype`. Computed as x * scale - shift
    in `dtype`, in place on one copy, so a float32 batch never goes through float64.
    """
    mean = np.asarray(mean, dtype=np.float64).reshape(1, -1, 1, 1)
    std = np.asarray(std, dtype=np.float64).reshape(1, -1, 1, 1)
    out = x_uint8.astype(dtype)  # (N, C, H, W), a copy we may overwrite
    out *= (1.0 / (255.0 * std)).astype(dtype)
    out -= (mean / std).astype(dtype)
    return out


@njit(cache=True, parallel=True)
def crop_flip_kernel(out, x, dy, dx, flipped, padding):
    """Kernel of crop_flip: reads x directly, treating out-of-range pixels as the zero padding.

    Never materialises the padded array, which would be 1.6x the input. Debug with
    NUMBA_DISABLE_JIT=1, or call crop_flip_kernel.py_func(...) for plain Python.
    """
    N, C, H, W = x.shape
    for n in prange(N):  # thread n alone writes out[n]: disjoint, so deterministic
        # Output column j reads source column base + step * j; hoisting the flip out of the
        # pixel loop and zeroing padded rows whole halves the time of a per-pixel test.
        step = -1 if flipped[n] else 1
        base = W - 1 + dx[n] - padding if flipped[n] else dx[n] - padding
        for c in range(C):
            for i in range(H):
                si = i + dy[n] - padding
                if si < 0 or si >= H:
                    out[n, c, i, :] = 0
                    continue
                for j in range(W):
                    sj = base + step * j
                    out[n, c, i, j] = x[n, c, si, sj] if 0 <= sj < W else 0


def crop_flip(x, dy, dx, flipped, padding=4):
    """Crop each image from its zero-padded version at (dy[n], dx[n]), then mirror if flipped[n].

    out[n, c, i, j] = xp[n, c, i + dy[n], j' + dx[n]] with xp = x padded by `padding` zeros on
    each side and j' = W-1-j when flipped[n] else j (crop then flip, torchvision's order).
    x: (N, C, H, W), any dtype; dy, dx: (N,) ints in 0..2*padding; out: same shape and dtype.
    Deterministic; random_crop_flip draws the arguments.
    """
    x = np.ascontiguousarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected images of shape (N, C, H, W), got {x.shape}")
    dy, dx = np.asarray(dy, dtype=np.int64), np.asarray(dx, dtype=np.int64)
    flipped = np.asarray(flipped, dtype=np.bool_)
    if not dy.shape == dx.shape == flipped.shape == (len(x),):
        raise ValueError(f"dy, dx and flipped need shape ({len(x)},)")
    if len(x) and (min(dy.min(), dx.min()) < 0 or max(dy.max(), dx.max()) > 2 * padding):
        raise ValueError(f"crop offsets must lie in 0..{2 * padding}")
    out = np.empty_like(x)
    crop_flip_kernel(out, x, dy, dx, flipped, padding)
    return out


def random_crop_flip(x, rng, padding=4, flip=True):
    """Standard CIFAR augmentation: random crop from a zero-padded image, random mirror.

    x: (N, C, H, W), uint8 (recommended: augment before normalize, so padding is black, as in
    torchvision's RandomCrop on images) or float; out: same shape and dtype. Offsets are uniform
    in 0..2*padding, each image flipped with probability 0.5 (if `flip`). All randomness comes
    from `rng` (np.random.Generator), so the result is fixed by its state.
    """
    N = len(x)
    dy, dx = rng.integers(0, 2 * padding + 1, size=(2, N))
    flipped = rng.random(N) < 0.5 if flip else np.zeros(N, dtype=np.bool_)
    return crop_flip(x, dy, dx, flipped, padding)


def iterate_minibatches(x, y, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield (x[idx], y[idx]) minibatches covering each sample once: one epoch.

    With `shuffle`, the order is rng.permutation(N) drawn from the explicit `rng` (required);
    the last batch is smaller unless `drop_last`. Arguments are checked at call time, not at
    the first next().
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if shuffle and rng is None:
        raise ValueError("shuffle=True needs an explicit rng=np.random.default_rng(seed)")
    order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    stop = len(x) - len(x) % batch_size if drop_last else len(x)
    return ((x[order[i:i + batch_size]], y[order[i:i + batch_size]])
            for i in range(0, stop, batch_size))


class Batches:
    """A tiny DataLoader: each iteration is one epoch of normalised float32 (xb, yb) batches.

    Per epoch: shuffle (if `shuffle`), slice, random_crop_flip (if `augment`), normalize.
    xb: (B, 3, 32, 32) float32, yb: (B,) int64. All randomness comes from `self.rng`, so
    saving `rng.bit_generator.state` between epochs and restoring it replays the next epoch
    exactly (the trainer's resume); the permutation is drawn when the epoch starts.
    """

    def __init__(self, x, y, batch_size, *, augment=False, shuffle=True, drop_last=False,
                 rng=None):
        if (augment or shuffle) and rng is None:
            raise ValueError("augment or shuffle needs an explicit rng=np.random.default_rng(seed)")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.augment, self.shuffle, self.drop_last, self.rng = augment, shuffle, drop_last, rng

    def __len__(self):
        full, rest = divmod(len(self.x), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self):
        batches = iterate_minibatches(self.x, self.y, self.batch_size, self.rng,
                                      self.shuffle, self.drop_last)
        for xb, yb in batches:
            if self.augment:
                xb = random_crop_flip(xb, self.rng)
            yield normalize(xb), yb
