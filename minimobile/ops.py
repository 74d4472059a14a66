"""The functional ops: pure `*_forward(...) -> (out, cache)` and `*_backward(dout, cache)`.

Arrays are NCHW; weights use PyTorch's layouts so state dicts map one to one. float32 and
float64 both work; an op never mixes them. Each backward returns the gradients in the order of
the forward's array arguments. The derivations live in the notebooks; the loops live in
`minimobile.kernels`, one staircase per op (readable loops, a simple Numba kernel, the fast
kernels), and every op here runs on the rung that `minimobile.kernels.use` selects.
"""

from typing import NamedTuple, Optional

import numpy as np

from . import kernels, tuning
from .errors import NonFiniteError
from .validation import is_number
from .kernels import batchnorm as bn_kernels
from .kernels import depthwise, elementwise, matmul

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------------------
# Input checks: every message names the op, what was expected and what came.
# --------------------------------------------------------------------------------------------


def _check_float(op, name, a, ndim=None):
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{op}: expected {name} to be a numpy array, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{op}: expected {name} of dtype float32 or float64, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(
            f"{op}: expected {name} of rank {ndim}, got shape {a.shape} (rank {a.ndim})")
    return np.ascontiguousarray(a)


def _check_same_dtype(op, x, reference="x", **others):
    for name, a in others.items():
        if a is not None and a.dtype != x.dtype:
            raise ValueError(f"{op}: expected {name} of dtype {x.dtype} like {reference}, "
                             f"got {a.dtype}")


def _check_shape(op, name, a, expected):
    if a.shape != tuple(expected):
        raise ValueError(f"{op}: expected {name} of shape {tuple(expected)}, got {a.shape}")


def _check_normalized(op, normalized):
    """A NormalizedMap's input, checked with its constants: the kernels read scale[c] and
    shift[c] for every channel of x, so constants of another length would read past their
    end, and an unknown activation has no code."""
    x = _check_float(op, "the NormalizedMap's x", normalized.x, 4)
    C = x.shape[1]
    for name in ("scale", "shift"):
        a = _check_float(op, f"the NormalizedMap's {name}", getattr(normalized, name), 1)
        _check_same_dtype(op, x, "the NormalizedMap's x", **{name: a})
        _check_shape(op, f"the NormalizedMap's {name}", a, (C,))
    if normalized.activation not in bn_kernels.ACTIVATION_CODES:
        raise ValueError(f"{op}: expected the NormalizedMap's activation to be None or one of "
                         f"{FUSABLE_ACTIVATIONS}, got {normalized.activation!r}")
    return x


def _check_dout(op, dout, expected_shape, dtype):
    dout = _check_float(op + " backward", "dout", dout)
    _check_shape(op + " backward", "dout", dout, expected_shape)
    if dout.dtype != dtype:
        raise ValueError(f"{op} backward: expected dout of dtype {dtype}, got {dout.dtype}")
    return dout


def conv_output_size(size, kernel_size, stride, padding):
    """Output length of a convolution along one axis: floor((size + 2p - K) / s) + 1."""
    return (size + 2 * padding - kernel_size) // stride + 1


