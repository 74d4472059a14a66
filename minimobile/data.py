"""CIFAR-10 in, minibatches out: find, download, verify and read the official python release,
then augment (random crop and flip), normalise, resize (for the resolution multiplier) and
batch it.

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
from tqdm import tqdm  # the plain bar: tqdm.auto would want ipywidgets in notebooks

from .augment import crop_flip_kernel
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

DEFAULT_SOURCE = "the default cache (neither --data nor MINIMOBILE_DATA was given)"

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
    extracted; an archive already there is MD5-checked too. Only the default cache folder is
    created: a `root` or $MINIMOBILE_DATA that does not exist raises DataNotFoundError. Raises DataNotFoundError (offline, or download=False) naming every place looked,
    and CorruptDataError for a bad checksum or a truncated or malformed file (named).
    """
    folder = find_cifar10(root, download)
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


def find_cifar10(root=None, download=True):
    """The cifar-10-batches-py folder load_cifar10(root, download) would read, fetched or
    extracted first if needed, without reading it (the sweep resolves it once for its trials)."""
    return _find_or_fetch(*_resolve_root(root), download)


def _resolve_root(root):
    """Return (root, where it came from): the argument, else $MINIMOBILE_DATA, else the cache."""
    if root is not None:
        return Path(root).expanduser(), "the `root` argument (--data)"
    env = os.environ.get("MINIMOBILE_DATA")
    if env:
        return Path(env).expanduser(), "the MINIMOBILE_DATA environment variable"
    # Looked up at call time, not import time, so a changed HOME (as in tests) is honoured.
    cache = Path.home() / ".cache" / "minimobile"
    return cache, DEFAULT_SOURCE


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
    if archive.is_file():
        _check_md5(archive)
    else:
        if not download:
            raise DataNotFoundError(_not_found_message(
                root, source, looked, f"download=False, so {CIFAR10_URL} was not tried."))
        if not home.is_dir() and source != DEFAULT_SOURCE:
            # Only the default cache is ours to create: a mistyped --data must not become a
            # new folder holding a 170 MB download.
            what = "is a file" if home.exists() else "does not exist"
            raise DataNotFoundError(_not_found_message(
                root, source, looked, f"{home} {what}, so nothing was downloaded into it "
                "(check the path for a typo, or create the folder first)."))
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


def file_md5(path, chunk_size=1 << 20):
    """The MD5 hex digest of the file at `path`, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def _check_md5(archive):
    """Refuse a local archive that is not the official one, as a download would be refused."""
    md5 = file_md5(archive)
    if md5 != CIFAR10_MD5:
        raise CorruptDataError(f"{archive} has MD5 {md5}, not the official {CIFAR10_MD5}: it is "
                               "truncated or not the CIFAR-10 python archive; delete it (it is "
                               "then downloaded again) or pass the extracted folder with --data")


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


def _reconstruct(cls, shape, dtype):
    # How NumPy's pickles start an array: an empty one, filled by the BUILD that follows.
    if cls is not np.ndarray:
        raise pickle.UnpicklingError(f"an array of class {cls!r}")
    return np.ndarray.__new__(np.ndarray, shape, dtype)


def _uint8_dtype(name, align=False, copy=False):
    if name != "u1":
        raise pickle.UnpicklingError(f"an array of dtype {name!r} (the official files hold "
                                     "only uint8 images)")
    return np.dtype(name, align, copy)


def _latin1_encode(text, encoding="latin1"):
    # Python 3 pickles bytes at protocol 2 as _codecs.encode(str, "latin1").
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r}")
    return text.encode("latin1")


# Everything a CIFAR-10 python batch may ask the unpickler for: NumPy's three names for
# rebuilding a uint8 array (under NumPy 1's module path and NumPy 2's), and the bytes helper of
# protocol-2 pickles written by Python 3. Anything else (os.system, builtins.eval, ...) is
# refused, so a tampered file cannot run code when it is loaded.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _uint8_dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, ints, bytes and uint8 NumPy arrays."""

    def find_class(self, module, name):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which no CIFAR-10 "
                                         "file contains") from None


