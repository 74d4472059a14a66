import math

import numpy as np
import pytest

from minimobile.optim import SGD, AdamW, RMSprop, default_no_decay
from minimobile.schedules import (constant, cosine_with_warmup, make_schedule, one_cycle,
                                  step_decay)


class FakeModel:
    """Stands in for a network: a conv weight, a batch-norm pair and a linear layer."""

    def __init__(self, seed=0, dtype=np.float64):
        rng = np.random.default_rng(seed)
        shapes = {
            "features.0.0.weight": (2, 1, 3, 3),
            "features.0.1.weight": (2,),
            "features.0.1.bias": (2,),
            "classifier.3.weight": (3, 4),
            "classifier.3.bias": (3,),
        }
        self.params = {n: rng.standard_normal(s).astype(dtype) for n, s in shapes.items()}
        self.grads = {n: np.zeros_like(p) for n, p in self.params.items()}

    def named_parameters(self):
        return [(n, self.params[n], self.grads[n]) for n in self.params]

    def fill_grads(self, k):
        # A gradient that depends on the parameters, so trajectories diverge if anything differs.
        for i, (n, p) in enumerate(self.params.items()):
            self.grads[n][...] = np.sin(3.0 * p + k + i) + 0.5 * p


def one_param(value, grad, name="classifier.3.weight"):
    """A model with a single (1, 1) weight: scalar arithmetic written out in the tests."""
    p = np.array([[value]], dtype=np.float64)
    g = np.array([[grad]], dtype=np.float64)
    return p, g, [(name, p, g)]


OPTIMISERS = {
    "sgd": lambda ps: SGD(ps, lr=0.1),
    "sgd_momentum_wd": lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "sgd_nesterov": lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "rmsprop": lambda ps: RMSprop(ps, lr=0.01),
    "rmsprop_centered_no_momentum": lambda ps: RMSprop(ps, lr=0.01, momentum=0.0, centered=True),
    "adamw": lambda ps: AdamW(ps, lr=0.01),
}


def test_sgd_without_momentum_is_plain_gradient_descent():
    p, g, params = one_param(1.0, 0.5)
    opt = SGD(params, lr=0.1)
    opt.step()
    opt.step()
    assert p[0, 0] == pytest.approx(1.0 - 0.1 * 0.5 - 0.1 * 0.5, rel=1e-15)


def test_sgd_momentum_buffer_starts_at_the_gradient_then_accumulates():
    p, g, params = one_param(1.0, 0.5)
    opt = SGD(params, lr=0.1, momentum=0.9)
    expected = 1.0
    for buf in [0.5, 0.9 * 0.5 + 0.5, 0.9 * (0.9 * 0.5 + 0.5) + 0.5]:
        opt.step()
        expected -= 0.1 * buf
        assert opt.buffers["momentum_buffer"][0][0, 0] == pytest.approx(buf, rel=1e-15)
        assert p[0, 0] == pytest.approx(expected, rel=1e-15)


def test_nesterov_steps_along_gradient_plus_momentum_times_buffer():
    p, g, params = one_param(1.0, 0.5)
    q, h, plain = one_param(1.0, 0.5)
    nesterov = SGD(params, lr=0.1, momentum=0.9, nesterov=True)
    momentum = SGD(plain, lr=0.1, momentum=0.9)
    expected = 1.0
    for buf in [0.5, 0.9 * 0.5 + 0.5, 0.9 * (0.9 * 0.5 + 0.5) + 0.5]:
        nesterov.step()
        momentum.step()
        expected -= 0.1 * (0.5 + 0.9 * buf)
        assert p[0, 0] == pytest.approx(expected, rel=1e-15)
    assert p[0, 0] < q[0, 0]  # with a constant gradient, nesterov has looked further ahead


def test_sgd_weight_decay_adds_decay_times_param_to_the_gradient():
    p, g, params = one_param(2.0, 0.5)
    opt = SGD(params, lr=0.1, momentum=0.9, weight_decay=0.01)
    d1 = 0.5 + 0.01 * 2.0
    p1 = 2.0 - 0.1 * d1
    d2 = 0.5 + 0.01 * p1
    buf2 = 0.9 * d1 + d2
    p2 = p1 - 0.1 * buf2
    opt.step()
    assert p[0, 0] == pytest.approx(p1, rel=1e-15)
    opt.step()
    assert p[0, 0] == pytest.approx(p2, rel=1e-15)