def _check_conv_geometry(op, H, W, K, stride, padding):
    for name, value in (("stride", stride), ("padding", padding)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{op}: expected {name} to be an integer, got {value!r}")
    if stride < 1 or padding < 0:
        raise ValueError(f"{op}: expected stride >= 1 and padding >= 0, got stride={stride}, "
                         f"padding={padding}")
    if H + 2 * padding < K or W + 2 * padding < K:
        raise ValueError(f"{op}: kernel {K}x{K} does not fit input {H}x{W} with padding "
                         f"{padding}")


# --------------------------------------------------------------------------------------------
# Standard convolution (the stem; the dense conv of the cost comparison)
# --------------------------------------------------------------------------------------------


class Conv2dCache(NamedTuple):
    x: np.ndarray  # the fast backward rebuilds its im2col columns from x (kernels/matmul.py)
    w: np.ndarray
    stride: int
    padding: int


def conv2d_forward(x, w, stride=1, padding=0):
    """out[n] = W (C_out, C_in*K*K) @ im2col(x[n]) (C_in*K*K, Ho*Wo); w (C_out, C_in, K, K).

    The column matrix of one image at a time lives in per-thread scratch; the cache keeps x.
    """
    op = "conv2d"
    x = _check_float(op, "x", x, 4)
    w = _check_float(op, "w", w, 4)
    _check_same_dtype(op, x, w=w)
    N, C, H, W = x.shape
    C_out, C_in, K, K2 = w.shape
    if C_in != C or K != K2:
        raise ValueError(f"{op}: expected w of shape (C_out, {C}, K, K) for x of shape {x.shape}, "
                         f"got {w.shape}")
    _check_conv_geometry(op, H, W, K, stride, padding)
    Ho, Wo = conv_output_size(H, K, stride, padding), conv_output_size(W, K, stride, padding)
    out = np.empty((N, C_out, Ho, Wo), dtype=x.dtype)
    kernels.pick(matmul, "conv2d_forward")(out, x, w, stride, padding)
    return out, Conv2dCache(x, w, stride, padding)


def conv2d_backward(dout, cache):
    """Returns (dx, dw): per image, dw += D[n] @ cols[n]^T and dx[n] = col2im(W^T @ D[n]),
    with D[n] the (C_out, Ho*Wo) matrix of dout[n] and cols[n] = im2col(x[n])."""
    x, w = cache.x, cache.w
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    Ho = conv_output_size(H, K, cache.stride, cache.padding)
    Wo = conv_output_size(W, K, cache.stride, cache.padding)
    dout = _check_dout("conv2d", dout, (N, C_out, Ho, Wo), w.dtype)
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    kernels.pick(matmul, "conv2d_backward")(dx, dw, dout, x, w, cache.stride, cache.padding)
    return dx, dw


# --------------------------------------------------------------------------------------------
# Depthwise convolution
# --------------------------------------------------------------------------------------------


class DepthwiseConv2dCache(NamedTuple):
    x: np.ndarray
    w: np.ndarray
    stride: int
    padding: int
    # When the forward read a NormalizedMap: its scale, shift and activation, and x is the
    # map's x, so the backward recomputes the conv's input act(x * scale + shift) as it reads.
    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    activation: Optional[str] = None
    gradient_sums: Optional["BatchNormGradientSums"] = None  # the NormalizedMap's


class BatchNormGradientSums:
    """Batch norm's backward sums, made by the conv that read its deferred output.

    A batch norm that hands on a NormalizedMap gets its gradient from the one conv that reads
    it. Where that conv's backward can sum, as it writes the gradient, what the batch norm's
    first pass would (kernels/batchnorm.py, 3e), it leaves the sums here with the gradient
    they were made from; batchnorm2d_backward uses them only for that very array, and makes
    its own otherwise. Made by the forward, emptied by the backward. `enabled` False (on the
    class) makes the deferred forward hand on none, so that every batch norm makes its own
    sums and no conv makes them (benchmarks/bench_fused_sums.py times both ways)."""

    __slots__ = ("mean", "rows", "dout")
    enabled = True

    def __init__(self, mean):
        self.mean = mean  # (C,) float64, the batch mean
        # (2, N, C) float64 row sums: kernels.batchnorm.batchnorm2d_backward_from_row_sums
        self.rows = None
        self.dout = None  # the gradient they were summed from

    def take(self, dout):
        """The row sums if they were made from `dout` itself, else None; empties the holder."""
        rows = self.rows if self.dout is dout else None
        self.rows = self.dout = None
        return rows


class BatchNormStatistics:
    """Batch norm's forward statistics, made by the conv that made its input.

    A depthwise or 1x1 conv followed by a batch norm has each plane or image of its output
    in cache just after making it, where it can sum what the batch norm's statistics would
    read the whole map back for (kernels/batchnorm.py, 3g). The conv's
    `*_forward_with_statistics` leaves the row sums here with the output they were made from
    (none where it cannot make them), and batchnorm2d_activation_forward uses them only for
    that very array, making its own otherwise. Emptied by the batch norm. `enabled` False (on
    the class) stops ConvBNActivation from handing one to its conv, so that every batch norm
    sums its own input (benchmarks/bench_fused_sums.py times both ways)."""

    __slots__ = ("rows", "x")
    enabled = True

    def __init__(self):
        self.rows = None  # (2, N, C) float64 row sums: batchnorm2d_forward_from_row_sums
        self.x = None  # the conv output they were summed from

    def take(self, x):
        """The row sums if they were made from `x` itself, else None; empties the holder."""
        rows = self.rows if self.x is x else None
        self.rows = self.x = None
        return rows


class NormalizedMap(NamedTuple):
    """act(x * scale + shift) per channel, described but not computed: what batch norm with its
    activation hands on, in training, when the next op is a depthwise or 1x1 conv that
    applies it as it reads (batchnorm2d_activation_forward with defer=True). The map is never
    written to memory, so it costs neither the pass that writes it nor the memory that would
    keep it for the backward. `materialize()` computes it, for anything else that wants it."""

    x: np.ndarray  # batch norm's input, (N, C, H, W)
    scale: np.ndarray  # (C,), in x's dtype
    shift: np.ndarray
    activation: Optional[str]
    # Where the reading conv may leave the batch norm's backward sums (BatchNormGradientSums)
    gradient_sums: Optional[BatchNormGradientSums] = None

    @property
    def shape(self):
        return self.x.shape

    @property
    def dtype(self):
        return self.x.dtype

    def materialize(self):
        out = np.empty_like(self.x)
        bn_kernels.affine_activate(out, self.x, self.scale, self.shift,
                                   bn_kernels.ACTIVATION_CODES[self.activation])
        return out


class NormalizedGradient(NamedTuple):
    """A batch norm's dx, described but not computed: what the batch norm of a conv -> batch
    norm (-> activation) unit hands its conv's backward, on the fast rung, instead of writing
    dx (batchnorm2d_backward with defer=True). The conv makes dx = a * g - b * (x - mm) + cm,
    g = dout * act'(x * scale + shift), as it reads each plane or image of it
    (kernels/batchnorm.py, 3f); `materialize()` makes it whole, for anything else."""

    dout: np.ndarray  # the gradient the batch norm was handed, (N, C, H, W)
    x: np.ndarray  # the batch norm's input: the conv's output
    scale: np.ndarray  # (C,) in x's dtype, as in BatchNorm2dCache
    shift: np.ndarray
    activation: Optional[str]
    consts: np.ndarray  # (4, C) in x's dtype: a, b, mm and cm

    @property
    def shape(self):
        return self.x.shape

    def prologue(self, shape):
        """(x, scale, shift, consts, spread, kind) for the kernels' dout_bn, x reshaped to
        `shape` (kernels.batchnorm.spread_constants makes `spread`)."""
        P = int(np.prod(self.x.shape[2:]))
        return (self.x.reshape(shape), self.scale, self.shift, self.consts,
                bn_kernels.spread_constants(self.scale, self.shift, self.consts, P),
                bn_kernels.ACTIVATION_CODES[self.activation])

    def materialize(self):
        N, C = self.x.shape[:2]
        dx = np.empty_like(self.x)
        bn_kernels.input_gradient(dx.reshape(N, C, -1), self.dout.reshape(N, C, -1),
                                  *self.prologue((N, C, -1)))
        return dx



def depthwise_conv2d_forward(x, w, stride=1, padding=1):
    """out[n,c] = w[c] (K x K) correlated with x[n,c]; x (N, C, H, W), w (C, 1, K, K).

    One filter per channel: C*K*K*Ho*Wo multiply-adds per image instead of a standard conv's
    C_out times that. Caches x and w (the backward needs both, nothing else).

    x may be a NormalizedMap: the conv then reads act(x.x * scale + shift), normalising each
    plane as it copies it into its scratch, and caches x.x with the constants instead.
    """
    return _depthwise_conv2d_forward(x, w, stride, padding, None)


def depthwise_conv2d_forward_with_statistics(x, w, stride, padding, statistics):
    """depthwise_conv2d_forward that, on the fast rung, also makes the statistics of the
    batch norm after it as it writes each plane or image, and leaves them in `statistics`
    (a BatchNormStatistics) with out, for batchnorm2d_activation_forward."""
    return _depthwise_conv2d_forward(x, w, stride, padding, statistics)


def _depthwise_conv2d_forward(x, w, stride, padding, statistics):
    op = "depthwise_conv2d"
    normalized = x if isinstance(x, NormalizedMap) else None
    if normalized is not None:
        x = _check_normalized(op, normalized)
    x = _check_float(op, "x", x, 4)
    w = _check_float(op, "w", w, 4)
    _check_same_dtype(op, x, w=w)
    N, C, H, W = x.shape
    if w.shape[0] != C or w.shape[1] != 1 or w.shape[2] != w.shape[3]:
        raise ValueError(f"{op}: expected w of shape ({C}, 1, K, K) for x of shape {x.shape}, "
                         f"got {w.shape}")
    K = w.shape[2]
    _check_conv_geometry(op, H, W, K, stride, padding)
    Ho, Wo = conv_output_size(H, K, stride, padding), conv_output_size(W, K, stride, padding)
    out = np.empty((N, C, Ho, Wo), dtype=x.dtype)
    if normalized is None:
        scale, shift, kind = bn_kernels.no_prologue(x)
        cache = DepthwiseConv2dCache(x, w, stride, padding)
    else:
        scale, shift = normalized.scale, normalized.shift
        kind = bn_kernels.ACTIVATION_CODES[normalized.activation]
        cache = DepthwiseConv2dCache(x, w, stride, padding, scale, shift, normalized.activation,
                                     normalized.gradient_sums)
    if statistics is not None and _conv_makes_sums(out, statistics):
        statistics.rows = depthwise.depthwise_conv2d_forward_with_statistics(
            out, x, w, stride, padding, scale, shift, kind)
        statistics.x = out
    elif normalized is None:
        kernels.pick(depthwise, "depthwise_conv2d_forward")(out, x, w, stride, padding)
    else:
        kernels.pick(depthwise, "depthwise_conv2d_normalized_forward")(
            out, x, w, stride, padding, scale, shift, kind)
    return out, cache


def _conv_makes_sums(out, holder):
    """Whether a conv writing `out` makes the sums a batch norm's holder asks for (on the fast
    rung, on maps of at least tuning.CONV_MAKES_BN_SUMS_MIN_PIXELS); else it empties it."""
    pixels = out[0, 0].size
    if kernels.current() == "fast" and pixels >= tuning.CONV_MAKES_BN_SUMS_MIN_PIXELS:
        return True
    holder.rows = None
    holder.x = None
    return False


def _gradient_prologue(dout, op, whole=False):
    """(dout, its NormalizedGradient or None): on the fast rung a conv makes a
    NormalizedGradient's dx as it reads it; elsewhere, or when the caller needs it `whole`,
    it is made whole first."""
    if not isinstance(dout, NormalizedGradient):
        return dout, None
    if dout.x.shape != dout.dout.shape:
        raise ValueError(f"{op} backward: expected the NormalizedGradient's x and dout of one "
                         f"shape, got {dout.x.shape} and {dout.dout.shape}")
    if whole or kernels.current() != "fast":
        return dout.materialize(), None
    return dout.dout, dout


def depthwise_conv2d_backward(dout, cache):
    """Returns (dx, dw). dout may be a NormalizedGradient (the batch norm after the conv)."""
    x, w = cache.x, cache.w
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho = conv_output_size(H, K, cache.stride, cache.padding)
    Wo = conv_output_size(W, K, cache.stride, cache.padding)
    dout, dout_bn = _gradient_prologue(dout, "depthwise_conv2d")
    dout = _check_dout("depthwise_conv2d", dout, (N, C, Ho, Wo), x.dtype)
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    sums = cache.gradient_sums if kernels.current() == "fast" else None
    if sums is not None or dout_bn is not None:
        # the fusions (kernels/depthwise.py, 3d and 3e): the batch norm's backward sums made
        # as dx is written, and the batch norm's dx after the conv made as dout is read
        scale, shift, kind = ((cache.scale, cache.shift,
                               bn_kernels.ACTIVATION_CODES[cache.activation])
                              if cache.scale is not None else bn_kernels.no_prologue(x))
        rows = depthwise.depthwise_conv2d_backward_fused(
            dx, dw, dout, x, w, cache.stride, cache.padding, scale, shift, kind,
            None if sums is None else sums.mean,
            None if dout_bn is None else dout_bn.prologue((N, C, Ho, Wo)))
        if sums is not None:
            sums.rows, sums.dout = rows, dx
    elif cache.scale is None:
        kernels.pick(depthwise, "depthwise_conv2d_backward")(dx, dw, dout, x, w, cache.stride,
                                                             cache.padding)
    else:  # dx is the gradient with respect to act(x * scale + shift), the conv's input
        kernels.pick(depthwise, "depthwise_conv2d_normalized_backward")(
            dx, dw, dout, x, w, cache.stride, cache.padding, cache.scale, cache.shift,
            bn_kernels.ACTIVATION_CODES[cache.activation])
    return dx, dw


# --------------------------------------------------------------------------------------------
# Pointwise (1x1) convolution
# --------------------------------------------------------------------------------------------


class PointwiseConv2dCache(NamedTuple):
    x: np.ndarray  # (N, C_in, H*W): dw needs exactly this matrix
    x_shape: tuple
    w: np.ndarray  # (C_out, C_in)
    has_bias: bool
    # When the forward read a NormalizedMap or a ScaledMap: x is the map's array, and scale,
    # shift and kind the prologue the kernels apply to it as they read (kernels/matmul.py,
    # 3c and 3d).
    scale: Optional[np.ndarray] = None
    shift: Optional[np.ndarray] = None
    kind: int = bn_kernels.STATISTICS_ONLY
    # A NormalizedMap's (read alone, not gated): where the backward may leave its batch
    # norm's sums
    gradient_sums: Optional["BatchNormGradientSums"] = None


class ScaledMap(NamedTuple):
    """x[n, c] * s[n, c], described but not computed: what squeeze-excite hands on, in
    training, to the 1x1 projection that alone reads its output (scale_channels_forward with
    defer=True). The projection scales each image's channels as it reads them (kernels/
    matmul.py, 3d), so the gated map is neither written nor kept: the gate keeps x and s for
    its own backward anyway. `materialize()` computes it, for anything else that wants it."""

    x: "np.ndarray | NormalizedMap"  # the gate's input, (N, C, H, W), possibly undrawn itself
    s: np.ndarray  # the gate, (N, C, 1, 1), in x's dtype

    @property
    def shape(self):
        return self.x.shape

    @property
    def dtype(self):
        return self.x.dtype

    def materialize(self):
        x = self.x.materialize() if isinstance(self.x, NormalizedMap) else self.x
        return scale_channels_forward(x, self.s)[0]


def pointwise_conv2d_forward(x, w, b=None):
    """out[n] = W (C_out, C_in) @ x[n] (C_in, H*W) + b; w (C_out, C_in, 1, 1), b (C_out,).

    A matrix product per image: C_out*C_in*H*W multiply-adds, the bulk of MobileNet's. The
    cache keeps x and w.

    x may be a NormalizedMap, as for depthwise_conv2d_forward: the conv then reads
    act(x.x * scale + shift), normalising each image as it copies it, and caches x.x with the
    constants instead. Or a ScaledMap (squeeze-excite's output): it reads x.x[n, c] * x.s[n, c]
    the same way, and caches x.x with the gate.
    """
    return _pointwise_conv2d_forward(x, w, b, None)


def pointwise_conv2d_forward_with_statistics(x, w, b, statistics):
    """pointwise_conv2d_forward that, on the fast rung and without a bias, also makes the
    statistics of the batch norm after it as it makes each image's product (on maps large
    enough for one product per image), and leaves them in `statistics` (a
    BatchNormStatistics) with out, for batchnorm2d_activation_forward."""
    return _pointwise_conv2d_forward(x, w, b, statistics)


def _pointwise_conv2d_forward(x, w, b, statistics):
    op = "pointwise_conv2d"
    scaled = x if isinstance(x, ScaledMap) else None
    if scaled is not None:
        x = x.x
    normalized = x if isinstance(x, NormalizedMap) else None
    if normalized is not None:
        x = _check_normalized(op, normalized)
    x = _check_float(op, "x", x, 4)
    w = _check_float(op, "w", w, 4)
    _check_same_dtype(op, x, w=w)
    N, C, H, W = x.shape
    if w.shape[1:] != (C, 1, 1):
        raise ValueError(f"{op}: expected w of shape (C_out, {C}, 1, 1) for x of shape "
                         f"{x.shape}, got {w.shape}")
    C_out = w.shape[0]
    if b is not None:
        b = _check_float(op, "b", b, 1)
        _check_same_dtype(op, x, b=b)
        _check_shape(op, "b", b, (C_out,))
    if scaled is not None:
        gate = _check_float(op, "the ScaledMap's s", scaled.s, 4)
        _check_same_dtype(op, x, s=gate)
        _check_shape(op, "the ScaledMap's s", gate, (N, C, 1, 1))
        scaled = scaled._replace(s=gate)
    w2 = np.ascontiguousarray(w.reshape(C_out, C))
    x3 = x.reshape(N, C, H * W)
    out = np.empty((N, C_out, H * W), dtype=x.dtype)
    if normalized is None and scaled is None:
        scale, shift, kind = bn_kernels.no_prologue(x)
        cache = PointwiseConv2dCache(x3, x.shape, w2, b is not None)
    else:
        scale, shift, kind = _pointwise_prologue(normalized, scaled, N, C)
        # a batch norm's output alone (not gated): dx will be that batch norm's gradient
        sums = normalized.gradient_sums if scaled is None else None
        cache = PointwiseConv2dCache(x3, x.shape, w2, b is not None, scale, shift, kind, sums)
    # the statistics of out itself: with a bias, out changes after the product
    if statistics is not None and (b is not None or not _conv_makes_sums(out, statistics)):
        statistics.rows = statistics.x = None
        statistics = None
    if statistics is not None:
        rows = matmul.pointwise_conv2d_forward_with_statistics(out, x3, w2, scale, shift, kind)
    elif normalized is None and scaled is None:
        kernels.pick(matmul, "pointwise_conv2d_forward")(out, x3, w2)
    else:
        kernels.pick(matmul, "pointwise_conv2d_normalized_forward")(out, x3, w2, scale, shift,
                                                                    kind)
    if b is not None:
        kernels.pick(elementwise, "add_channel_bias")(out, b)
    out = out.reshape(N, C_out, H, W)
    if statistics is not None:
        statistics.rows, statistics.x = rows, out
    return out, cache


def _pointwise_prologue(normalized, scaled, N, C):
    """(scale, shift, kind) of the kernels' prologue for a NormalizedMap, a ScaledMap of an
    array, or a ScaledMap of a NormalizedMap (kernels/matmul.py, 3c and 3d)."""
    if scaled is None:
        return (normalized.scale, normalized.shift,
                bn_kernels.ACTIVATION_CODES[normalized.activation])
    gate = scaled.s.reshape(N * C)
    if normalized is None:
        return np.ascontiguousarray(gate), gate[:0], matmul.SCALE_BY_IMAGE
    return (np.concatenate([normalized.scale, gate]), normalized.shift,
            matmul.NORMALIZE_THEN_SCALE + bn_kernels.ACTIVATION_CODES[normalized.activation])


def pointwise_conv2d_backward(dout, cache):
    """Returns (dx, dw, db); db is None when the forward had no bias.

    With D[n] = dout[n] as a (C_out, H*W) matrix: dw = sum_n D[n] @ X[n]^T, dX[n] = W^T @ D[n],
    db = D summed over images and pixels.
    """
    N, C, H, W = cache.x_shape
    w2 = cache.w
    C_out = w2.shape[0]
    # the bias's gradient reads dout whole
    dout, dout_bn = _gradient_prologue(dout, "pointwise_conv2d", whole=cache.has_bias)
    dout = _check_dout("pointwise_conv2d", dout, (N, C_out, H, W), w2.dtype)
    d3 = dout.reshape(N, C_out, H * W)
    dx = np.empty((N, C, H * W), dtype=w2.dtype)
    dw = np.empty((C_out, C), dtype=w2.dtype)
    sums = cache.gradient_sums if kernels.current() == "fast" else None
    if sums is not None or dout_bn is not None:
        # the fusions (kernels/matmul.py, 3e and 3f): the batch norm's backward sums made as
        # dx is written, and the batch norm's dx after the conv made as dout is read
        scale, shift, kind = ((cache.scale, cache.shift, cache.kind) if cache.scale is not None
                              else bn_kernels.no_prologue(cache.x))
        rows = matmul.pointwise_conv2d_backward_fused(
            dx, dw, d3, cache.x, w2, scale, shift, kind, None if sums is None else sums.mean,
            None if dout_bn is None else dout_bn.prologue((N, C_out, H * W)))
        dx = dx.reshape(N, C, H, W)
        if sums is not None:
            sums.rows, sums.dout = rows, dx  # dx: the array the batch norm will be handed
    elif cache.scale is None:
        kernels.pick(matmul, "pointwise_conv2d_backward")(dx, dw, d3, cache.x, w2)
    else:  # dx is the gradient with respect to the conv's input as the forward read it:
        # act(x * scale + shift), x scaled by image (ScaledMap), or both
        kernels.pick(matmul, "pointwise_conv2d_normalized_backward")(
            dx, dw, d3, cache.x, w2, cache.scale, cache.shift, cache.kind)
    db = channel_sum(dout) if cache.has_bias else None
    if dx.ndim == 3:
        dx = dx.reshape(N, C, H, W)
    return dx, dw.reshape(C_out, C, 1, 1), db


def add_channel_bias(out, b):
    """out[:, c] += b[c], in place, for a conv's bias; out (N, C, H, W), b (C,). Its gradient
    is channel_sum(dout)."""
    op = "add_channel_bias"
    if not (isinstance(out, np.ndarray) and out.ndim == 4 and out.flags.c_contiguous):
        raise ValueError(f"{op}: expected out to be a C-contiguous numpy array of rank 4 "
                         f"(it is added to in place), got "
                         f"{getattr(out, 'shape', type(out).__name__)}")
    out = _check_float(op, "out", out, 4)
    b = _check_float(op, "b", b, 1)
    _check_shape(op, "b", b, out.shape[1:2])
    _check_same_dtype(op, out, "out", b=b)
    N, C = out.shape[:2]
    kernels.pick(elementwise, "add_channel_bias")(out.reshape(N, C, -1), b)
    return out


def channel_sum(x):
    """The sum of x (N, C, H, W) over images and pixels, per channel, in x's dtype (summed in
    float64, the same order on every run): the gradient of a per-channel bias."""
    x = _check_float("channel_sum", "x", x, 4)
    N, C = x.shape[:2]
    sums = np.empty(C)
    kernels.pick(elementwise, "channel_sum")(sums, x.reshape(N, C, -1))
    return sums.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Batch norm
# --------------------------------------------------------------------------------------------


class BatchNorm2dCache(NamedTuple):
    x: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray  # (C,) float64 batch mean: the layer updates running_mean from it
    var: np.ndarray  # (C,) float64 biased batch variance: the layer makes it unbiased
    invstd: np.ndarray  # (C,) float64 1 / sqrt(var + eps)
    scale: np.ndarray  # (C,) in x's dtype: bn(x) = x * scale + shift, exactly as the forward
    shift: np.ndarray  # computed it, so the backward recomputes the same bn(x)
    activation: Optional[str]  # None, or the activation fused after the normalisation
    gradient_sums: Optional[BatchNormGradientSums] = None  # with a deferred output


def _check_bn_args(op, x, gamma, beta):
    x = _check_float(op, "x", x, 4)
    C = x.shape[1]
    gamma = _check_float(op, "gamma", gamma, 1)
    beta = _check_float(op, "beta", beta, 1)
    _check_same_dtype(op, x, gamma=gamma, beta=beta)
    _check_shape(op, "gamma", gamma, (C,))
    _check_shape(op, "beta", beta, (C,))
    return x, gamma, beta


def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    """Training mode: out = gamma * (x - mean) / sqrt(var + eps) + beta, statistics over N, H, W.

    The cache holds the batch mean and biased variance so that a layer can update its running
    statistics; the normalised x is recomputed in the backward rather than cached (one tensor
    less to keep, at the price of one subtract and multiply).
    """
    return _batchnorm2d_forward("batchnorm2d", x, gamma, beta, eps, None)


def batchnorm2d_backward(dout, cache):
    """Returns (dx, dgamma, dbeta), through the batch statistics (and the fused activation,
    if the cache comes from batchnorm2d_activation_forward)."""
    return _batchnorm2d_backward(dout, cache, False)


def batchnorm2d_backward_deferred(dout, cache):
    """batchnorm2d_backward, which on the fast rung returns dx as a NormalizedGradient, for
    the conv before the batch norm to make as it reads it (depthwise_conv2d_backward and
    pointwise_conv2d_backward take one; kernels/batchnorm.py, 3f); on the other rungs, dx."""
    return _batchnorm2d_backward(dout, cache, True)


def _batchnorm2d_backward(dout, cache, defer):
    x = cache.x
    N, C, H, W = x.shape
    rows = cache.gradient_sums.take(dout) if cache.gradient_sums is not None else None
    dout = _check_dout("batchnorm2d", dout, x.shape, x.dtype)
    dgamma = np.empty(C)
    dbeta = np.empty(C)
    fast = kernels.current() == "fast"
    if defer and fast:
        consts = np.empty((4, C), dtype=x.dtype)
        bn_kernels.batchnorm2d_backward_deferred(
            dgamma, dbeta, consts, dout.reshape(N, C, H * W), x.reshape(N, C, H * W),
            cache.mean, cache.invstd, cache.gamma, cache.scale, cache.shift,
            bn_kernels.ACTIVATION_CODES[cache.activation], rows)
        dx = NormalizedGradient(dout, x, cache.scale, cache.shift, cache.activation, consts)
        return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)
    dx = np.empty_like(x)
    args = (dx.reshape(N, C, H * W), dgamma, dbeta, dout.reshape(N, C, H * W),
            x.reshape(N, C, H * W), cache.mean, cache.invstd, cache.gamma, cache.scale,
            cache.shift, bn_kernels.ACTIVATION_CODES[cache.activation])
    if rows is not None and fast:
        # the first pass's sums were made by the conv that read the output: the second alone
        bn_kernels.batchnorm2d_backward_from_row_sums(*args[:3], rows, *args[3:])
    else:
        kernels.pick(bn_kernels, "batchnorm2d_backward")(*args)
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


