"""Exceptions that minimobile raises on purpose."""


class NonFiniteError(FloatingPointError):
    """A loss or activation became NaN or infinite: training must stop, not carry NaN on."""


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 is neither on disk nor downloadable; the message lists where we looked."""


class CorruptDataError(RuntimeError):
    """A file was found but is not valid CIFAR-10 (bad checksum, truncated, wrong shape)."""


class CorruptCheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read (not an .npz archive, truncated, bad meta)."""
