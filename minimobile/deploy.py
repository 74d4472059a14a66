"""Batch-norm folding: an inference copy of a model with every BN merged into the conv before it.
(The trained network that deployment starts from comes from `train.model_from_checkpoint`.)

In eval mode a batch norm is a fixed per-channel affine map, y = gamma * (z - mean) /
sqrt(var + eps) + beta, and the conv before it is linear in its weights: z = w * x + b. So the
pair is one conv with w' = w * s and b' = beta + (b - mean) * s, s = gamma / sqrt(var + eps),
per output channel. `fuse(model)` makes that replacement everywhere, which removes one pass
over every feature map per block at no cost in accuracy (the derivation is in
`notebooks/07_deploy.ipynb`; `exercises/ex07_deploy.py` has you write `fold_batchnorm`).
"""

import copy

import numpy as np

from .layers import BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, PointwiseConv2d, Sequential

CONVS = (Conv2d, DepthwiseConv2d, PointwiseConv2d)


def fold_batchnorm(w, b, gamma, beta, running_mean, running_var, eps=1e-5):
    """(w', b') with conv(x, w') + b' == batchnorm(conv(x, w) + b) in eval mode.

    w (C_out, ...) any conv layout whose first axis is the output channel (standard, depthwise
    (C, 1, K, K), pointwise); b (C_out,) or None for a conv without bias; the rest (C_out,).
    s = gamma / sqrt(var + eps); w' = w * s per output channel; b' = beta + (b - mean) * s.
    Computed in float64 and returned in w's dtype, so the fold adds one rounding, no more.
    """
    w = np.asarray(w)
    C = w.shape[0] if w.ndim >= 1 else 0
    for name, a in (("gamma", gamma), ("beta", beta), ("running_mean", running_mean),
                    ("running_var", running_var), ("b", b)):
        if a is not None and np.shape(a) != (C,):
            raise ValueError(f"fold_batchnorm: expected {name} of shape ({C},) for w of shape "
                             f"{w.shape}, got {np.shape(a)}")
    if w.dtype.kind != "f":
        # The folded weights come back in w's dtype: integers would truncate them.
        raise ValueError(f"fold_batchnorm: expected float weights w, got {w.dtype}")
    variance = np.asarray(running_var, np.float64) + eps
    if not (np.isfinite(variance).all() and (variance > 0).all()):
        raise ValueError(f"fold_batchnorm: expected running_var + eps > 0 and finite in every "
                         f"channel, got {variance.min():g} at its least")
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(running_var, np.float64) + eps)
    b64 = np.zeros(C) if b is None else np.asarray(b, np.float64)
    w_folded = w.astype(np.float64) * scale.reshape((C,) + (1,) * (w.ndim - 1))
    b_folded = np.asarray(beta, np.float64) + (b64 - np.asarray(running_mean, np.float64)) * scale
    return w_folded.astype(w.dtype), b_folded.astype(w.dtype)


def _conv_with_bias(conv, w, b):
    """A new layer of conv's kind and geometry holding the folded w and b."""
    if isinstance(conv, DepthwiseConv2d):
        fused = DepthwiseConv2d(w.shape[0], w.shape[2], conv.stride, conv.padding, bias=True,
                                dtype=w.dtype)
    elif isinstance(conv, PointwiseConv2d):
        fused = PointwiseConv2d(w.shape[1], w.shape[0], bias=True, dtype=w.dtype)
    else:
        fused = Conv2d(w.shape[1], w.shape[0], w.shape[2], conv.stride, conv.padding, bias=True,
                       dtype=w.dtype)
    fused.params["weight"], fused.params["bias"] = w, b
    fused.grads["weight"], fused.grads["bias"] = np.zeros_like(w), np.zeros_like(b)
    return fused


def _folded(seq):
    """A plain Sequential with seq's children, each (conv, BatchNorm2d) pair of neighbours
    replaced by one conv with bias and Dropouts left out (the identity at inference). Children
    keep their names, so "features.3.pw.0" is still the conv it was. Plain, because container
    subclasses such as ConvBNActivation may assume their batch norm is still there."""
    plain = Sequential()
    names = list(seq._modules)
    skip = set()
    for i, name in enumerate(names):
        child = seq._modules[name]
        following = seq._modules[names[i + 1]] if i + 1 < len(names) else None
        if name in skip or isinstance(child, Dropout):
            continue
        if isinstance(child, CONVS) and isinstance(following, BatchNorm2d):
            bn = following
            w, b = fold_batchnorm(child.params["weight"], child.params.get("bias"),
                                  bn.params["weight"], bn.params["bias"],
                                  bn.buffers["running_mean"], bn.buffers["running_var"], bn.eps)
            child = _conv_with_bias(child, w, b)
            skip.add(names[i + 1])
        setattr(plain, name, child)
    return plain.train(seq.training)


def _fused(module):
    """module with every Sequential below it (and itself) folded, children first."""
    for name, child in list(module._modules.items()):
        setattr(module, name, _fused(child))
    return _folded(module) if isinstance(module, Sequential) else module


def fuse(model):
    """An inference copy of `model` with every BatchNorm2d folded into the conv before it.

    The copy is in eval mode; `model` is left untouched. Its logits equal `model.eval()`'s up to
    float rounding (1e-5 relative in float32, checked in tests/test_deploy.py). A batch norm that
    does not directly follow a conv within a Sequential cannot be folded: ValueError naming it.
    """
    fused = _fused(copy.deepcopy(model).eval())
    left = [path or type(m).__name__ for path, m in fused.named_modules()
            if isinstance(m, BatchNorm2d)]
    if left:
        raise ValueError(f"fuse: expected every BatchNorm2d to follow a conv in a Sequential, "
                         f"got {len(left)} that do not: {', '.join(left)}")
    return fused


def count_layers(model, kinds):
    """How many modules of `model` are instances of `kinds` (a class or a tuple of them)."""
    return sum(isinstance(m, kinds) for _, m in model.named_modules())