FUSABLE_ACTIVATIONS = tuple(a for a in bn_kernels.ACTIVATION_CODES if a is not None)


def batchnorm2d_activation_forward(x, gamma, beta, eps=1e-5, activation="relu", defer=False,
                                   statistics=None):
    """Training-mode batch norm and the activation after it in one pass over memory:
    out = act(batchnorm2d(x)) for activation in FUSABLE_ACTIVATIONS ("relu", "relu6",
    "hardswish"), or None for batch norm alone. On the fast rung, the same numbers as
    batchnorm2d_forward followed by relu_forward (or relu6_, hardswish_), bit for bit.

    defer=True computes the statistics only and returns out as a NormalizedMap, for a
    depthwise or 1x1 conv to apply as it reads (depthwise_conv2d_forward,
    pointwise_conv2d_forward): the map is never written.
    The backward is the same either way.

    `statistics` (a BatchNormStatistics) may hold the statistics' row sums, made by the conv
    that made x as it wrote it (depthwise_conv2d_forward_with_statistics,
    pointwise_conv2d_forward_with_statistics): on the fast rung they replace the pass that
    reads x for them, with the same bits.
    """
    op = "batchnorm2d_activation"
    if activation not in bn_kernels.ACTIVATION_CODES:
        raise ValueError(f"{op}: expected activation None or one of {FUSABLE_ACTIVATIONS}, "
                         f"got {activation!r}")
    rows = statistics.take(x) if statistics is not None else None
    return _batchnorm2d_forward(op, x, gamma, beta, eps, activation, defer, rows)