def test_rmsprop_with_momentum_matches_hand_computed_updates():
    p, g, params = one_param(1.0, 0.5)
    opt = RMSprop(params, lr=0.01, alpha=0.9, eps=1e-3, momentum=0.9, weight_decay=0.0)
    v1 = 0.1 * 0.25
    buf1 = 0.5 / (math.sqrt(v1) + 1e-3)
    p1 = 1.0 - 0.01 * buf1
    g2 = -0.25
    v2 = 0.9 * v1 + 0.1 * g2**2
    buf2 = 0.9 * buf1 + g2 / (math.sqrt(v2) + 1e-3)
    p2 = p1 - 0.01 * buf2
    opt.step()
    assert p[0, 0] == pytest.approx(p1, rel=1e-14)
    g[0, 0] = g2
    opt.step()
    assert p[0, 0] == pytest.approx(p2, rel=1e-14)
    assert opt.buffers["square_avg"][0][0, 0] == pytest.approx(v2, rel=1e-14)


def test_rmsprop_centered_divides_by_the_running_standard_deviation():
    p, g, params = one_param(1.0, 0.5)
    opt = RMSprop(params, lr=0.01, alpha=0.9, eps=1e-3, momentum=0.0, weight_decay=0.0,
                  centered=True)
    v1, m1 = 0.1 * 0.25, 0.1 * 0.5
    p1 = 1.0 - 0.01 * 0.5 / (math.sqrt(v1 - m1**2) + 1e-3)
    v2, m2 = 0.9 * v1 + 0.1 * 0.25, 0.9 * m1 + 0.1 * 0.5
    p2 = p1 - 0.01 * 0.5 / (math.sqrt(v2 - m2**2) + 1e-3)
    opt.step()
    assert p[0, 0] == pytest.approx(p1, rel=1e-14)
    opt.step()
    assert p[0, 0] == pytest.approx(p2, rel=1e-14)


def test_rmsprop_weight_decay_enters_the_gradient_before_squaring():
    p, g, params = one_param(2.0, 0.5)
    opt = RMSprop(params, lr=0.01, alpha=0.9, eps=1e-3, momentum=0.0, weight_decay=0.1)
    d = 0.5 + 0.1 * 2.0
    opt.step()
    assert p[0, 0] == pytest.approx(2.0 - 0.01 * d / (math.sqrt(0.1 * d * d) + 1e-3), rel=1e-14)


