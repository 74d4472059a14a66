"""Optimisers: SGD, RMSprop and AdamW, with PyTorch's update rules, updating parameters in place;
and EMA, the exponential moving average of a model's weights that a trainer keeps beside them.

Each optimiser takes a model's ``named_parameters()``, an iterable of ``(name, param, grad)``
triples, and keeps references to the arrays: layers own them, so every update writes into
``param`` and never rebinds it. The trainer sets ``optimizer.lr`` from a schedule before each
``step()``. ``state_dict()`` is a flat dict of arrays and Python scalars, so a checkpoint can
store it in an ``.npz`` and a resumed run continues bit for bit.
"""

from contextlib import contextmanager

import numpy as np

from . import kernels
from .kernels import updates
from .validation import is_number, require


def default_no_decay(name, param):
    """True for parameters that weight decay should leave alone: those with fewer than 2 dims.

    The 1-D parameters of a MobileNet are exactly the batch-norm gamma and beta and the conv and
    linear biases; decaying them only fights batch norm's scale invariance (torchvision's
    recipes set ``norm_weight_decay=0.0`` for the same reason). ``name`` is unused but lets a
    custom rule go by name. Pass ``no_decay=lambda name, param: False`` to decay everything.
    """
    return param.ndim < 2


def _as_scalar(value):
    # np.savez turns Python scalars into 0-d arrays; unwrap them so a state read back from an
    # .npz file loads the same as one kept in memory.
    if isinstance(value, (np.ndarray, np.generic)) and np.ndim(value) == 0:
        return value.item()
    return value


