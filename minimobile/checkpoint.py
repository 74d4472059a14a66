"""Checkpoints: named arrays plus a JSON dict of metadata in one `.npz` file, written atomically.

`save` writes to a temporary file in the destination's folder, fsyncs it and renames it over the
destination (`os.replace`), so a crash, a full disk or Ctrl-C mid-write leaves the previous file
whole. The metadata travels inside the archive as UTF-8 JSON bytes under the key `__meta__`, so a
checkpoint is one file that `np.load(path)` can open without pickle.
"""

import errno
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import CorruptCheckpointError  # noqa: F401 (re-exported for callers)
from .validation import require

META_KEY = "__meta__"
# The trainer's checkpoints hold more than a model; their model arrays carry this key prefix.
MODEL_PREFIX = "model/"
# A run that keeps an EMA of its weights (train --ema) stores the averaged model under this one.
EMA_PREFIX = "ema/"


@contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside `path` for writing; on success fsync it and rename it onto
    `path`, on any exception delete it and leave `path` as it was. Yields the open file."""
    if mode not in ("w", "wb"):
        # The file is replaced whole by what was written, so "a" would keep only the appended
        # text and "r" would empty it.
        raise ValueError(f"atomic_open: expected mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder; give a file name", str(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # name the file we were asked to write, not our temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    try:
        # mkstemp makes the file private (0600); give it the permissions open() would have.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def temporary_files(folder, names):
    """The temporary files that atomic_open left in `folder` for the given target names when
    its process was killed mid-write (a kill -9 or a power cut skips its clean-up)."""
    _check_names(names, "temporary_files")
    folder = Path(folder)
    return sorted(p for name in names for p in folder.glob(f".{name}.*.tmp") if p.is_file())


def remove_temporary_files(folder, names):
    """Delete what `temporary_files` finds; returns the paths removed. Call it only when no
    other process writes into `folder` (the trainer does, at the start of a run)."""
    _check_names(names, "remove_temporary_files")
    removed = []
    for path in temporary_files(folder, names):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


def _check_names(names, caller):
    # One name given bare would be read letter by letter and find nothing, with no error.
    require(not isinstance(names, (str, bytes, Path)), f"{caller}: names",
            "a list of file names, such as ['last.npz']", names)


def _fsync_folder(folder):
    # The rename itself lives in the folder's entry table: without this a power cut could undo
    # it. Windows cannot open a folder, and does not need this, so it is skipped there.
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _to_json(value):
    """json.dumps' fallback for NumPy scalars and arrays and for paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def save(path, arrays, meta=None):
    """Write `arrays` (name -> array or scalar) and `meta` (a JSON-serialisable dict) to `path`.

    Atomic: the file at `path` is either the previous one or the complete new one. Scalars come
    back from `load` as 0-d arrays. Object arrays are refused, since `load` never unpickles.
    """
    if not isinstance(arrays, Mapping):
        raise ValueError(f"save: expected arrays as a mapping of names to arrays (a model's "
                         f"state_dict(), or save_model for a model), got {type(arrays).__name__}")
    if not (meta is None or isinstance(meta, Mapping)):
        # load() refuses a file whose metadata is not a JSON object: refuse to write one.
        raise ValueError(f"save: expected meta to be a dict or None, got {type(meta).__name__}")
    payload = {}
    for key, value in arrays.items():
        if key == META_KEY:
            raise ValueError(f"save: the key {META_KEY!r} is reserved for the metadata")
        value = np.asarray(value)
        if value.dtype.hasobject:
            raise ValueError(f"save: {key!r} is an object array; only numeric arrays are stored")
        payload[key] = value
    text = json.dumps(meta or {}, default=_to_json)
    payload[META_KEY] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    with atomic_open(path) as f:
        np.savez(f, **payload)  # a file object, so np.savez adds no ".npz" to the name
    return Path(path)


ZIP_MAGIC = b"PK\x03\x04"  # how every .npz (a zip archive) begins


def _open(path):
    path = Path(path)
    if path.is_dir():
        raise CorruptCheckpointError(f"{path} is a folder, not a checkpoint: pass a file in it, "
                                     f"such as {path / 'best.npz'}")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(ZIP_MAGIC))
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} does not exist") from None
    except OSError as e:
        raise CorruptCheckpointError(f"cannot read checkpoint {path}: {e.strerror}") from None
    if magic != ZIP_MAGIC:
        # Left to np.load, a text file or a .npy would be read as a pickle, and its error
        # advises allow_pickle=True, which is exactly what must not be done with a stray file.
        raise CorruptCheckpointError(f"{path} is not an .npz checkpoint (it does not start as "
                                     "a zip archive does): pass a best.npz or last.npz "
                                     "written by `minimobile train`")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        # np.load reads anything that is not a zip as a .npy or a pickle, so a stray file
        # surfaces as "pickled data", "truncated" or a bad magic string: say what it means.
        raise CorruptCheckpointError(f"{path} is not a readable .npz checkpoint: truncated, or "
                                     f"another kind of file ({type(e).__name__}: {e})") from e


def _read_meta(path, npz):
    if META_KEY not in npz.files:
        return {}
    try:
        meta = json.loads(npz[META_KEY].tobytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptCheckpointError(f"{path}: the {META_KEY} entry is not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise CorruptCheckpointError(f"{path}: expected the {META_KEY} entry to be a JSON object "
                                     f"of settings, got a JSON {type(meta).__name__}")
    return meta


def load(path):
    """Read a file written by `save`: returns (arrays, meta), arrays a dict of NumPy arrays.

    Raises FileNotFoundError if `path` is missing and CorruptCheckpointError, naming the file,
    if it is not an .npz archive or is truncated.
    """
    npz = _open(path)
    try:
        with npz:
            meta = _read_meta(path, npz)
            arrays = {key: npz[key] for key in npz.files if key != META_KEY}
    except CorruptCheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(f"{path} is truncated or corrupt "
                                     f"({type(e).__name__}: {e})") from e
    return arrays, meta


def load_meta(path):
    """Only the metadata of a checkpoint: the arrays stay on disk (an .npz is read lazily)."""
    npz = _open(path)
    try:
        with npz:
            return _read_meta(path, npz)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise CorruptCheckpointError(f"{path} is truncated or corrupt "
                                     f"({type(e).__name__}: {e})") from e


def save_model(path, model, **meta):
    """Save `model.state_dict()` (parameters and buffers, PyTorch's key names) and `meta`."""
    return save(path, model.state_dict(), meta)


def model_arrays(arrays, ema=True):
    """The model's state dict within a checkpoint's arrays: the whole of a `save_model` file, or
    the `ema/`-prefixed entries of a trainer checkpoint that has them (its averaged model, the
    one it evaluated) when `ema`, else its `model/`-prefixed ones (the live weights a resume
    continues from), with the prefix removed."""
    for prefix in (EMA_PREFIX, MODEL_PREFIX) if ema else (MODEL_PREFIX,):
        if any(key.startswith(prefix) for key in arrays):
            return {key[len(prefix):]: value for key, value in arrays.items()
                    if key.startswith(prefix)}
    return arrays


def load_model(path, model, ema=True):
    """Load the state dict saved in `path` (by `save_model` or the trainer; its EMA model if it
    kept one and `ema`, else its live weights) into `model`, in place; returns the file's meta. Missing, unexpected or
    mis-shaped keys fail the whole load with Module.load_state_dict's list of them, prefixed by
    the file name."""
    arrays, meta = load(path)
    try:
        model.load_state_dict(model_arrays(arrays, ema))
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return meta