def batchnorm2d_activation_backward(dout, cache):
    """Returns (dx, dgamma, dbeta) through the activation and the batch statistics."""
    return batchnorm2d_backward(dout, cache)


def _batchnorm2d_forward(op, x, gamma, beta, eps, activation, defer=False, rows=None):
    x, gamma, beta = _check_bn_args(op, x, gamma, beta)
    N, C, H, W = x.shape
    if N * H * W < 2:
        raise ValueError(f"{op}: expected more than one value per channel in training mode, "
                         f"got input of shape {x.shape}")
    if not (is_number(eps) and eps > 0):
        raise ValueError(f"{op}: expected a finite number eps > 0, got {eps!r}")
    out = np.empty_like(x)  # with defer, never written: untouched pages cost no memory
    mean = np.empty(C)
    var = np.empty(C)
    scale = np.empty(C, dtype=x.dtype)
    shift = np.empty(C, dtype=x.dtype)
    kind = bn_kernels.STATISTICS_ONLY if defer else bn_kernels.ACTIVATION_CODES[activation]
    args = (out.reshape(N, C, H * W), mean, var, scale, shift, x.reshape(N, C, H * W), gamma,
            beta, float(eps), kind)
    if rows is not None and kernels.current() == "fast":
        # the statistics' row sums were made by the conv that made x (3g): no pass over x
        bn_kernels.batchnorm2d_forward_from_row_sums(*args, rows)
    else:
        kernels.pick(bn_kernels, "batchnorm2d_forward")(*args)
    invstd = 1.0 / np.sqrt(var + eps)
    if not defer:
        return out, BatchNorm2dCache(x, gamma, mean, var, invstd, scale, shift, activation)
    # the convs make the backward's sums on large maps only (tuning.CONV_MAKES_BN_SUMS_MIN_PIXELS)
    sums = (BatchNormGradientSums(mean) if BatchNormGradientSums.enabled
            and H * W >= tuning.CONV_MAKES_BN_SUMS_MIN_PIXELS else None)
    return (NormalizedMap(x, scale, shift, activation, sums),
            BatchNorm2dCache(x, gamma, mean, var, invstd, scale, shift, activation, sums))