class Optimizer:
    """Shared plumbing: the parameter list, the decay mask, per-parameter buffers, state dicts.

    Subclasses name their hyper-parameters in ``_hyper`` (name -> type), create their buffers
    with ``_add_buffer(kind)``, and implement ``_update(i, p, g, lr, wd)``; the three here each
    call one fused kernel (kernels/updates.py), so a step allocates nothing.
    """

    _hyper = {}

    def __init__(self, params, lr, weight_decay, no_decay):
        self.names, self.params, self.grads = [], [], []
        triples = "(name, param, grad) triples, as model.named_parameters() gives"
        require(hasattr(params, "__iter__") and not isinstance(params, (dict, np.ndarray, str)),
                "params", triples, type(params).__name__)
        for item in params:
            require(isinstance(item, tuple) and len(item) == 3 and isinstance(item[0], str),
                    "params", triples, f"a tuple of {len(item)}" if isinstance(item, tuple)
                    else type(item).__name__)
            name, param, grad = item
            require(isinstance(param, np.ndarray) and param.dtype.kind == "f",
                   f"param {name}", "a float NumPy array", type(param).__name__)
            require(isinstance(grad, np.ndarray) and grad.shape == param.shape
                   and grad.dtype == param.dtype, f"grad of {name}",
                   f"an array of shape {param.shape} and dtype {param.dtype}",
                   f"{getattr(grad, 'shape', None)} {getattr(grad, 'dtype', type(grad).__name__)}")
            # Updates run on flat views of both, in place (kernels/updates.py).
            require(param.flags.c_contiguous and grad.flags.c_contiguous,
                    f"param {name} and its grad", "C-contiguous arrays (np.ascontiguousarray)",
                    "a strided view")
            self.names.append(name)
            self.params.append(param)
            self.grads.append(grad)
        require(len(self.params) > 0, "params", "at least one (name, param, grad) triple", 0)
        duplicates = sorted({n for n in self.names if self.names.count(n) > 1})
        require(not duplicates, "param names", "unique names", duplicates)
        require(is_number(lr) and lr >= 0.0, "lr", "a finite number >= 0", lr)
        require(is_number(weight_decay) and weight_decay >= 0.0, "weight_decay",
                "a finite number >= 0", weight_decay)
        self.lr = lr
        self.weight_decay = weight_decay
        self.num_steps = 0
        self.decay = [not no_decay(n, p) for n, p in zip(self.names, self.params)]
        self.buffers = {}

    def _add_buffer(self, kind):
        self.buffers[kind] = [np.zeros_like(p) for p in self.params]

    def step(self):
        """Apply one update to every parameter, in place, from the gradients now in ``grads``."""
        self.num_steps += 1
        # Plain Python floats stay "weak" in NumPy's casting rules, so float32 params are
        # updated in float32 even if a schedule hands us an np.float64.
        lr = float(self.lr)
        for i, (p, g) in enumerate(zip(self.params, self.grads)):
            wd = float(self.weight_decay) if self.decay[i] else 0.0
            self._update(i, p, g, lr, wd)

    def _update(self, i, p, g, lr, wd):
        raise NotImplementedError

    def zero_grad(self):
        """Fill every gradient with 0 in place (layers keep references to the grad arrays)."""
        for g in self.grads:
            g.fill(0)

    def state_dict(self):
        """Flat dict: ``step``, the hyper-parameters, and ``<buffer>/<param name>`` array copies."""
        state = {"step": self.num_steps}
        state.update({key: typ(getattr(self, key)) for key, typ in self._hyper.items()})
        for kind, bufs in self.buffers.items():
            for name, buf in zip(self.names, bufs):
                state[f"{kind}/{name}"] = buf.copy()
        return state

    def load_state_dict(self, state):
        """Restore step count, hyper-parameters and buffers from ``state_dict()`` output.

        Accepts 0-d arrays for scalars (what ``np.load`` gives back). Raises ValueError listing
        every missing or unexpected key and every shape or dtype mismatch before changing anything.
        """
        arrays = {f"{kind}/{name}": buf for kind, bufs in self.buffers.items()
                  for name, buf in zip(self.names, bufs)}
        expected = {"step", *self._hyper, *arrays}
        problems = []
        missing = sorted(expected - set(state))
        unexpected = sorted(set(state) - expected)
        if missing:
            problems.append(f"missing keys {missing}")
        if unexpected:
            problems.append(f"unexpected keys {unexpected}")
        for key, buf in arrays.items():
            if key in state:
                value = np.asarray(state[key])
                if value.shape != buf.shape:
                    problems.append(f"{key}: expected shape {buf.shape}, got {value.shape}")
                elif value.dtype != buf.dtype:
                    problems.append(f"{key}: expected dtype {buf.dtype}, got {value.dtype}")
        step = _as_scalar(state.get("step", 0))
        if not isinstance(step, (int, np.integer)) or isinstance(step, bool) or step < 0:
            problems.append(f"step: expected an integer >= 0, got {step!r}")
        if problems:
            raise ValueError(f"{type(self).__name__}.load_state_dict: " + "; ".join(problems))
        self.num_steps = int(step)
        for key, typ in self._hyper.items():
            setattr(self, key, typ(_as_scalar(state[key])))
        for key, buf in arrays.items():
            np.copyto(buf, state[key])

    def __repr__(self):
        hyper = ", ".join(f"{k}={getattr(self, k)!r}" for k in self._hyper)
        skipped = len(self.decay) - sum(self.decay)
        return (f"{type(self).__name__}({hyper}; {len(self.params)} params, "
                f"{skipped} without weight decay)")


class SGD(Optimizer):
    """PyTorch's SGD with dampening 0: ``d = g + wd*p``; ``buf = momentum*buf + d`` (``buf = d``
    on the first step); ``d = d + momentum*buf`` if nesterov else ``d = buf``; ``p -= lr*d``.

    Buffers: ``momentum_buffer`` (only when momentum > 0). Weight decay skips params for which
    ``no_decay(name, param)`` is True; see ``default_no_decay``.
    """

    _hyper = {"lr": float, "momentum": float, "nesterov": bool, "weight_decay": float}

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0,
                 no_decay=default_no_decay):
        super().__init__(params, lr, weight_decay, no_decay)
        require(is_number(momentum) and momentum >= 0.0, "momentum", "a finite number >= 0",
                momentum)
        require(not nesterov or momentum > 0.0, "nesterov=True", "momentum > 0", momentum)
        self.momentum = momentum
        self.nesterov = bool(nesterov)
        if momentum > 0.0:
            self._add_buffer("momentum_buffer")

    def _update(self, i, p, g, lr, wd):
        # The rule above in one pass over p, g and buf (kernels/updates.py), the same bits as
        # the NumPy expressions d = g + wd*p; buf *= m; buf += d; ...; p -= lr*d. The gradient
        # is read, never written: a trainer may still want to log it.
        buf = self.buffers["momentum_buffer"][i] if self.momentum != 0.0 else p  # p: unread
        kernels.pick(updates, "sgd_update")(
            p.reshape(-1), buf.reshape(-1), g.reshape(-1), lr, wd, self.momentum,
            self.nesterov, self.num_steps == 1)


