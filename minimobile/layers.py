"""Layers: the ops with their parameters, gradients, mode and cache.

A layer owns `params` and `grads` (dicts with the same keys), and `buffers` for state that is
not trained (batch norm's running statistics). `forward` keeps the op's cache and `backward`
consumes it: it writes the parameter gradients into `grads` in place (overwriting, not adding)
and returns the gradient for the layer's input. Class and parameter names follow PyTorch's
(`Conv2d.weight`, `BatchNorm2d.running_var`), so state dicts map one to one onto torchvision's.
"""

from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from . import ops
from .validation import is_int, is_number, require

_grad_enabled = True


@contextmanager
def no_grad():
    """Within this block layers keep no cache: inference without the memory for a backward."""
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


_deferral_enabled = False


@contextmanager
def deferred_normalization(enabled=True):
    """Within this block a ConvBNActivation whose `defer_output` is set (its output read by a
    depthwise conv alone) returns an ops.NormalizedMap in training: its batch norm computes
    the statistics only, and the depthwise conv normalises each plane as it reads it. The
    numbers are the same bits; the normalised map is never written or kept. A
    SqueezeExcitation whose `defer_output` is set returns an ops.ScaledMap the same way, for
    the 1x1 projection after it. MobileNet.forward runs its features in this block, so a
    block called on its own returns arrays as always."""
    global _deferral_enabled
    previous, _deferral_enabled = _deferral_enabled, enabled
    try:
        yield
    finally:
        _deferral_enabled = previous


def deferral_enabled():
    return _deferral_enabled


def _rng(rng):
    return rng if rng is not None else np.random.default_rng()


def _check_sizes(layer, **sizes):
    """Channel counts and kernel sizes are positive integers, strides too, and paddings are
    integers >= 0 (a zero would otherwise surface later as a ZeroDivisionError in the
    initialisation, a negative one as an array error far from the layer that was built)."""
    for name, value in sizes.items():
        low = 0 if name == "padding" else 1
        require(is_int(value) and value >= low, f"{layer}: {name}",
                f"an integer >= {low}", value)


def kaiming_normal_fan_out(shape, rng, dtype):
    """N(0, 2 / fan_out) with fan_out = shape[0] * K * K, as torch's kaiming_normal_(
    mode="fan_out") computes it (also for depthwise weights, whatever the groups)."""
    fan_out = shape[0] * int(np.prod(shape[2:]))
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)