class BatchNorm2dInferenceCache(NamedTuple):
    x: np.ndarray
    gamma: np.ndarray
    mean: np.ndarray
    invstd: np.ndarray


def batchnorm2d_inference_forward(x, gamma, beta, running_mean, running_var, eps=1e-5):
    """Evaluation mode: the same formula with the running statistics, a per-channel affine map.

    Caches x and the statistics, so a network in eval mode can still be differentiated.
    """
    op = "batchnorm2d_inference"
    x, gamma, beta = _check_bn_args(op, x, gamma, beta)
    C = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var)):
        a = _check_float(op, name, a, 1)
        _check_shape(op, name, a, (C,))
    if not (is_number(eps) and eps > 0):
        raise ValueError(f"{op}: expected a finite number eps > 0, got {eps!r}")
    mean = running_mean.astype(np.float64)
    invstd = 1.0 / np.sqrt(running_var.astype(np.float64) + eps)
    scale = gamma * invstd
    shift = beta - mean * scale
    out = np.empty_like(x)
    N, C, H, W = x.shape
    kernels.pick(bn_kernels, "channel_affine")(out.reshape(N, C, H * W), x.reshape(N, C, H * W),
                                               scale, shift)
    return out, BatchNorm2dInferenceCache(x, gamma, mean, invstd)