def _unpickle(path):
    """Read one pickle of the official release (byte-string keys), naming `path` on failure.

    A restricted unpickler: only dicts, lists, numbers, bytes and uint8 arrays can come out of
    it, so a file that asks for anything else (which is how a pickle runs code) is refused.
    """
    try:
        with open(path, "rb") as f:
            return _CifarUnpickler(f, encoding="bytes").load()
    except OSError:
        raise
    except pickle.UnpicklingError as e:
        raise CorruptDataError(f"{path} is not a CIFAR-10 batch file and was not loaded ({e}); "
                               "replace it with the official file") from None
    except Exception as e:  # a truncated pickle fails in many ways: EOF, UnpicklingError, ...
        raise CorruptDataError(f"{path} is truncated or corrupt ({type(e).__name__}: {e}); "
                               "replace it (or delete it to re-extract or re-download)") from None


def _read_batch(path):
    """Read one batch file into (x (n, 3, 32, 32) uint8, y (n,) int64), checking its shape."""
    batch = _unpickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CorruptDataError(f"{path}: expected a dict with keys b'data' and b'labels'")
    try:
        x = np.asarray(batch[b"data"])
    except ValueError as e:  # rows of different lengths, say
        raise CorruptDataError(f"{path}: b'data' is not an array of images, expected uint8 of "
                               f"shape (n, {ROW_LENGTH}) ({e})") from None
    if x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != ROW_LENGTH:
        raise CorruptDataError(f"{path}: b'data' is {x.dtype} of shape {x.shape}, expected "
                               f"uint8 of shape (n, {ROW_LENGTH}) (one 3x32x32 image per row)")
    labels = batch[b"labels"]
    # Official labels are a list of Python ints. Anything else (floats, strings, bools) is
    # refused rather than converted, since int64 conversion would truncate 3.7 to 3 silently.
    if not (isinstance(labels, list) and all(type(v) is int for v in labels)):
        kinds = sorted({type(v).__name__ for v in labels}) if isinstance(labels, list) else []
        raise CorruptDataError(f"{path}: b'labels' must be a list of integers, got "
                               f"{type(labels).__name__}"
                               + (f" of {', '.join(kinds)}" if kinds else "")
                               + "; replace the file with the official one")
    y = np.array(labels, dtype=np.int64)
    if y.shape != (len(x),):
        raise CorruptDataError(f"{path}: {len(x)} images but {y.size} labels (shape {y.shape})")
    if y.size and (y.min() < 0 or y.max() >= NUM_CLASSES):
        raise CorruptDataError(f"{path}: labels range over {y.min()}..{y.max()}, expected 0..9")
    return x.reshape(-1, 3, 32, 32), y  # rows are channel-planar, so this is NCHW


def _read_classes(path):
    """The 10 class names from batches.meta, decoded to str."""
    meta = _unpickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, (list, tuple)) or len(names) != NUM_CLASSES:
        got = (f"{len(names)} names" if isinstance(names, (list, tuple)) else
               "no such entry" if names is None else type(names).__name__)
        raise CorruptDataError(f"{path}: expected b'label_names', a list of {NUM_CLASSES} names, "
                               f"got {got}")
    try:
        return tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names)
    except UnicodeDecodeError as e:
        raise CorruptDataError(f"{path}: the class names in b'label_names' are not UTF-8 text "
                               f"({e}); replace the file with the official one") from None


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
        raise ValueError(f"crop_flip: dy, dx and flipped need shape ({len(x)},), got "
                         f"{dy.shape}, {dx.shape} and {flipped.shape}")
    if len(x) and (min(dy.min(), dx.min()) < 0 or max(dy.max(), dx.max()) > 2 * padding):
        raise ValueError(f"crop_flip: crop offsets must lie in 0..{2 * padding}, got dy in "
                         f"{dy.min()}..{dy.max()} and dx in {dx.min()}..{dx.max()}")
    out = np.empty_like(x)
    crop_flip_kernel(out, x, dy, dx, flipped, padding)
    return out


def random_crop_flip(x, rng, padding=4, flip=True):
    """Standard CIFAR augmentation: random crop from a zero-padded image, random mirror.

    x: (N, C, H, W), uint8 (recommended: augment before normalize, so padding is black, as in
    torchvision's RandomCrop on images) or float; out: same shape and dtype. Offsets are uniform
    in 0..2*padding. `flip`: True flips each image with probability 0.5, False never, or an (N,)
    bool array says which to flip (the alternating flips of Batches). All randomness comes from
    `rng` (np.random.Generator), so the result is fixed by its state.
    """
    N = len(x)
    dy, dx = rng.integers(0, 2 * padding + 1, size=(2, N))
    if isinstance(flip, np.ndarray):
        flipped = flip
    else:
        flipped = rng.random(N) < 0.5 if flip else np.zeros(N, dtype=np.bool_)
    return crop_flip(x, dy, dx, flipped, padding)