class RMSprop(Optimizer):
    """PyTorch's RMSprop: ``d = g + wd*p``; ``v = alpha*v + (1-alpha)*d**2``; ``s = sqrt(v) + eps``
    (centered: ``s = sqrt(v - m**2) + eps`` with ``m`` the running mean of ``d``);
    ``buf = momentum*buf + d/s``; ``p -= lr*buf`` (``p -= lr*d/s`` without momentum).

    Defaults are the MobileNet recipe (alpha 0.9, momentum 0.9, weight decay 4e-5). TensorFlow
    adds eps inside the root, ``sqrt(v + eps)``, and starts ``v`` at 1; its eps=1e-3 is about
    eps=sqrt(1e-3)=0.0316 here, torchvision's choice. Buffers: ``square_avg``,
    ``momentum_buffer`` (momentum > 0), ``grad_avg`` (centered).
    """

    _hyper = {"lr": float, "alpha": float, "eps": float, "momentum": float,
              "centered": bool, "weight_decay": float}

    def __init__(self, params, lr, alpha=0.9, eps=0.0316, momentum=0.9, weight_decay=4e-5,
                 centered=False, no_decay=default_no_decay):
        super().__init__(params, lr, weight_decay, no_decay)
        require(is_number(alpha) and 0.0 <= alpha <= 1.0, "alpha", "a value in [0, 1]", alpha)
        require(is_number(eps) and eps >= 0.0, "eps", "a finite number >= 0", eps)
        require(is_number(momentum) and momentum >= 0.0, "momentum", "a finite number >= 0",
                momentum)
        self.alpha, self.eps, self.momentum = alpha, eps, momentum
        self.centered = bool(centered)
        self._add_buffer("square_avg")
        if momentum > 0.0:
            self._add_buffer("momentum_buffer")
        if centered:
            self._add_buffer("grad_avg")

    def _update(self, i, p, g, lr, wd):
        # The rule above in one pass over p, g and the buffers (kernels/updates.py), the same
        # bits as the NumPy expressions d = g + wd*p; v *= alpha; v += d*d*(1-alpha); ...
        # (centered, m += (1-alpha)*(d - m) is PyTorch's lerp_).
        v = self.buffers["square_avg"][i]
        buf = self.buffers["momentum_buffer"][i] if self.momentum > 0.0 else p  # p: unread
        m = self.buffers["grad_avg"][i] if self.centered else p  # p: unread
        kernels.pick(updates, "rmsprop_update")(
            p.reshape(-1), v.reshape(-1), buf.reshape(-1), m.reshape(-1), g.reshape(-1), lr,
            self.alpha, self.eps, wd, self.momentum, self.centered)


class AdamW(Optimizer):
    """PyTorch's AdamW: ``p *= 1 - lr*wd`` (decoupled decay); ``m = b1*m + (1-b1)*g``;
    ``v = b2*v + (1-b2)*g**2``; ``p -= lr/(1-b1**t) * m / (sqrt(v)/sqrt(1-b2**t) + eps)``.

    ``t`` counts steps from 1; the two bias corrections undo the zero start of ``m`` and ``v``.
    Buffers: ``exp_avg`` (m) and ``exp_avg_sq`` (v). Weight decay skips ``no_decay`` params.
    """

    _hyper = {"lr": float, "beta1": float, "beta2": float, "eps": float, "weight_decay": float}

    def __init__(self, params, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 no_decay=default_no_decay):
        super().__init__(params, lr, weight_decay, no_decay)
        require(isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(is_number(b) and 0.0 <= b < 1.0 for b in betas),
               "betas", "two values in [0, 1)", betas)
        require(is_number(eps) and eps >= 0.0, "eps", "a finite number >= 0", eps)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self._add_buffer("exp_avg")
        self._add_buffer("exp_avg_sq")

    def _update(self, i, p, g, lr, wd):
        # The rule above in one pass over p, g, m and v (kernels/updates.py), the same bits as
        # the NumPy expressions p *= 1 - lr*wd; m += (1-b1)*(g - m) (PyTorch's lerp_); ... The
        # bias corrections are Python floats, computed here as they always were, so the kernel
        # rounds the same scalars NumPy did.
        t = self.num_steps
        step_size = lr / (1.0 - self.beta1 ** t)
        bias_correction2_sqrt = (1.0 - self.beta2 ** t) ** 0.5
        m = self.buffers["exp_avg"][i]
        v = self.buffers["exp_avg_sq"][i]
        kernels.pick(updates, "adamw_update")(
            p.reshape(-1), m.reshape(-1), v.reshape(-1), g.reshape(-1), lr, self.beta1,
            self.beta2, self.eps, wd, step_size, bias_correction2_sqrt)