def batchnorm2d_inference_backward(dout, cache):
    """Returns (dx, dgamma, dbeta); the running statistics are constants here."""
    x = cache.x
    N, C, H, W = x.shape
    dout = _check_dout("batchnorm2d_inference", dout, x.shape, x.dtype)
    scale = cache.gamma * cache.invstd
    dx = np.empty_like(x)
    kernels.pick(bn_kernels, "channel_affine")(dx.reshape(N, C, H * W),
                                               dout.reshape(N, C, H * W), scale, np.zeros(C))
    xhat = (x - cache.mean[:, None, None].astype(x.dtype)) * cache.invstd[:, None, None].astype(
        x.dtype)
    dgamma = np.einsum("nchw,nchw->c", dout, xhat)
    dbeta = dout.sum(axis=(0, 2, 3))
    return dx, dgamma.astype(x.dtype), dbeta.astype(x.dtype)


# --------------------------------------------------------------------------------------------
# Activations: the cache is the input, which decides the gradient's piece.
# --------------------------------------------------------------------------------------------


class ActivationCache(NamedTuple):
    x: np.ndarray


def _elementwise_forward(op, x):
    x = _check_float(op, "x", x)
    out = np.empty_like(x)
    kernels.pick(elementwise, f"{op}_forward")(out.reshape(-1), x.reshape(-1))
    return out, ActivationCache(x)


