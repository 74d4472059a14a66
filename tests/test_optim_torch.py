"""Optional cross-check of minimobile.optim and minimobile.schedules against torch.optim."""

import numpy as np
import pytest

from minimobile.optim import SGD, AdamW, RMSprop, default_no_decay
from minimobile.schedules import cosine_with_warmup, one_cycle, step_decay

torch = pytest.importorskip("torch")

SHAPES = {
    "features.0.0.weight": (4, 1, 3, 3),
    "features.0.1.weight": (4,),
    "features.0.1.bias": (4,),
    "classifier.3.weight": (3, 4),
    "classifier.3.bias": (3,),
}

decay_all = lambda name, param: False  # noqa: E731

# (ours, torch's class, torch's kwargs, no_decay rule): both sides get the same hyper-parameters.
CASES = {
    "sgd": (SGD, torch.optim.SGD, dict(lr=0.1), default_no_decay),
    "sgd_momentum": (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9), default_no_decay),
    "sgd_momentum_wd": (SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.05),
                        default_no_decay),
    "sgd_nesterov_wd": (SGD, torch.optim.SGD,
                        dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
                        default_no_decay),
    "sgd_nesterov_decay_all": (SGD, torch.optim.SGD,
                               dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.05),
                               decay_all),
    "rmsprop_mobilenet": (RMSprop, torch.optim.RMSprop,
                          dict(lr=0.01, alpha=0.9, eps=0.0316, momentum=0.9, weight_decay=4e-5),
                          default_no_decay),
    "rmsprop_plain": (RMSprop, torch.optim.RMSprop,
                      dict(lr=0.01, alpha=0.99, eps=1e-8, momentum=0.0, weight_decay=0.0),
                      default_no_decay),
    "rmsprop_centered_wd": (RMSprop, torch.optim.RMSprop,
                            dict(lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=0.05,
                                 centered=True), decay_all),
    "adamw": (AdamW, torch.optim.AdamW, dict(lr=0.01), default_no_decay),
    "adamw_wd": (AdamW, torch.optim.AdamW,
                 dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1), default_no_decay),
    "adamw_decay_all": (AdamW, torch.optim.AdamW, dict(lr=0.01, weight_decay=0.1), decay_all),
}


def grad_of(p, k):
    # Depends on the parameter, so any difference in one step shows up in every later one.
    return np.sin(3.0 * p + k) + 0.5 * p


@pytest.mark.parametrize("case", list(CASES))
def test_five_steps_match_torch_optim_in_float64(case):
    ours_cls, torch_cls, kw, no_decay = CASES[case]
    rng = np.random.default_rng(0)
    params = {n: rng.standard_normal(s) for n, s in SHAPES.items()}
    grads = {n: np.zeros_like(p) for n, p in params.items()}
    ours = ours_cls([(n, params[n], grads[n]) for n in params], no_decay=no_decay, **kw)

    tensors = {n: torch.tensor(p.copy(), dtype=torch.float64, requires_grad=True)
               for n, p in params.items()}
    wd = kw.get("weight_decay", 0.0)
    if case.startswith("adamw") and "weight_decay" not in kw:
        wd = 0.01  # torch's AdamW default, which ours shares
    groups = [
        {"params": [t for n, t in tensors.items() if not no_decay(n, params[n])]},
        {"params": [t for n, t in tensors.items() if no_decay(n, params[n])], "weight_decay": 0.0},
    ]
    theirs = torch_cls([g for g in groups if g["params"]], **{**kw, "weight_decay": wd})

    for k in range(5):
        for n in params:
            grads[n][...] = grad_of(params[n], k)
            tensors[n].grad = torch.from_numpy(grad_of(tensors[n].detach().numpy(), k))
        ours.step()
        theirs.step()
    for n in params:
        np.testing.assert_allclose(params[n], tensors[n].detach().numpy(), rtol=1e-12, atol=1e-12,
                                   err_msg=n)


def torch_lrs(make_scheduler, steps, base_lr):
    """Learning rates a torch scheduler hands out at steps 0..steps-1."""
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("total_steps, pct_start", [(100, 0.3), (37, 0.25), (15, 0.2), (3, 0.3)])
def test_one_cycle_matches_torch_one_cycle_lr_without_momentum_cycling(total_steps, pct_start):
    expected = torch_lrs(lambda opt: torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.4, total_steps=total_steps, pct_start=pct_start, cycle_momentum=False),
        total_steps, base_lr=0.4)
    ours = [one_cycle(s, total_steps, max_lr=0.4, pct_start=pct_start)
            for s in range(total_steps)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)


@pytest.mark.parametrize("total_steps, warmup_steps", [(50, 5), (20, 1), (30, 0)])
def test_cosine_with_warmup_has_the_shape_of_torch_linear_lr_then_cosine_annealing(
        total_steps, warmup_steps):
    sch = torch.optim.lr_scheduler
    cosine = lambda opt: sch.CosineAnnealingLR(  # noqa: E731
        opt, T_max=total_steps - warmup_steps, eta_min=0.01)
    if warmup_steps == 0:
        make = cosine
    else:
        make = lambda opt: sch.SequentialLR(opt, [  # noqa: E731
            sch.LinearLR(opt, start_factor=1 / (warmup_steps + 1), total_iters=warmup_steps),
            cosine(opt)], milestones=[warmup_steps])
    expected = torch_lrs(make, total_steps + 1, base_lr=0.2)
    ours = [cosine_with_warmup(s, total_steps, base_lr=0.2, warmup_steps=warmup_steps,
                               min_lr=0.01) for s in range(total_steps + 1)]
    # torch's chained (recursive) form drifts by a few ulps; the shape must agree.
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


def test_step_decay_matches_torch_step_lr():
    expected = torch_lrs(lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=7, gamma=0.3),
                         40, base_lr=0.1)
    ours = [step_decay(s, base_lr=0.1, step_size=7, gamma=0.3) for s in range(40)]
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