class Module:
    """Base class: parameters, buffers, children, mode, cache and state dicts."""

    def __init__(self):
        object.__setattr__(self, "_modules", OrderedDict())
        self.params = OrderedDict()
        self.grads = OrderedDict()
        self.buffers = OrderedDict()
        self.training = True
        self._cache = None

    def __setattr__(self, name, value):
        # Assigning a Module registers it as a child, as in PyTorch, so names compose into
        # state-dict keys like "features.3.conv.0.1.weight".
        if isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def add_param(self, name, value):
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)

    def __call__(self, x):
        return self.forward(x)

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def backward(self, dout):
        raise NotImplementedError(f"{type(self).__name__}.backward")

    def _keep(self, cache):
        self._cache = cache if _grad_enabled else None

    def _take(self):
        """The forward's cache, dropped from the layer: a stale cache is a bug waiting."""
        cache = self._cache
        if cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called without a forward "
                               "that kept its cache (was it run under no_grad()?)")
        self._cache = None
        return cache

    # -- the tree of modules ------------------------------------------------------------------

    def named_modules(self, prefix=""):
        yield prefix, self
        for name, child in self._modules.items():
            yield from child.named_modules(f"{prefix}.{name}" if prefix else name)

    def named_parameters(self, prefix=""):
        """(qualified name, parameter, gradient) for every trainable array, in state-dict order."""
        for path, module in self.named_modules(prefix):
            for name, value in module.params.items():
                yield (f"{path}.{name}" if path else name), value, module.grads[name]

    def num_parameters(self):
        return sum(p.size for _, p, _ in self.named_parameters())

    def train(self, mode=True):
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    def zero_grad(self):
        for _, _, grad in self.named_parameters():
            grad[...] = 0

    def astype(self, dtype):
        """Convert every parameter and float buffer to dtype (float32 or float64), in place.
        Make optimisers after this: they hold references to the arrays."""
        for _, module in self.named_modules():
            for name in module.params:
                module.params[name] = module.params[name].astype(dtype)
                module.grads[name] = np.zeros_like(module.params[name])
            for name, value in module.buffers.items():
                if np.issubdtype(value.dtype, np.floating):
                    module.buffers[name] = value.astype(dtype)
        return self

    # -- state dicts -------------------------------------------------------------------------

    def state_dict(self):
        """Copies of parameters then buffers, module by module, in PyTorch's key order."""
        state = OrderedDict()
        for path, module in self.named_modules():
            for name, value in list(module.params.items()) + list(module.buffers.items()):
                state[f"{path}.{name}" if path else name] = np.array(value, copy=True)
        return state

    def load_state_dict(self, state):
        """Copy arrays in place (optimisers keep their references). Any missing, unexpected,
        mis-shaped or non-numeric entry fails the whole load with one line listing them (the
        first few of each kind, then how many more): every entry is checked and converted
        first, and only then is anything assigned, so a failed load changes nothing."""
        targets = OrderedDict()
        for path, module in self.named_modules():
            for store in (module.params, module.buffers):
                for name in store:
                    targets[f"{path}.{name}" if path else name] = (store, name)
        missing = [k for k in targets if k not in state]
        unexpected = [k for k in state if k not in targets]
        mis_shaped, not_numbers, converted = [], [], {}
        for key, (store, name) in targets.items():
            if key not in state:
                continue
            current = store[name]
            value = state[key]
            if np.shape(value) != current.shape:
                mis_shaped.append(f"{key}: expected {current.shape}, got {np.shape(value)}")
                continue
            value = np.asarray(value)
            # Only real numbers (and booleans) convert to a weight without losing meaning:
            # strings, objects and complex numbers are refused here rather than half-way.
            if value.dtype.kind not in "biuf":
                not_numbers.append(f"{key}: dtype {value.dtype}")
                continue
            converted[key] = value.astype(current.dtype)
        if missing or unexpected or mis_shaped or not_numbers:
            parts = [f"{title} ({len(keys)}): " + ", ".join(keys[:5])
                     + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")
                     for title, keys in (("missing keys", missing),
                                         ("unexpected keys", unexpected),
                                         ("shape mismatches", mis_shaped),
                                         ("not numbers", not_numbers)) if keys]
            raise ValueError(f"load_state_dict into {type(self).__name__} failed: "
                             + "; ".join(parts))
        for key, (store, name) in targets.items():
            store[name][...] = converted[key]

    def __repr__(self):
        children = "".join(f"\n  ({name}): " + repr(child).replace("\n", "\n  ")
                           for name, child in self._modules.items())
        return f"{type(self).__name__}({self.extra_repr()}{children}{chr(10) if children else ''})"

    def extra_repr(self):
        return ""


class Sequential(Module):
    """Children named "0", "1", ...; forward in order, backward in reverse."""

    def __init__(self, *modules):
        super().__init__()
        for i, module in enumerate(modules):
            setattr(self, str(i), module)

    def __getitem__(self, i):
        return list(self._modules.values())[i]

    def __len__(self):
        return len(self._modules)

    def __iter__(self):
        return iter(self._modules.values())

    def forward(self, x):
        for module in self._modules.values():
            x = module.forward(x)
        return x

    def backward(self, dout):
        for module in reversed(self._modules.values()):
            dout = module.backward(dout)
        return dout


class Identity(Module):
    def forward(self, x):
        return x

    def backward(self, dout):
        return dout