def test_adamw_matches_hand_computed_updates_with_bias_correction_and_decoupled_decay():
    p, g, params = one_param(2.0, 0.5)
    lr, b1, b2, eps, wd = 0.01, 0.9, 0.999, 1e-8, 0.1
    opt = AdamW(params, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
    expected, m, v = 2.0, 0.0, 0.0
    for t, grad in [(1, 0.5), (2, -0.25), (3, 1.0)]:
        g[0, 0] = grad
        opt.step()
        expected *= 1 - lr * wd
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        expected -= lr * m_hat / (math.sqrt(v_hat) + eps)
        assert p[0, 0] == pytest.approx(expected, rel=1e-14)


def test_adamw_first_step_moves_each_weight_by_lr_against_the_gradient_sign():
    model = FakeModel()
    before = {n: p.copy() for n, p in model.params.items()}
    model.fill_grads(0)
    AdamW(model.named_parameters(), lr=1e-3, weight_decay=0.0).step()
    for n, p in model.params.items():
        np.testing.assert_allclose(p - before[n], -1e-3 * np.sign(model.grads[n]), rtol=1e-6)


def test_default_no_decay_flags_batch_norm_and_bias_params_only():
    model = FakeModel()
    flagged = {n for n, p, _ in model.named_parameters() if default_no_decay(n, p)}
    assert flagged == {"features.0.1.weight", "features.0.1.bias", "classifier.3.bias"}


@pytest.mark.parametrize("make", [
    lambda ps, **kw: SGD(ps, lr=0.1, weight_decay=0.5, **kw),
    lambda ps, **kw: RMSprop(ps, lr=0.1, weight_decay=0.5, **kw),
    lambda ps, **kw: AdamW(ps, lr=0.1, weight_decay=0.5, **kw),
], ids=["sgd", "rmsprop", "adamw"])
def test_weight_decay_leaves_one_dimensional_params_alone_unless_told_otherwise(make):
    # With zero gradients, weight decay is the only thing that can move a parameter.
    model = FakeModel()
    before = {n: p.copy() for n, p in model.params.items()}
    make(model.named_parameters()).step()
    for n, p in model.params.items():
        assert np.array_equal(p, before[n]) == (p.ndim == 1), n
    everything = FakeModel()
    make(everything.named_parameters(), no_decay=lambda name, param: False).step()
    for n, p in everything.params.items():
        assert np.all(p != before[n]), n


@pytest.mark.parametrize("kind", list(OPTIMISERS))
def test_step_updates_params_in_place_and_keeps_float32(kind):
    model = FakeModel(dtype=np.float32)
    arrays = {n: p for n, p in model.params.items()}
    before = {n: p.copy() for n, p in model.params.items()}
    model.fill_grads(0)
    opt = OPTIMISERS[kind](model.named_parameters())
    opt.step()
    for n, p in model.params.items():
        assert p is arrays[n] and p.dtype == np.float32
        assert not np.array_equal(p, before[n])
    assert all(b.dtype == np.float32 for bufs in opt.buffers.values() for b in bufs)


def test_step_leaves_the_gradients_untouched():
    model = FakeModel()
    model.fill_grads(0)
    grads = {n: g.copy() for n, g in model.grads.items()}
    OPTIMISERS["sgd_nesterov"](model.named_parameters()).step()
    assert all(np.array_equal(model.grads[n], grads[n]) for n in grads)


def test_zero_grad_fills_the_same_grad_arrays_with_zero():
    model = FakeModel()
    model.fill_grads(0)
    arrays = dict(model.grads)
    SGD(model.named_parameters(), lr=0.1).zero_grad()
    for n, g in model.grads.items():
        assert g is arrays[n] and not g.any()


def run(model, opt, steps, start):
    for k in range(start, start + steps):
        model.fill_grads(k)
        opt.step()


@pytest.mark.parametrize("kind", list(OPTIMISERS))
@pytest.mark.parametrize("through_npz", [False, True])
def test_state_dict_round_trip_continues_bit_for_bit(kind, through_npz, tmp_path):
    model = FakeModel(dtype=np.float32)
    opt = OPTIMISERS[kind](model.named_parameters())
    run(model, opt, 3, start=0)
    state = opt.state_dict()
    saved_params = {n: p.copy() for n, p in model.params.items()}
    run(model, opt, 3, start=3)
    if through_npz:
        np.savez(tmp_path / "opt.npz", **state)
        state = dict(np.load(tmp_path / "opt.npz"))
    resumed = FakeModel(dtype=np.float32)
    for n, p in resumed.params.items():
        p[...] = saved_params[n]
    opt2 = OPTIMISERS[kind](resumed.named_parameters())
    opt2.lr = 123.0  # must be overwritten by the loaded state
    opt2.load_state_dict(state)
    assert opt2.lr == opt.lr and opt2.num_steps == 3
    run(resumed, opt2, 3, start=3)
    for n, p in model.params.items():
        assert np.array_equal(resumed.params[n], p), n


def test_state_dict_is_flat_with_named_buffers_step_and_hyper_parameters():
    model = FakeModel()
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9, nesterov=True)
    opt.step()
    state = opt.state_dict()
    assert state["step"] == 1 and state["lr"] == 0.1 and state["nesterov"] is True
    assert "momentum_buffer/features.0.0.weight" in state
    assert set(state) == {"step", "lr", "momentum", "nesterov", "weight_decay"} | {
        f"momentum_buffer/{n}" for n in model.params}


def test_state_dict_returns_copies_that_later_steps_do_not_change():
    model = FakeModel()
    model.fill_grads(0)
    opt = AdamW(model.named_parameters(), lr=0.1)
    opt.step()
    state = opt.state_dict()
    snapshot = state["exp_avg/features.0.0.weight"].copy()
    opt.step()
    assert np.array_equal(state["exp_avg/features.0.0.weight"], snapshot)


def test_load_state_dict_lists_missing_and_unexpected_keys():
    model = FakeModel()
    opt = RMSprop(model.named_parameters(), lr=0.1)
    state = opt.state_dict()
    del state["square_avg/features.0.1.bias"]
    del state["alpha"]
    state["square_avg/features.9.weight"] = np.zeros(3)
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(state)
    message = str(err.value)
    assert "missing keys ['alpha', 'square_avg/features.0.1.bias']" in message
    assert "unexpected keys ['square_avg/features.9.weight']" in message