def _elementwise_backward(op, dout, cache):
    x = cache.x
    dout = _check_dout(op, dout, x.shape, x.dtype)
    dx = np.empty_like(x)
    kernels.pick(elementwise, f"{op}_backward")(dx.reshape(-1), dout.reshape(-1), x.reshape(-1))
    return dx


def relu_forward(x):
    """out = max(x, 0)."""
    return _elementwise_forward("relu", x)


def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (0 at x = 0, as PyTorch)."""
    return _elementwise_backward("relu", dout, cache)


def relu6_forward(x):
    """out = min(max(x, 0), 6)."""
    return _elementwise_forward("relu6", x)


def relu6_backward(dout, cache):
    """dx = dout on the open (0, 6), else 0 (0 at both kinks, as PyTorch)."""
    return _elementwise_backward("relu6", dout, cache)


def hardswish_forward(x):
    """out = x * relu6(x + 3) / 6."""
    return _elementwise_forward("hardswish", x)


def hardswish_backward(dout, cache):
    """dx = 0 below -3, dout * (x/3 + 1/2) on [-3, 3], dout above 3 (as PyTorch)."""
    return _elementwise_backward("hardswish", dout, cache)


def hardsigmoid_forward(x):
    """out = relu6(x + 3) / 6."""
    return _elementwise_forward("hardsigmoid", x)


def hardsigmoid_backward(dout, cache):
    """dx = dout / 6 on the open (-3, 3), else 0 (as PyTorch)."""
    return _elementwise_backward("hardsigmoid", dout, cache)


# --------------------------------------------------------------------------------------------
# Pooling, channel scaling (squeeze-excite), linear, dropout, loss
# --------------------------------------------------------------------------------------------


class GlobalAvgPoolCache(NamedTuple):
    x_shape: tuple


def global_avg_pool_forward(x):
    """out[n, c, 0, 0] = mean over H, W of x[n, c]; (N, C, H, W) -> (N, C, 1, 1), as PyTorch's
    AdaptiveAvgPool2d(1). Caches only the input shape. x may be a NormalizedMap (V3's
    squeeze-excite): the mean of act(x.x * scale + shift), made a row at a time as it is read."""
    normalized = x if isinstance(x, NormalizedMap) else None
    op = "global_avg_pool"
    x = _check_normalized(op, x) if normalized is not None else _check_float(op, "x", x, 4)
    N, C, H, W = x.shape
    if H * W == 0:
        raise ValueError(f"{op}: expected a map of at least 1x1 pixels, got shape {x.shape}")
    out = np.empty((N, C, 1, 1), dtype=x.dtype)
    if normalized is None:
        kernels.pick(elementwise, "global_avg_pool_forward")(out.reshape(N, C),
                                                             x.reshape(N, C, H * W))
    else:
        kernels.pick(elementwise, "global_avg_pool_normalized_forward")(
            out.reshape(N, C), x.reshape(N, C, H * W), normalized.scale, normalized.shift,
            bn_kernels.ACTIVATION_CODES[normalized.activation])
    return out, GlobalAvgPoolCache(x.shape)


def global_avg_pool_backward(dout, cache):
    """Returns dx: each of the H*W inputs gets dout / (H*W)."""
    N, C, H, W = cache.x_shape
    dout = _check_float("global_avg_pool backward", "dout", dout)
    _check_shape("global_avg_pool backward", "dout", dout, (N, C, 1, 1))
    dx = np.empty(cache.x_shape, dtype=dout.dtype)
    kernels.pick(elementwise, "global_avg_pool_backward")(dx.reshape(N, C, H * W),
                                                          dout.reshape(N, C))
    return dx


class ScaleChannelsCache(NamedTuple):
    x: "np.ndarray | NormalizedMap"  # the gate's input as the forward got it
    s: np.ndarray


def scale_channels_forward(x, s, defer=False):
    """out[n, c] = x[n, c] * s[n, c]: squeeze-excite's gate; x (N, C, H, W), s (N, C, 1, 1).

    defer=True returns a ScaledMap instead of out, for a 1x1 conv that alone reads it to scale
    as it reads (V3's projection): out is never written, and the cache is the same. x may be
    a NormalizedMap (batch norm's output, never written): the cache keeps it as it is, and the
    backward makes each row of act(x.x * scale + shift) as it reads it."""
    op = "scale_channels"
    normalized = x if isinstance(x, NormalizedMap) else None
    x = _check_normalized(op, x) if normalized is not None else _check_float(op, "x", x, 4)
    s = _check_float(op, "s", s, 4)
    _check_same_dtype(op, x, s=s)
    _check_shape(op, "s", s, x.shape[:2] + (1, 1))
    kept = normalized._replace(x=x) if normalized is not None else x
    if defer:
        return ScaledMap(kept, s), ScaleChannelsCache(kept, s)
    if normalized is not None:
        x = kept.materialize()
    N, C = x.shape[:2]
    out = np.empty_like(x)
    kernels.pick(elementwise, "scale_channels_forward")(out.reshape(N, C, -1),
                                                        x.reshape(N, C, -1), s.reshape(N, C))
    return out, ScaleChannelsCache(kept, s)


def scale_channels_backward(dout, cache):
    """Returns (dx, ds): dx = dout * s, ds = sum over H, W of dout * x. When the forward read a
    NormalizedMap, x is act(x * scale + shift), made an image at a time, and dx the gradient
    with respect to it."""
    x, s = cache.x, cache.s
    dout = _check_dout("scale_channels", dout, x.shape, x.dtype)
    N, C = x.shape[:2]
    dx = np.empty(x.shape, dtype=x.dtype)
    ds = np.empty((N, C, 1, 1), dtype=x.dtype)
    if isinstance(x, NormalizedMap):
        kernels.pick(elementwise, "scale_channels_normalized_backward")(
            dx.reshape(N, C, -1), ds.reshape(N, C), dout.reshape(N, C, -1),
            x.x.reshape(N, C, -1), s.reshape(N, C), x.scale, x.shift,
            bn_kernels.ACTIVATION_CODES[x.activation])
    else:
        kernels.pick(elementwise, "scale_channels_backward")(
            dx.reshape(N, C, -1), ds.reshape(N, C), dout.reshape(N, C, -1),
            x.reshape(N, C, -1), s.reshape(N, C))
    return dx, ds


class LinearCache(NamedTuple):
    x: np.ndarray
    w: np.ndarray


def linear_forward(x, w, b):
    """out = x @ w.T + b; x (N, in), w (out, in) as PyTorch, b (out,) or None. Caches x, w."""
    op = "linear"
    x = _check_float(op, "x", x, 2)
    w = _check_float(op, "w", w, 2)
    _check_same_dtype(op, x, w=w)
    if w.shape[1] != x.shape[1]:
        raise ValueError(f"{op}: expected w of shape (out_features, {x.shape[1]}) for x of "
                         f"shape {x.shape}, got {w.shape}")
    if b is not None:
        b = _check_float(op, "b", b, 1)
        _check_same_dtype(op, x, b=b)
        _check_shape(op, "b", b, (w.shape[0],))
    out = np.empty((x.shape[0], w.shape[0]), dtype=x.dtype)
    kernels.pick(matmul, "linear_forward")(out, x, w)
    if b is not None:
        out += b
    return out, LinearCache(x, w)


def linear_backward(dout, cache):
    """Returns (dx, dw, db)."""
    x, w = cache.x, cache.w
    dout = _check_dout("linear", dout, (x.shape[0], w.shape[0]), x.dtype)
    dx = np.empty_like(x)
    dw = np.empty_like(w)
    kernels.pick(matmul, "linear_backward")(dx, dw, dout, x, w)
    return dx, dw, dout.sum(axis=0)


class DropoutCache(NamedTuple):
    mask: Optional[np.ndarray]  # None when dropout was the identity


def dropout_forward(x, p, rng, training=True):
    """Inverted dropout: zero each element with probability p, scale the rest by 1/(1-p), so
    evaluation needs no rescaling. rng is an explicit np.random.Generator. Caches the mask."""
    op = "dropout"
    x = _check_float(op, "x", x)
    if not (is_number(p) and 0 <= p < 1):
        raise ValueError(f"{op}: expected a number p with 0 <= p < 1, got p={p!r}")
    if training and p > 0 and not isinstance(rng, np.random.Generator):
        raise ValueError(f"{op}: expected rng to be a np.random.Generator "
                         f"(np.random.default_rng(seed)), got {type(rng).__name__}")
    if not training or p == 0:
        return x, DropoutCache(None)
    u = rng.random(x.shape, dtype=x.dtype)
    out = np.empty_like(x)
    mask = np.empty_like(x)
    kernels.pick(elementwise, "dropout_forward")(out.reshape(-1), mask.reshape(-1),
                                                 x.reshape(-1), u.reshape(-1), x.dtype.type(p))
    return out, DropoutCache(mask)


def dropout_backward(dout, cache):
    """Returns dx = dout * mask (the same scaled mask)."""
    if cache.mask is None:
        return dout
    dout = _check_dout("dropout", dout, cache.mask.shape, cache.mask.dtype)
    dx = np.empty_like(dout)
    kernels.pick(elementwise, "dropout_backward")(dx.reshape(-1), dout.reshape(-1),
                                                  cache.mask.reshape(-1))
    return dx


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against integer labels, and its gradient.

    With smoothing e the target is (1 - e) * onehot + e / classes, as PyTorch's. Stable:
    logits are shifted by their row maximum before exp. Returns (loss, dlogits); raises
    NonFiniteError if the logits or the loss are not finite, instead of carrying NaN on.
    """
    op = "softmax_cross_entropy"
    logits = _check_float(op, "logits", logits, 2)
    labels = np.asarray(labels)
    N, num_classes = logits.shape
    if N == 0:
        raise ValueError(f"{op}: expected a batch of at least one row, got logits of shape "
                         f"{logits.shape}")
    if labels.shape != (N,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{op}: expected integer labels of shape ({N},), got "
                         f"{labels.dtype} array of shape {labels.shape}")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"{op}: expected labels in [0, {num_classes}), got values from "
                         f"{labels.min()} to {labels.max()}")
    if not (is_number(label_smoothing) and 0 <= label_smoothing < 1):
        raise ValueError(f"{op}: expected a number with 0 <= label_smoothing < 1, "
                         f"got {label_smoothing!r}")
    if not np.isfinite(logits).all():
        raise NonFiniteError(f"{op}: logits contain NaN or inf "
                             f"({np.count_nonzero(~np.isfinite(logits))} of {logits.size})")
    dlogits = np.empty_like(logits)
    loss = float(kernels.pick(elementwise, "softmax_cross_entropy")(
        dlogits, logits, labels.astype(np.int64), float(label_smoothing)))
    if not np.isfinite(loss):
        raise NonFiniteError(f"{op}: the loss is {loss}")
    return loss, dlogits
