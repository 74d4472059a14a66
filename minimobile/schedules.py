"""Learning-rate schedules as pure functions of the step number, and the training resolution as
a pure function of the epoch (progressive resizing).

Every schedule maps ``step`` (0 for the first optimiser step) to a learning rate, holding no
state, so resuming at step k is just calling it with k. The trainer does
``optimizer.lr = schedule(step)`` before each ``optimizer.step()``; ``make_schedule`` binds the
hyper-parameters and checks them once, up front, rather than mid-training.
"""

import functools
import math

from .validation import is_int, is_number, require


def _check_step(step, total_steps=None):
    require(is_int(step), "step", "an integer", step)
    if total_steps is None:
        require(step >= 0, "step", "an integer >= 0", step)
    else:
        require(0 <= step <= total_steps, "step", f"an integer in [0, {total_steps}]", step)


def constant(step, lr):
    """``lr`` at every step; here so "no schedule" goes through the same code path."""
    _check_step(step)
    require(is_number(lr) and lr >= 0.0, "lr", "a finite number >= 0", lr)
    return float(lr)


def cosine_with_warmup(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """Linear warm-up ``base_lr*(step+1)/(warmup_steps+1)`` for ``step < warmup_steps``, then
    ``min_lr + (base_lr - min_lr) * (1 + cos(pi*(step - W)/(total_steps - W))) / 2``.

    The ramp starts near 0, not at 0 (a step with lr 0 is wasted) and meets the cosine at
    ``step = W`` with ``base_lr``; ``step = total_steps`` gives ``min_lr``. It equals PyTorch's
    LinearLR(start_factor=1/(W+1), total_iters=W) followed by CosineAnnealingLR(T_max=T-W).
    """
    require(is_int(total_steps) and total_steps > 0, "total_steps", "an integer > 0",
           total_steps)
    require(is_int(warmup_steps) and 0 <= warmup_steps <= total_steps, "warmup_steps",
           f"an integer in [0, total_steps={total_steps}]", warmup_steps)
    require(is_number(base_lr) and base_lr > 0.0, "base_lr", "a finite number > 0", base_lr)
    require(is_number(min_lr) and 0.0 <= min_lr <= base_lr, "min_lr",
            f"a value in [0, base_lr={base_lr}]", min_lr)
    _check_step(step, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    # max() keeps warmup_steps == total_steps legal: the cosine part is then empty.
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def linear_with_warmup(step, total_steps, base_lr, warmup_steps=0, min_lr=0.0):
    """The same linear warm-up as cosine_with_warmup, then a straight line from ``base_lr`` at
    ``step = W`` to ``min_lr`` at ``step = total_steps``.

    The fast CIFAR-10 trainers decay linearly to (near) zero: "How to train your ResNet" (Page,
    2018) a piecewise-linear triangle, airbench (Jordan, 2024) a linear ramp down; with a short
    budget it keeps the lr higher for longer than a cosine of the same length.
    """
    require(is_int(total_steps) and total_steps > 0, "total_steps", "an integer > 0",
           total_steps)
    require(is_int(warmup_steps) and 0 <= warmup_steps <= total_steps, "warmup_steps",
           f"an integer in [0, total_steps={total_steps}]", warmup_steps)
    require(is_number(base_lr) and base_lr > 0.0, "base_lr", "a finite number > 0", base_lr)
    require(is_number(min_lr) and 0.0 <= min_lr <= base_lr, "min_lr",
            f"a value in [0, base_lr={base_lr}]", min_lr)
    _check_step(step, total_steps)
    if step < warmup_steps:
        return base_lr * (step + 1) / (warmup_steps + 1)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr + (min_lr - base_lr) * progress


def one_cycle(step, total_steps, max_lr, pct_start=0.3, div_factor=25.0, final_div_factor=1e4):
    """PyTorch's OneCycleLR (two phases, cosine annealing), learning rate only.

    Rises from ``max_lr/div_factor`` to ``max_lr`` by step ``pct_start*total_steps - 1``, then
    falls to ``max_lr/div_factor/final_div_factor`` at ``total_steps - 1``. OneCycleLR also
    cycles momentum inversely (0.95 -> 0.85 -> 0.95) by default; we do not, which matches it
    with ``cycle_momentum=False``.
    """
    require(is_int(total_steps) and total_steps > 0, "total_steps", "an integer > 0",
           total_steps)
    require(is_number(max_lr) and max_lr > 0.0, "max_lr", "a finite number > 0", max_lr)
    # pct_start = 1 would leave no annealing phase (and divide by zero at the last step).
    require(is_number(pct_start) and 0.0 <= pct_start < 1.0, "pct_start", "a value in [0, 1)",
            pct_start)
    require(is_number(div_factor) and div_factor > 0.0, "div_factor", "a finite number > 0",
            div_factor)
    require(is_number(final_div_factor) and final_div_factor > 0.0, "final_div_factor",
            "a finite number > 0", final_div_factor)
    warmup_end = float(pct_start * total_steps) - 1
    # PyTorch divides by the warm-up length here and would raise ZeroDivisionError instead.
    if warmup_end == 0.0:
        raise ValueError(f"pct_start * total_steps: expected a value other than 1 (a warm-up of "
                         f"zero length), got {pct_start} * {total_steps} = 1")
    _check_step(step, total_steps)
    initial_lr = max_lr / div_factor
    final_lr = initial_lr / final_div_factor
    # Phase boundaries and the pct formula are PyTorch's, fractional end steps included.
    if step <= warmup_end:
        start, end, pct = initial_lr, max_lr, step / warmup_end
    else:
        start, end = max_lr, final_lr
        pct = (step - warmup_end) / (total_steps - 1 - warmup_end)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def step_decay(step, base_lr, step_size, gamma=0.1):
    """``base_lr * gamma ** (step // step_size)``: PyTorch's StepLR."""
    require(is_number(base_lr) and base_lr > 0.0, "base_lr", "a finite number > 0", base_lr)
    require(is_int(step_size) and step_size > 0, "step_size", "an integer > 0",
           step_size)
    require(is_number(gamma) and gamma > 0.0, "gamma", "a finite number > 0", gamma)
    _check_step(step)
    return base_lr * gamma ** (step // step_size)


def progressive_resolution(epoch, epochs, start, end, ramp_start=0.5, ramp_end=0.75, multiple=4):
    """The training resolution of 0-based ``epoch`` of ``epochs`` under progressive resizing:
    ``start`` while fewer than ``ramp_start * epochs`` epochs are done, ``end`` once
    ``ramp_end * epochs`` are, and in between a linear rise from ``start`` to ``end``, rounded
    down to ``start`` plus a multiple of ``multiple`` pixels (few distinct shapes).

    Early epochs, at high learning rates, learn coarse features that small images carry as well
    as large ones, and a step's cost falls with the pixel count; the last epochs at full
    resolution fit the network (and its batch-norm statistics) to the images it is tested on.
    fast.ai's DAWNBench ImageNet entry, FFCV's ResNet recipes (a linear ramp near the end) and
    Hoffer et al.'s "Mix & Match" (2019, also on CIFAR-10) train this way. ``ramp_start ==
    ramp_end`` is a jump from ``start`` to ``end``.
    """
    require(is_int(epochs) and epochs > 0, "epochs", "an integer > 0", epochs)
    require(is_int(epoch) and 0 <= epoch < epochs, "epoch", f"an integer in [0, {epochs})",
            epoch)
    require(is_int(start) and is_int(end) and 0 < start <= end, "start, end",
            "integers with 0 < start <= end", (start, end))
    require(is_number(ramp_start) and is_number(ramp_end)
            and 0.0 <= ramp_start <= ramp_end <= 1.0, "ramp_start, ramp_end",
            "fractions with 0 <= ramp_start <= ramp_end <= 1", (ramp_start, ramp_end))
    require(is_int(multiple) and multiple > 0, "multiple", "an integer > 0", multiple)
    done = epoch / epochs
    if done >= ramp_end:
        return int(end)
    if done < ramp_start:
        return int(start)
    rise = (end - start) * (done - ramp_start) / (ramp_end - ramp_start)
    return int(start + multiple * int(rise // multiple))


SCHEDULES = {
    "constant": constant,
    "cosine_with_warmup": cosine_with_warmup,
    "linear_with_warmup": linear_with_warmup,
    "one_cycle": one_cycle,
    "step_decay": step_decay,
}


def make_schedule(name, **kw):
    """Bind a schedule's hyper-parameters: ``make_schedule("one_cycle", total_steps=..,
    max_lr=..)`` returns ``lr_at(step)``, a picklable ``functools.partial``.

    Evaluating it once at step 0 runs every argument check now, before training starts.
    """
    require(name in SCHEDULES, "schedule name", f"one of {sorted(SCHEDULES)}", name)
    lr_at = functools.partial(SCHEDULES[name], **kw)
    lr_at(0)
    return lr_at