def test_load_state_dict_reports_shape_mismatch_and_changes_nothing():
    model = FakeModel()
    opt = SGD(model.named_parameters(), lr=0.1, momentum=0.9)
    state = opt.state_dict()
    state["momentum_buffer/classifier.3.weight"] = np.ones((4, 3))
    state["lr"] = 5.0
    with pytest.raises(ValueError, match=r"momentum_buffer/classifier.3.weight: expected shape "
                                         r"\(3, 4\), got \(4, 3\)"):
        opt.load_state_dict(state)
    assert opt.lr == 0.1


def test_load_state_dict_rejects_the_state_of_another_optimiser():
    model = FakeModel()
    state = SGD(model.named_parameters(), lr=0.1, momentum=0.9).state_dict()
    with pytest.raises(ValueError, match="AdamW.load_state_dict: missing keys"):
        AdamW(model.named_parameters(), lr=0.1).load_state_dict(state)


def test_load_state_dict_rejects_a_non_integer_step():
    model = FakeModel()
    opt = SGD(model.named_parameters(), lr=0.1)
    state = opt.state_dict()
    state["step"] = 2.5
    with pytest.raises(ValueError, match=r"step: expected an integer >= 0, got 2.5"):
        opt.load_state_dict(state)


@pytest.mark.parametrize("make, match", [
    (lambda ps: SGD(ps, lr=-1.0), r"lr: expected a finite number >= 0, got -1.0"),
    (lambda ps: SGD(ps, lr="0.1"), r"lr: expected a finite number >= 0, got '0.1'"),
    (lambda ps: SGD(ps, lr=0.1, momentum=float("nan")),
     r"momentum: expected a finite number >= 0, got nan"),
    (lambda ps: RMSprop(ps, lr=0.1, eps=float("inf")),
     r"eps: expected a finite number >= 0, got inf"),
    (lambda ps: AdamW(ps, lr=0.1, betas=0.9), r"betas: expected two values in \[0, 1\)"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), r"nesterov=True: expected momentum > 0, got 0.0"),
    (lambda ps: RMSprop(ps, lr=0.1, alpha=1.5), r"alpha: expected a value in \[0, 1\], got 1.5"),
    (lambda ps: AdamW(ps, lr=0.1, betas=(0.9, 1.0)), r"betas: expected two values in \[0, 1\)"),
    (lambda ps: AdamW(ps, lr=0.1, weight_decay=-0.1),
     r"weight_decay: expected a finite number >= 0, got -0.1"),
], ids=["negative_lr", "string_lr", "nan_momentum", "inf_eps", "betas_not_a_pair",
        "nesterov_without_momentum", "alpha", "betas", "weight_decay"])
def test_optimisers_reject_invalid_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make(FakeModel().named_parameters())


def test_optimisers_reject_grads_that_do_not_match_their_params():
    p = np.zeros((2, 3))
    with pytest.raises(ValueError, match=r"grad of w: expected an array of shape \(2, 3\)"):
        SGD([("w", p, np.zeros((3, 2)))], lr=0.1)
    with pytest.raises(ValueError, match=r"param names: expected unique names, got \['w'\]"):
        SGD([("w", p, np.zeros_like(p)), ("w", p, np.zeros_like(p))], lr=0.1)


def test_optimisers_want_named_triples_not_bare_arrays():
    """PyTorch's habit, SGD([weight]), would otherwise unpack a weight of 3 rows as a name, a
    param and a grad, and train silently wrong."""
    w = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"params: expected \(name, param, grad\) triples, as "
                                         r"model.named_parameters\(\) gives, got 'ndarray'"):
        SGD([w], lr=0.1)
    with pytest.raises(ValueError, match=r"params: expected .* got 'dict'"):
        SGD({"w": w}, lr=0.1)
    with pytest.raises(ValueError, match=r"params: expected .* got 'a tuple of 2'"):
        SGD([("w", w)], lr=0.1)


def test_optimisers_accept_a_one_shot_generator_of_params():
    model = FakeModel()
    opt = SGD((t for t in model.named_parameters()), lr=0.1)
    assert opt.names == list(model.params)