class Conv2d(Module):
    """Standard convolution, weight (C_out, C_in, K, K), optional bias: the stem."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=False,
                 rng=None, dtype=np.float32):
        super().__init__()
        _check_sizes("Conv2d", in_channels=in_channels, out_channels=out_channels,
                     kernel_size=kernel_size, stride=stride, padding=padding)
        self.stride, self.padding = stride, padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.add_param("weight", kaiming_normal_fan_out(shape, _rng(rng), dtype))
        if bias:
            self.add_param("bias", np.zeros(out_channels, dtype=dtype))

    def forward(self, x):
        out, cache = ops.conv2d_forward(x, self.params["weight"], self.stride, self.padding)
        if "bias" in self.params:
            ops.add_channel_bias(out, self.params["bias"])
        self._keep(cache)
        return out

    def backward(self, dout):
        dx, dw = ops.conv2d_backward(dout, self._take())
        self.grads["weight"][...] = dw
        if "bias" in self.params:
            self.grads["bias"][...] = ops.channel_sum(dout)
        return dx

    def extra_repr(self):
        o, i, k, _ = self.params["weight"].shape
        return f"{i}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class DepthwiseConv2d(Module):
    """One K x K filter per channel, weight (C, 1, K, K) (PyTorch's Conv2d with groups=C),
    optional bias (a training network never needs one: the batch norm after it has beta; a
    folded inference copy does, see deploy.py)."""

    def __init__(self, channels, kernel_size=3, stride=1, padding=None, bias=False, rng=None,
                 dtype=np.float32):
        super().__init__()
        _check_sizes("DepthwiseConv2d", channels=channels, kernel_size=kernel_size,
                     stride=stride, **({} if padding is None else {"padding": padding}))
        self.stride = stride
        self.padding = kernel_size // 2 if padding is None else padding
        shape = (channels, 1, kernel_size, kernel_size)
        self.add_param("weight", kaiming_normal_fan_out(shape, _rng(rng), dtype))
        if bias:
            self.add_param("bias", np.zeros(channels, dtype=dtype))

    def forward(self, x, statistics=None):
        """statistics: an ops.BatchNormStatistics for the batch norm after this conv, which
        the conv fills as it writes its output (ConvBNActivation); not with a bias."""
        if statistics is not None and "bias" not in self.params:
            out, cache = ops.depthwise_conv2d_forward_with_statistics(
                x, self.params["weight"], self.stride, self.padding, statistics)
        else:
            out, cache = ops.depthwise_conv2d_forward(x, self.params["weight"], self.stride,
                                                      self.padding)
        if "bias" in self.params:
            ops.add_channel_bias(out, self.params["bias"])
        self._keep(cache)
        return out

    def backward(self, dout):
        if "bias" in self.params and isinstance(dout, ops.NormalizedGradient):
            dout = dout.materialize()  # the bias's gradient reads it whole
        dx, dw = ops.depthwise_conv2d_backward(dout, self._take())
        self.grads["weight"][...] = dw
        if "bias" in self.params:
            self.grads["bias"][...] = ops.channel_sum(dout)
        return dx

    def extra_repr(self):
        c, _, k, _ = self.params["weight"].shape
        return f"{c}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class PointwiseConv2d(Module):
    """1x1 convolution, weight (C_out, C_in, 1, 1), optional bias."""

    def __init__(self, in_channels, out_channels, bias=False, rng=None, dtype=np.float32):
        super().__init__()
        _check_sizes("PointwiseConv2d", in_channels=in_channels, out_channels=out_channels)
        shape = (out_channels, in_channels, 1, 1)
        self.add_param("weight", kaiming_normal_fan_out(shape, _rng(rng), dtype))
        if bias:
            self.add_param("bias", np.zeros(out_channels, dtype=dtype))

    def forward(self, x, statistics=None):
        """statistics: an ops.BatchNormStatistics for the batch norm after this conv, which
        the conv fills as it makes its output (ConvBNActivation)."""
        if statistics is not None:
            out, cache = ops.pointwise_conv2d_forward_with_statistics(
                x, self.params["weight"], self.params.get("bias"), statistics)
        else:
            out, cache = ops.pointwise_conv2d_forward(x, self.params["weight"],
                                                      self.params.get("bias"))
        self._keep(cache)
        return out

    def backward(self, dout):
        dx, dw, db = ops.pointwise_conv2d_backward(dout, self._take())
        self.grads["weight"][...] = dw
        if db is not None:
            self.grads["bias"][...] = db
        return dx

    def extra_repr(self):
        o, i = self.params["weight"].shape[:2]
        return f"{i}, {o}, bias={'bias' in self.params}"


class BatchNorm2d(Module):
    """Batch norm with PyTorch's running statistics: running = (1 - m) * running + m * batch,
    m = momentum = 0.1 by default, and the running variance is the unbiased batch variance
    (times M / (M - 1)). CS231n writes the opposite convention (m * running + (1 - m) * batch):
    the same update with m replaced by 1 - m. Eval mode normalises with the running statistics.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, dtype=np.float32):
        super().__init__()
        _check_sizes("BatchNorm2d", num_features=num_features)
        require(is_number(eps) and eps > 0, "BatchNorm2d: eps", "a finite number > 0", eps)
        require(is_number(momentum) and 0 <= momentum <= 1, "BatchNorm2d: momentum",
                "a number in [0, 1]", momentum)
        self.eps, self.momentum = eps, momentum
        self.add_param("weight", np.ones(num_features, dtype=dtype))
        self.add_param("bias", np.zeros(num_features, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(num_features, dtype=dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)

    def forward(self, x):
        p, b = self.params, self.buffers
        if not self.training:
            out, cache = ops.batchnorm2d_inference_forward(
                x, p["weight"], p["bias"], b["running_mean"], b["running_var"], self.eps)
            self._keep(cache)
            return out
        return self.forward_with_activation(x, None)

    def forward_with_activation(self, x, activation, defer=False, statistics=None):
        """Training mode: batch norm and then `activation` (one of ops.FUSABLE_ACTIVATIONS,
        or None) in one pass over memory; ConvBNActivation uses it to save memory traffic.
        backward() then goes through both. defer=True returns an ops.NormalizedMap, for a
        depthwise conv to apply (ops.batchnorm2d_activation_forward); `statistics`, an
        ops.BatchNormStatistics, may hold the statistics made by the conv that made x."""
        if not self.training:
            raise ValueError(f"BatchNorm2d: a fused activation runs in training mode only, "
                             f"got activation={activation!r} in eval mode")
        p, b = self.params, self.buffers
        out, cache = ops.batchnorm2d_activation_forward(x, p["weight"], p["bias"], self.eps,
                                                        activation, defer, statistics)
        m = self.momentum
        count = x.shape[0] * x.shape[2] * x.shape[3]
        b["running_mean"][...] = (1 - m) * b["running_mean"] + m * cache.mean
        b["running_var"][...] = (1 - m) * b["running_var"] + m * cache.var * count / (count - 1)
        b["num_batches_tracked"][...] += 1
        self._keep(cache)
        return out

    def backward(self, dout, defer=False):
        """defer=True (training mode, fast rung): dx as an ops.NormalizedGradient, for the
        conv before this batch norm to make as it reads it (ConvBNActivation)."""
        cache = self._take()
        if isinstance(cache, ops.BatchNorm2dInferenceCache):
            dx, dgamma, dbeta = ops.batchnorm2d_inference_backward(dout, cache)
        else:
            backward = ops.batchnorm2d_backward_deferred if defer else ops.batchnorm2d_backward
            dx, dgamma, dbeta = backward(dout, cache)
        self.grads["weight"][...] = dgamma
        self.grads["bias"][...] = dbeta
        return dx

    def extra_repr(self):
        return f"{self.params['weight'].size}, eps={self.eps}, momentum={self.momentum}"


class _Activation(Module):
    _forward = staticmethod(ops.relu_forward)
    _backward = staticmethod(ops.relu_backward)
    fused_name = None  # the name under which batch norm can apply it in its own pass

    def forward(self, x):
        out, cache = self._forward(x)
        self._keep(cache)
        return out

    def backward(self, dout):
        return self._backward(dout, self._take())


class ReLU(_Activation):
    _forward = staticmethod(ops.relu_forward)
    _backward = staticmethod(ops.relu_backward)
    fused_name = "relu"


class ReLU6(_Activation):
    _forward = staticmethod(ops.relu6_forward)
    _backward = staticmethod(ops.relu6_backward)
    fused_name = "relu6"


class Hardswish(_Activation):
    _forward = staticmethod(ops.hardswish_forward)
    _backward = staticmethod(ops.hardswish_backward)
    fused_name = "hardswish"


class Hardsigmoid(_Activation):
    _forward = staticmethod(ops.hardsigmoid_forward)
    _backward = staticmethod(ops.hardsigmoid_backward)


class GlobalAvgPool2d(Module):
    """(N, C, H, W) -> (N, C, 1, 1), PyTorch's AdaptiveAvgPool2d(1)."""

    def forward(self, x):
        out, cache = ops.global_avg_pool_forward(x)
        self._keep(cache)
        return out

    def backward(self, dout):
        return ops.global_avg_pool_backward(dout, self._take())


class Flatten(Module):
    """(N, C, H, W) -> (N, C*H*W)."""

    def forward(self, x):
        self._keep(x.shape)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape(self._take())


class Linear(Module):
    """out = x @ weight.T + bias; weight (out_features, in_features) as PyTorch.
    Initialised as PyTorch's default, U(-1/sqrt(in), 1/sqrt(in)); the models re-initialise."""

    def __init__(self, in_features, out_features, bias=True, rng=None, dtype=np.float32):
        super().__init__()
        _check_sizes("Linear", in_features=in_features, out_features=out_features)
        bound = 1 / np.sqrt(in_features)
        rng = _rng(rng)
        self.add_param("weight", rng.uniform(-bound, bound, (out_features, in_features))
                       .astype(dtype))
        if bias:
            self.add_param("bias", rng.uniform(-bound, bound, out_features).astype(dtype))

    def forward(self, x):
        out, cache = ops.linear_forward(x, self.params["weight"], self.params.get("bias"))
        self._keep(cache)
        return out

    def backward(self, dout):
        dx, dw, db = ops.linear_backward(dout, self._take())
        self.grads["weight"][...] = dw
        if "bias" in self.params:
            self.grads["bias"][...] = db
        return dx

    def extra_repr(self):
        o, i = self.params["weight"].shape
        return f"{i}, {o}"


class Dropout(Module):
    """Inverted dropout with probability p in training mode, the identity in eval mode."""

    def __init__(self, p=0.5, rng=None):
        super().__init__()
        require(is_number(p) and 0 <= p < 1, "Dropout: p", "a number with 0 <= p < 1", p)
        self.p = p
        self.rng = _rng(rng)

    def forward(self, x):
        out, cache = ops.dropout_forward(x, self.p, self.rng, self.training)
        self._keep(cache)
        return out

    def backward(self, dout):
        return ops.dropout_backward(dout, self._take())

    def extra_repr(self):
        return f"p={self.p}"


class SqueezeExcitation(Module):
    """out = x * hardsigmoid(fc2(relu(fc1(avgpool(x))))), with torchvision's child names.

    fc1 and fc2 are 1x1 convs with bias on (N, C, 1, 1) maps. The backward sums x's two paths:
    the direct one through the scaling, and the one through the gate's pooling. In training
    inside MobileNet.forward, x is an ops.NormalizedMap (the depthwise layer's batch norm
    output, never written), pooled and scaled as it is read, and with `defer_output` the
    output is an ops.ScaledMap for the projection to read the same way.
    """

    def __init__(self, input_channels, squeeze_channels, rng=None, dtype=np.float32):
        super().__init__()
        _check_sizes("SqueezeExcitation", input_channels=input_channels,
                     squeeze_channels=squeeze_channels)
        rng = _rng(rng)
        self.avgpool = GlobalAvgPool2d()
        self.fc1 = PointwiseConv2d(input_channels, squeeze_channels, bias=True, rng=rng,
                                   dtype=dtype)
        self.activation = ReLU()
        self.fc2 = PointwiseConv2d(squeeze_channels, input_channels, bias=True, rng=rng,
                                   dtype=dtype)
        self.scale_activation = Hardsigmoid()
        # True when a 1x1 conv alone reads the output (V3's projection; set by
        # blocks.mark_deferred_outputs): then, in training inside deferred_normalization(),
        # the output is handed on as an ops.ScaledMap, never written.
        self.defer_output = False

    def forward(self, x):
        s = self.avgpool.forward(x)
        s = self.scale_activation.forward(self.fc2.forward(self.activation.forward(
            self.fc1.forward(s))))
        defer = self.defer_output and self.training and deferral_enabled()
        out, cache = ops.scale_channels_forward(x, s, defer)
        self._keep(cache)
        return out

    def backward(self, dout):
        dx, ds = ops.scale_channels_backward(dout, self._take())
        ds = self.fc1.backward(self.activation.backward(self.fc2.backward(
            self.scale_activation.backward(ds))))
        return dx + self.avgpool.backward(ds)
