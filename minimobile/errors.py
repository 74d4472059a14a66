"""Exceptions that minimobile raises on purpose."""


class NonFiniteError(FloatingPointError):
    """A loss or activation became NaN or infinite: training must stop, not carry NaN on."""