def test_cosine_with_warmup_ramps_linearly_then_follows_the_cosine():
    lrs = [cosine_with_warmup(s, total_steps=10, base_lr=1.0, warmup_steps=4, min_lr=0.1)
           for s in range(11)]
    assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0], rel=1e-15)
    assert lrs[7] == pytest.approx(0.1 + 0.9 * 0.5, rel=1e-15)  # halfway through the cosine
    assert lrs[10] == pytest.approx(0.1, rel=1e-15)
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_cosine_without_warmup_starts_at_base_lr_and_allows_warmup_to_fill_every_step():
    assert cosine_with_warmup(0, total_steps=10, base_lr=0.5) == 0.5
    assert cosine_with_warmup(10, total_steps=10, base_lr=0.5, warmup_steps=10) == 0.5


def test_one_cycle_rises_from_max_lr_over_div_factor_then_anneals_far_below_it():
    # total 15, pct 0.2: the warm-up ends at step 0.2*15 - 1 = 2, the annealing at step 14.
    lr = [one_cycle(s, total_steps=15, max_lr=1.0, pct_start=0.2) for s in range(16)]
    assert lr[0] == pytest.approx(1.0 / 25, rel=1e-15)
    assert lr[1] == pytest.approx((1.0 / 25 + 1.0) / 2, rel=1e-15)
    assert lr[2] == pytest.approx(1.0, rel=1e-15)
    assert lr[8] == pytest.approx((1.0 + 1.0 / 25 / 1e4) / 2, rel=1e-15)
    assert lr[14] == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)


def test_step_decay_multiplies_by_gamma_every_step_size_steps():
    lrs = [step_decay(s, base_lr=0.1, step_size=3, gamma=0.5) for s in range(7)]
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.05, 0.05, 0.025], rel=1e-15)


def test_make_schedule_binds_hyper_parameters_into_a_stateless_lr_at_step():
    lr_at = make_schedule("cosine_with_warmup", total_steps=100, base_lr=0.1, warmup_steps=5)
    forward = [lr_at(s) for s in range(101)]
    backward = [lr_at(s) for s in reversed(range(101))][::-1]
    assert forward == backward
    assert lr_at(50) == cosine_with_warmup(50, total_steps=100, base_lr=0.1, warmup_steps=5)
    assert make_schedule("constant", lr=0.3)(1000) == 0.3


def test_make_schedule_checks_its_arguments_before_training_starts():
    with pytest.raises(ValueError, match=r"warmup_steps: expected an integer in \[0, "
                                         r"total_steps=10\], got 11"):
        make_schedule("cosine_with_warmup", total_steps=10, base_lr=0.1, warmup_steps=11)
    with pytest.raises(ValueError, match=r"schedule name: expected one of \[.*'one_cycle'.*\], "
                                         r"got 'cosine'"):
        make_schedule("cosine", total_steps=10)


@pytest.mark.parametrize("call, match", [
    (lambda: cosine_with_warmup(0, total_steps=0, base_lr=0.1),
     r"total_steps: expected an integer > 0, got 0"),
    (lambda: cosine_with_warmup(11, total_steps=10, base_lr=0.1),
     r"step: expected an integer in \[0, 10\], got 11"),
    (lambda: cosine_with_warmup(0, total_steps=10, base_lr=0.1, min_lr=0.2),
     r"min_lr: expected a value in \[0, base_lr=0.1\], got 0.2"),
    (lambda: one_cycle(0, total_steps=10, max_lr=0.1, pct_start=0.1),
     r"pct_start \* total_steps: expected a value other than 1"),
    (lambda: one_cycle(0, total_steps=10, max_lr=0.1, pct_start=1.0),
     r"pct_start: expected a value in \[0, 1\), got 1.0"),
    (lambda: step_decay(-1, base_lr=0.1, step_size=3), r"step: expected an integer >= 0, got -1"),
    (lambda: step_decay(2.0, base_lr=0.1, step_size=3), r"step: expected an integer, got 2.0"),
    (lambda: constant(0, lr=-0.1), r"lr: expected a finite number >= 0, got -0.1"),
    (lambda: cosine_with_warmup(0, total_steps=10, base_lr=float("inf")),
     r"base_lr: expected a finite number > 0, got inf"),
    (lambda: one_cycle(0, total_steps=10, max_lr="0.1"),
     r"max_lr: expected a finite number > 0, got '0.1'"),
], ids=["total_steps", "step_past_end", "min_lr", "zero_length_warmup", "pct_start",
        "negative_step", "float_step", "negative_lr", "infinite_lr", "string_lr"])
