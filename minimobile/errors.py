"""Exceptions that minimobile raises on purpose.

Each names a mistake the user can fix; the command line prints its message as one line (exit
code 1, or 2 for ConfigError and SettingError, settings that cannot work) and never a
traceback.
"""


class NonFiniteError(FloatingPointError):
    """A loss or activation became NaN or infinite: training must stop, not carry NaN on."""


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is neither on disk nor downloadable; the message lists where we looked."""


class CorruptDataError(RuntimeError):
    """A file was found but is not valid CIFAR-10 (bad checksum, truncated, wrong shape, or a
    pickle that asks for more than the official files contain)."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (not an .npz archive, truncated, bad meta)."""


class CheckpointMismatchError(ValueError):
    """A readable checkpoint whose arrays do not fit the network (missing or unexpected keys,
    wrong shapes, another architecture), or that holds NaN weights."""


class CorruptHistoryError(ValueError):
    """A history.csv that is not the one `minimobile train` writes."""


class SettingError(ValueError):
    """An environment variable that minimobile reads on import (MINIMOBILE_KERNELS,
    MINIMOBILE_BLAS_THREADS) holds a value it cannot use. `import minimobile` does not raise
    it: the first kernel call does, and the command line prints it as one line (exit code 2)
    before it runs anything, so a typo in the environment is never a traceback."""


class ConfigError(ValueError):
    """Settings that cannot work together or with the data (a batch larger than the training
    set): a usage error, found only once the data is loaded."""


class OutputError(OSError):
    """An output (run folder, checkpoint, PNG, ONNX file) cannot be written: read-only folder,
    a path under a file, a full disk. What was written before is kept."""