def cutout(x, size, rng):
    """DeVries and Taylor's cutout (2017): zero one size x size square per image, in place.

    Each square's centre is uniform over the image and the square is clipped at the borders,
    as in the paper, so a square near an edge covers less. Apply it to normalised images: 0 is
    then the dataset's mean colour, as in the paper's code. x: (N, C, H, W) float; rng draws
    the 2N centres (rows, then columns). Returns x.
    """
    N, _, H, W = x.shape
    cy, cx = rng.integers(0, H, N), rng.integers(0, W, N)
    rows, cols = np.arange(H), np.arange(W)
    top, left = cy - size // 2, cx - size // 2
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (N, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (N, W)
    hole = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (N, 1, H, W)
    np.copyto(x, 0, where=hole)
    return x


# The input resolutions the trainer accepts (TrainConfig.resolution, --resolution): from 8, where
# every network's last map is 1x1, to 1024, where V1 already takes seconds per forward.
MIN_RESOLUTION, MAX_RESOLUTION = 8, 1024


def bilinear_matrix(n_in, n_out, dtype=np.float64):
    """The (n_out, n_in) matrix of 1-D bilinear resampling with half-pixel centres.

    Output pixel i reads the input at s = (i + 0.5) * n_in / n_out - 0.5, clamped to
    [0, n_in - 1], as (1 - t) * in[floor(s)] + t * in[floor(s) + 1] with t = s - floor(s):
    two non-zeros per row, summing to 1. This is PyTorch's F.interpolate(mode="bilinear",
    align_corners=False) without antialiasing (and TensorFlow 2's tf.image.resize).
    """
    s = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    t = s - i0
    R = np.zeros((n_out, n_in))
    np.add.at(R, (np.arange(n_out), i0), 1 - t)  # add.at: i0 == i1 at the last input pixel
    np.add.at(R, (np.arange(n_out), i1), t)
    return R.astype(dtype)


def resize(x, resolution):
    """Bilinear resize of images x (N, C, H, W) to (N, C, R, R), R = resolution.

    Separable: out = Ry @ x @ Rx.T with Ry = bilinear_matrix(H, R), Rx = bilinear_matrix(W, R),
    two small matrix products in x's dtype (float). Returns x itself, not a copy, when it is
    already R x R, so resolution 32 on CIFAR changes nothing, bit for bit. Downsampling is not
    antialiased (PyTorch's default), which is harmless at CIFAR's mild factors (32 to 24).
    """
    if np.ndim(x) != 4:
        raise ValueError(f"resize: expected images of shape (N, C, H, W), got shape "
                         f"{np.shape(x)}")
    if not (isinstance(resolution, (int, np.integer)) and resolution >= 1):
        raise ValueError(f"resize: expected a resolution that is an integer >= 1, "
                         f"got {resolution!r}")
    N, C, H, W = x.shape
    if H == W == resolution:
        return x
    Ry = bilinear_matrix(H, resolution, x.dtype)  # (R, H)
    Rx = bilinear_matrix(W, resolution, x.dtype)  # (R, W)
    return np.ascontiguousarray((Ry @ x) @ Rx.T)  # (N, C, R, W) then (N, C, R, R)


def iterate_minibatches(x, y, batch_size, rng=None, shuffle=True, drop_last=False):
    """Yield (x[idx], y[idx]) minibatches covering each sample once: one epoch.

    With `shuffle`, the order is rng.permutation(N) drawn from the explicit `rng` (required);
    the last batch is smaller unless `drop_last`. Arguments are checked at call time, not at
    the first next().
    """
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if shuffle and rng is None:
        raise ValueError("shuffle=True needs an explicit rng=np.random.default_rng(seed)")
    return ((x[idx], y[idx]) for idx in minibatch_indices(len(x), batch_size, rng, shuffle,
                                                          drop_last))


def minibatch_indices(N, batch_size, rng=None, shuffle=True, drop_last=False):
    """The index arrays of one epoch's minibatches over N samples: slices of rng.permutation(N)
    (drawn now) or of arange(N); the last one shorter unless drop_last."""
    order = rng.permutation(N) if shuffle else np.arange(N)
    stop = N - N % batch_size if drop_last else N
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


FLIP_MODES = ("random", "alternate")


class Batches:
    """A tiny DataLoader: each iteration is one epoch of normalised float32 (xb, yb) batches.

    Per epoch: shuffle (if `shuffle`), slice, random_crop_flip (if `augment`; crops from
    `crop_padding` px of zeros, so shifts of up to that many px each way), normalize, cutout
    (if `cutout` > 0, a square of that side, in the stored image's pixels), resize to
    `resolution` (None: as stored). xb: (B, 3, R, R) float32, yb: (B,) int64. All
    randomness comes from `self.rng`, so saving `rng.bit_generator.state` between epochs and
    restoring it replays the next epoch exactly (the trainer's resume); the permutation is
    drawn when the epoch starts.

    flip="alternate" is airbench's de-randomised flip (Jordan, 2024): a random half of the
    images, drawn from `rng` when the Batches is made, is flipped in the first epoch and every
    second one after it, the other half in the epochs between, so every image is seen both
    ways in any two consecutive epochs. The parity comes from `self.epoch`, the number of
    epochs already done, which each iteration increments; a resumed run sets it (and must
    rebuild its Batches from the same seed).

    Setting `self.order` (an index array) makes the next epoch take those images in that
    order instead of a permutation of all of them (the trainer's data pruning); while an epoch
    runs, `self.batch_indices` holds the indices of the batch last yielded.
    """

    def __init__(self, x, y, batch_size, *, augment=False, shuffle=True, drop_last=False,
                 rng=None, flip="random", cutout=0, resolution=None, crop_padding=4):
        if (augment or shuffle or cutout) and rng is None:
            raise ValueError("augment, shuffle or cutout needs an explicit "
                             "rng=np.random.default_rng(seed)")
        if flip not in FLIP_MODES:
            raise ValueError(f"flip must be one of {FLIP_MODES}, got {flip!r}")
        if not (isinstance(cutout, (int, np.integer)) and 0 <= cutout <= x.shape[-1]):
            raise ValueError(f"cutout must be an integer from 0 to {x.shape[-1]}, got {cutout!r}")
        if not (isinstance(crop_padding, (int, np.integer)) and 0 <= crop_padding <= x.shape[-1]):
            raise ValueError(f"crop_padding must be an integer from 0 to {x.shape[-1]}, "
                             f"got {crop_padding!r}")
        if not (resolution is None or isinstance(resolution, (int, np.integer))
                and MIN_RESOLUTION <= resolution <= MAX_RESOLUTION):
            raise ValueError(f"resolution must be None or an integer from {MIN_RESOLUTION} to "
                             f"{MAX_RESOLUTION}, got {resolution!r}")
        if len(x) != len(y):
            raise ValueError(f"Batches: x has {len(x)} images but y has {len(y)} labels")
        if not (isinstance(batch_size, (int, np.integer)) and batch_size >= 1):
            raise ValueError(f"Batches: batch_size must be an integer >= 1, got {batch_size!r}")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.augment, self.shuffle, self.drop_last, self.rng = augment, shuffle, drop_last, rng
        self.flip, self.cutout, self.epoch = flip, int(cutout), 0
        self.resolution, self.crop_padding = resolution, int(crop_padding)
        # The next epoch's image indices in order, if set (data pruning: minimobile.pruning);
        # used once, then the epochs go back to shuffling all of x.
        self.order, self.batch_indices = None, None
        # Drawn only in this mode, so the default's random stream is what it always was.
        self.flip_first = (rng.random(len(x)) < 0.5 if augment and flip == "alternate"
                           else None)

    def __len__(self):
        full, rest = divmod(len(self.x), self.batch_size)
        return full if self.drop_last or rest == 0 else full + 1

    def __iter__(self):
        if self.order is not None:  # this epoch's images, in order, chosen by the caller
            order, self.order = self.order, None
            stop = len(order) - len(order) % self.batch_size if self.drop_last else len(order)
            batches = [order[i:i + self.batch_size] for i in range(0, stop, self.batch_size)]
        else:
            batches = minibatch_indices(len(self.x), self.batch_size, self.rng, self.shuffle,
                                        self.drop_last)
        odd = self.epoch % 2 == 1
        self.epoch += 1
        for idx in batches:
            self.batch_indices = idx  # which images the batch being yielded holds
            xb, yb = self.x[idx], self.y[idx]
            if self.augment:
                flip = True if self.flip_first is None else self.flip_first[idx] ^ odd
                xb = random_crop_flip(xb, self.rng, padding=self.crop_padding, flip=flip)
            xb = normalize(xb)
            if self.cutout:
                cutout(xb, self.cutout, self.rng)
            if self.resolution is not None:
                xb = resize(xb, self.resolution)  # (B, 3, R, R); no random draws
            yield xb, yb
