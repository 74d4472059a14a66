"""Slow, obviously-correct references: every op as plain loops over NumPy arrays.

These follow the definitions as written on paper, one output element at a time, with no
tricks. They are what the fast kernels are tested against and what a learner should read
first. Each takes and returns the same arrays as the op of the same name in `minimobile.ops`,
but without the cache: forwards return `out`, backwards take the forward's inputs and `dout`.
Only use them on small arrays: they are thousands of times slower than the kernels.
"""

import numpy as np


def _pad(x, p):
    return np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))  # (N, C, H+2p, W+2p)


def _out_size(n, K, s, p):
    return (n + 2 * p - K) // s + 1


def conv2d_forward(x, w, stride=1, padding=0):
    """out[n,o,i,j] = sum_{c,ki,kj} w[o,c,ki,kj] * xpad[n,c,i*s+ki,j*s+kj]."""
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    Ho, Wo = _out_size(H, K, stride, padding), _out_size(W, K, stride, padding)
    xp = _pad(x, padding)
    out = np.zeros((N, C_out, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for o in range(C_out):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, :, i * stride:i * stride + K, j * stride:j * stride + K]
                    out[n, o, i, j] = np.sum(window * w[o])
    return out


def conv2d_backward(dout, x, w, stride=1, padding=0):
    """Each output element sends dout * w back to its window, and dout * window to w."""
    N, C, H, W = x.shape
    C_out, _, K, _ = w.shape
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(N):
        for o in range(C_out):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    rows = slice(i * stride, i * stride + K)
                    cols = slice(j * stride, j * stride + K)
                    dxp[n, :, rows, cols] += dout[n, o, i, j] * w[o]
                    dw[o] += dout[n, o, i, j] * xp[n, :, rows, cols]
    return dxp[:, :, padding:padding + H, padding:padding + W], dw


def depthwise_conv2d_forward(x, w, stride=1, padding=1):
    """out[n,c,i,j] = sum_{ki,kj} w[c,0,ki,kj] * xpad[n,c,i*s+ki,j*s+kj]."""
    N, C, H, W = x.shape
    K = w.shape[2]
    Ho, Wo = _out_size(H, K, stride, padding), _out_size(W, K, stride, padding)
    xp = _pad(x, padding)
    out = np.zeros((N, C, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    window = xp[n, c, i * stride:i * stride + K, j * stride:j * stride + K]
                    out[n, c, i, j] = np.sum(window * w[c, 0])
    return out


def depthwise_conv2d_backward(dout, x, w, stride=1, padding=1):
    N, C, H, W = x.shape
    K = w.shape[2]
    xp = _pad(x, padding)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for n in range(N):
        for c in range(C):
            for i in range(dout.shape[2]):
                for j in range(dout.shape[3]):
                    rows = slice(i * stride, i * stride + K)
                    cols = slice(j * stride, j * stride + K)
                    dxp[n, c, rows, cols] += dout[n, c, i, j] * w[c, 0]
                    dw[c, 0] += dout[n, c, i, j] * xp[n, c, rows, cols]
    return dxp[:, :, padding:padding + H, padding:padding + W], dw


def pointwise_conv2d_forward(x, w, b=None):
    """out[n,o,i,j] = sum_c w[o,c,0,0] * x[n,c,i,j] + b[o]."""
    N, C, H, W = x.shape
    C_out = w.shape[0]
    out = np.zeros((N, C_out, H, W), dtype=x.dtype)
    for n in range(N):
        for o in range(C_out):
            for c in range(C):
                out[n, o] += w[o, c, 0, 0] * x[n, c]
            if b is not None:
                out[n, o] += b[o]
    return out


def pointwise_conv2d_backward(dout, x, w, b=None):
    N, C, H, W = x.shape
    C_out = w.shape[0]
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(N):
        for o in range(C_out):
            for c in range(C):
                dx[n, c] += w[o, c, 0, 0] * dout[n, o]
                dw[o, c, 0, 0] += np.sum(dout[n, o] * x[n, c])
    db = dout.sum(axis=(0, 2, 3)) if b is not None else None
    return dx, dw, db


def batchnorm2d_forward(x, gamma, beta, eps=1e-5):
    """Returns (out, mean, biased var): each channel normalised by its own batch statistics."""
    N, C, H, W = x.shape
    out = np.empty_like(x)
    mean = np.zeros(C)
    var = np.zeros(C)
    for c in range(C):
        values = x[:, c].astype(np.float64)
        mean[c] = values.sum() / values.size
        var[c] = ((values - mean[c]) ** 2).sum() / values.size
        out[:, c] = gamma[c] * (values - mean[c]) / np.sqrt(var[c] + eps) + beta[c]
    return out, mean, var


def batchnorm2d_backward(dout, x, gamma, eps=1e-5):
    """The textbook three-term formula, one channel at a time, M = N*H*W values each:
    dx = gamma / (M * std) * (M * dout - sum(dout) - xhat * sum(dout * xhat))."""
    N, C, H, W = x.shape
    M = N * H * W
    dx = np.empty_like(x)
    dgamma = np.zeros(C, dtype=x.dtype)
    dbeta = np.zeros(C, dtype=x.dtype)
    for c in range(C):
        values = x[:, c].astype(np.float64)
        g = dout[:, c].astype(np.float64)
        mean = values.sum() / M
        std = np.sqrt(((values - mean) ** 2).sum() / M + eps)
        xhat = (values - mean) / std
        dbeta[c] = g.sum()
        dgamma[c] = (g * xhat).sum()
        dx[:, c] = gamma[c] / (M * std) * (M * g - g.sum() - xhat * (g * xhat).sum())
    return dx, dgamma, dbeta


def batchnorm2d_inference_forward(x, gamma, beta, running_mean, running_var, eps=1e-5):
    out = np.empty_like(x)
    for c in range(x.shape[1]):
        out[:, c] = (gamma[c] * (x[:, c] - running_mean[c]) / np.sqrt(running_var[c] + eps)
                     + beta[c])
    return out


def _elementwise(f, x):
    out = np.empty_like(x)
    for index, v in np.ndenumerate(x):
        out[index] = f(v)
    return out


def relu_forward(x):
    return _elementwise(lambda v: v if v > 0 else 0.0, x)


def relu_backward(dout, x):
    return dout * _elementwise(lambda v: 1.0 if v > 0 else 0.0, x)


def relu6_forward(x):
    return _elementwise(lambda v: min(max(v, 0.0), 6.0), x)


def relu6_backward(dout, x):
    return dout * _elementwise(lambda v: 1.0 if 0 < v < 6 else 0.0, x)


def hardswish_forward(x):
    return _elementwise(lambda v: v * min(max(v + 3, 0.0), 6.0) / 6, x)


def hardswish_backward(dout, x):
    return dout * _elementwise(lambda v: 0.0 if v < -3 else (v / 3 + 0.5 if v <= 3 else 1.0), x)


def hardsigmoid_forward(x):
    return _elementwise(lambda v: min(max(v + 3, 0.0), 6.0) / 6, x)


def hardsigmoid_backward(dout, x):
    return dout * _elementwise(lambda v: 1 / 6 if -3 < v < 3 else 0.0, x)


def batchnorm2d_activation_forward(x, gamma, beta, eps=1e-5, activation="relu"):
    """What the fused kernel computes: batch norm, then the activation, one after the other."""
    out, mean, var = batchnorm2d_forward(x, gamma, beta, eps)
    if activation is not None:
        out = {"relu": relu_forward, "relu6": relu6_forward,
               "hardswish": hardswish_forward}[activation](out)
    return out, mean, var


def batchnorm2d_activation_backward(dout, x, gamma, beta, eps=1e-5, activation="relu"):
    """The chain rule in two steps: through the activation at bn(x), then through batch norm."""
    if activation is not None:
        y, _, _ = batchnorm2d_forward(x, gamma, beta, eps)
        dout = {"relu": relu_backward, "relu6": relu6_backward,
                "hardswish": hardswish_backward}[activation](dout, y)
    return batchnorm2d_backward(dout, x, gamma, eps)


def global_avg_pool_forward(x):
    N, C, H, W = x.shape
    out = np.zeros((N, C, 1, 1), dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            out[n, c, 0, 0] = x[n, c].sum() / (H * W)
    return out


def global_avg_pool_backward(dout, x):
    N, C, H, W = x.shape
    dx = np.zeros_like(x)
    for n in range(N):
        for c in range(C):
            dx[n, c] = dout[n, c, 0, 0] / (H * W)
    return dx


def linear_forward(x, w, b):
    N = x.shape[0]
    out = np.zeros((N, w.shape[0]), dtype=x.dtype)
    for n in range(N):
        for o in range(w.shape[0]):
            out[n, o] = np.dot(w[o], x[n]) + (b[o] if b is not None else 0)
    return out


def linear_backward(dout, x, w):
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for n in range(x.shape[0]):
        for o in range(w.shape[0]):
            dx[n] += dout[n, o] * w[o]
            dw[o] += dout[n, o] * x[n]
    return dx, dw, dout.sum(axis=0)


def softmax_cross_entropy(logits, labels, label_smoothing=0.0):
    """Loss and gradient, one row at a time, straight from the definitions."""
    N, num_classes = logits.shape
    loss = 0.0
    dlogits = np.zeros_like(logits)
    for n in range(N):
        z = logits[n] - logits[n].max()
        p = np.exp(z) / np.exp(z).sum()
        target = np.full(num_classes, label_smoothing / num_classes)
        target[labels[n]] += 1 - label_smoothing
        loss -= np.sum(target * np.log(p)) / N
        dlogits[n] = (p - target) / N
    return loss, dlogits