class EMA:
    """An exponential moving average of a model's parameters and buffers, updated after each
    optimiser step: ``shadow = d * shadow + (1 - d) * live``, starting from the live values.

    With ``warmup`` the decay used at update t (0, 1, ...) is ``min(decay, (1 + t) / (10 + t))``,
    TensorFlow's ``ExponentialMovingAverage(num_updates=t)`` rule, so the early average is not
    dominated by the random initialisation; timm and airbench warm their decay up likewise.
    Batch-norm running statistics are buffers and are averaged like the weights (torchvision's
    ``ExponentialMovingAverage(use_buffers=True)``, timm's ``ModelEmaV2``), so the averaged
    network normalises with averaged statistics; integer buffers (``num_batches_tracked``) are
    copied. ``shadow`` is a dict keyed like ``model.state_dict()``; ``swapped_into(model)``
    evaluates with it. ``state_dict()`` / ``load_state_dict()`` make a resume exact.
    """

    def __init__(self, model, decay, warmup=True):
        require(is_number(decay) and 0.0 < decay < 1.0, "decay", "a value in (0, 1)", decay)
        self.decay, self.warmup, self.num_updates = float(decay), bool(warmup), 0
        # References to the live arrays: layers and optimisers update them in place.
        self.live = {}
        for path, module in model.named_modules():
            for store in (module.params, module.buffers):
                for name, value in store.items():
                    self.live[f"{path}.{name}" if path else name] = value
        # C order, so that the update's flat views are views (kernels/updates.py).
        self.shadow = {key: np.array(value, copy=True, order="C")
                       for key, value in self.live.items()}

    def current_decay(self):
        """The decay the next update will use."""
        t = self.num_updates
        return min(self.decay, (1 + t) / (10 + t)) if self.warmup else self.decay

    def update(self):
        """One step of the average, in place: ``shadow += (1 - d) * (live - shadow)``."""
        weight = 1.0 - self.current_decay()  # rounded to the shadow's dtype, as NumPy would
        for key, live in self.live.items():
            shadow = self.shadow[key]
            if shadow.dtype.kind == "f":  # one pass, no temporaries (kernels/updates.py)
                kernels.pick(updates, "ema_update")(shadow.reshape(-1), live.reshape(-1),
                                                    weight)
            else:
                np.copyto(shadow, live)
        self.num_updates += 1

    @contextmanager
    def swapped_into(self, model):
        """Inside this context `model` holds the averaged weights and buffers; on leaving, its
        own come back (copied in place, so optimisers keep their references)."""
        own = model.state_dict()
        model.load_state_dict(self.shadow)
        try:
            yield model
        finally:
            model.load_state_dict(own)

    def state_dict(self):
        """``num_updates`` and a copy of every shadow array, keyed like the model's state dict."""
        return {"num_updates": self.num_updates,
                **{key: value.copy() for key, value in self.shadow.items()}}

    def load_state_dict(self, state):
        """Restore what ``state_dict()`` returned; ValueError names missing, unexpected or
        mis-shaped keys before anything changes."""
        expected = {"num_updates", *self.shadow}
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        problems = ([f"missing keys {missing}"] if missing else []) + (
            [f"unexpected keys {unexpected}"] if unexpected else [])
        problems += [f"{key}: expected shape {value.shape}, got {np.shape(state[key])}"
                     for key, value in self.shadow.items()
                     if key in state and np.shape(state[key]) != value.shape]
        if problems:
            raise ValueError("EMA.load_state_dict: " + "; ".join(problems))
        self.num_updates = int(_as_scalar(state["num_updates"]))
        for key, value in self.shadow.items():
            np.copyto(value, state[key], casting="unsafe")