def test_schedules_reject_bad_arguments_naming_expected_and_got(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_linear_with_warmup_ramps_like_the_cosine_then_falls_in_a_straight_line_to_min_lr():
    from minimobile.schedules import linear_with_warmup
    lrs = [linear_with_warmup(s, total_steps=10, base_lr=1.0, warmup_steps=4, min_lr=0.1)
           for s in range(11)]
    ramp = [cosine_with_warmup(s, total_steps=10, base_lr=1.0, warmup_steps=4) for s in range(4)]
    assert lrs[:4] == ramp and lrs[4] == 1.0
    assert lrs[7] == pytest.approx(1.0 - 0.9 * 0.5, rel=1e-15) and lrs[10] == pytest.approx(0.1)
    steps = np.diff(lrs[4:])
    np.testing.assert_allclose(steps, steps[0], rtol=1e-12)  # a straight line
    assert make_schedule("linear_with_warmup", total_steps=10, base_lr=1.0)(10) == 0.0


def _bn():
    from minimobile.layers import BatchNorm2d
    return BatchNorm2d(3)  # params weight, bias; buffers running_mean, running_var, an int


def test_ema_averages_weights_and_running_statistics_and_copies_integer_buffers():
    from minimobile.optim import EMA
    model = _bn()
    ema = EMA(model, decay=0.5, warmup=False)
    expected_w, expected_m = np.ones(3), np.zeros(3)  # BatchNorm2d starts with weight 1
    for t in range(1, 5):
        model.params["weight"][...] = t
        model.buffers["running_mean"][...] = 10 * t
        model.buffers["num_batches_tracked"][...] = t
        ema.update()
        expected_w = 0.5 * expected_w + 0.5 * t
        expected_m = 0.5 * expected_m + 0.5 * 10 * t
    np.testing.assert_allclose(ema.shadow["weight"], expected_w, rtol=1e-6)
    np.testing.assert_allclose(ema.shadow["running_mean"], expected_m, rtol=1e-6)
    assert ema.shadow["num_batches_tracked"] == 4 and ema.shadow["weight"].dtype == np.float32


def test_ema_warmup_follows_tensorflows_num_updates_rule_and_caps_at_decay():
    from minimobile.optim import EMA
    ema = EMA(_bn(), decay=0.9)
    decays = []
    for _ in range(100):
        decays.append(ema.current_decay())
        ema.update()
    assert decays[0] == pytest.approx(0.1) and decays[1] == pytest.approx(2 / 11)
    assert decays[-1] == 0.9 and max(decays) == 0.9
    assert EMA(_bn(), decay=0.9, warmup=False).current_decay() == 0.9


def test_ema_swaps_its_weights_in_for_evaluation_and_restores_the_live_ones():
    from minimobile.optim import EMA
    model = _bn()
    ema = EMA(model, decay=0.5, warmup=False)
    model.params["weight"][...] = 4.0
    ema.update()
    live = model.params["weight"]
    with ema.swapped_into(model):
        np.testing.assert_array_equal(model.params["weight"], 2.5)  # (1 + 4) / 2
    assert model.params["weight"] is live
    np.testing.assert_array_equal(live, 4.0)


def test_ema_state_dict_round_trips_and_refuses_a_mismatch():
    from minimobile.optim import EMA
    model = _bn()
    ema = EMA(model, decay=0.99)
    # Values a fresh EMA does not hold (batch norm starts at weight 1, mean 0, var 1), so that
    # only a real load makes the other EMA's shadow equal to this one's.
    model.params["weight"][...] = 4.0
    model.params["bias"][...] = -2.0
    model.buffers["running_mean"][...] = 3.0
    ema.update()
    ema.update()
    other = EMA(_bn(), decay=0.99)
    fresh = {key: value.copy() for key, value in other.shadow.items()}
    other.load_state_dict(ema.state_dict())
    assert other.num_updates == 2 and other.current_decay() == ema.current_decay()
    assert set(other.shadow) == set(ema.shadow)
    for key in ema.shadow:
        np.testing.assert_array_equal(other.shadow[key], ema.shadow[key], err_msg=key)
    for key in ("weight", "bias", "running_mean"):
        assert not np.array_equal(other.shadow[key], fresh[key]), key
    with pytest.raises(ValueError, match="missing keys.*weight"):
        other.load_state_dict({"num_updates": 0})
    with pytest.raises(ValueError, match="decay"):
        EMA(_bn(), decay=1.0)
