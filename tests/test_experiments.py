from fractions import Fraction

import numpy as np
import pytest

import minimobile as mm
from minimobile import experiments as ex
from minimobile.blocks import DepthwiseSeparable, InvertedResidual
from minimobile.cost import profile
from minimobile.gradcheck import randomize_batchnorm
from minimobile.models import mobilenet_v1, mobilenet_v3_small


@pytest.mark.parametrize("C_out, K", [(16, 3), (64, 5), (1024, 7), (10, 3)])
def test_counted_separable_ratio_equals_one_over_c_out_plus_one_over_k_squared(C_out, K):
    cost = ex.separable_cost(C_in=12, C_out=C_out, K=K, size=5)
    assert cost.counted_ratio == Fraction(1, C_out) + Fraction(1, K * K)
    assert cost.counted_ratio == cost.theoretical_ratio


def test_separable_cost_reproduces_v1_table_3_row_for_the_14x14x512_layer():
    cost = ex.separable_cost(C_in=512, C_out=512, K=3, size=14)
    assert cost.standard_macs == 14 * 14 * 512 * 512 * 9
    assert cost.separable_macs == 14 * 14 * 512 * (9 + 512)
    paper_macs, paper_params = ex.V1_TABLE_3["Convolution"]
    assert round(cost.standard_macs / 1e6) == paper_macs
    assert round(cost.standard_params / 1e6, 2) == paper_params
    paper_macs, paper_params = ex.V1_TABLE_3["Depthwise Separable Conv"]
    assert round(cost.separable_macs / 1e6, 1) == paper_macs
    assert round(cost.separable_params / 1e6, 2) == paper_params


def test_separable_cost_grid_covers_every_pair():
    grid = ex.separable_cost_grid([16, 32], [3, 5], C_in=4, size=3)
    assert [(c.C_out, c.K) for c in grid] == [(16, 3), (32, 3), (16, 5), (32, 5)]


def test_cost_by_layer_type_matches_v1_table_2():
    shares = {s.label: s for s in ex.cost_by_layer_type(mobilenet_v1(seed=0))}
    assert set(shares) == set(ex.V1_TABLE_2)
    assert sum(s.macs_share for s in shares.values()) == pytest.approx(100)
    for label in ("Conv 1x1", "Conv DW 3x3", "Fully Connected"):
        assert round(shares[label].macs_share, 2) == ex.V1_TABLE_2[label][0]
    # The paper prints 1.19 % for the stem; its four shares then sum to 99.29 %. The count is
    # 1.91 % (the same digits swapped), with which the column sums to 100.01 %.
    assert round(shares["Conv 3x3"].macs_share, 2) == 1.91
    assert sum(macs for macs, _ in ex.V1_TABLE_2.values()) == pytest.approx(99.29)
    for label, (_, params_share) in ex.V1_TABLE_2.items():
        # The classifier's 1,000 biases are counted here; the paper's shares leave them out.
        assert shares[label].params_share == pytest.approx(params_share, abs=0.03)


def test_time_callable_takes_the_median_and_rejects_zero_repeats():
    calls = []
    timing = ex.time_callable(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(timing.samples) == 3
    assert timing.median == np.median(timing.samples)
    with pytest.raises(ValueError, match=r"time_callable: repeats: expected an integer >= 1"):
        ex.time_callable(lambda: None, repeats=0)


def test_time_forward_backward_leaves_no_cache_and_returns_two_timings():
    layer = ex.depthwise_separable_conv(4, 8, 3, np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 4, 6, 6)).astype(np.float32)
    forward, both = ex.time_forward_backward(layer, x, repeats=2, warmup=0)
    assert forward.median > 0 and both.median > 0
    with pytest.raises(RuntimeError, match="without a forward"):
        layer.backward(np.zeros((2, 8, 6, 6), np.float32))


def test_measure_latency_restores_training_mode():
    model = mobilenet_v3_small(width_mult=0.35, seed=0)
    model.train()
    timing = ex.measure_latency(model, 32, repeats=1, warmup=0)
    assert timing.median > 0 and model.training


def test_latency_sweep_counts_macs_like_profile():
    rows = ex.latency_sweep(mobilenet_v1, "v1", widths=[0.25], resolutions=[32], repeats=1,
                            warmup=0)
    assert [(r.width, r.resolution) for r in rows] == [(0.25, 224), (1.0, 32)]
    for r in rows:
        cost = profile(mobilenet_v1(width_mult=r.width, seed=0), (3, r.resolution, r.resolution))
        assert (r.macs, r.params) == (cost.macs, cost.params), r
    # The V1 paper's Table 6: 0.25 MobileNet-224 has 41 M Mult-Adds and 0.5 M parameters.
    assert rows[0].macs == pytest.approx(41e6, rel=0.01)
    assert rows[0].params == pytest.approx(0.47e6, rel=0.02)


def test_latency_sweep_names_build_model_given_in_place_of_a_builder():
    from minimobile.models import build_model
    with pytest.raises(ValueError, match=r"latency_sweep: build: expected a builder that takes "
                                         r"width_mult and seed .* got 'build_model'"):
        ex.latency_sweep(build_model, "v1", widths=[0.25])


def test_linear_roundtrip_loses_nothing_and_relu_in_two_dimensions_loses_much():
    points = ex.spiral(200)
    T = ex.random_embedding(2, np.random.default_rng(0))
    assert ex.roundtrip_error(points, ex.relu_roundtrip(points, T, relu=False)) < 1e-12
    assert ex.roundtrip_error(points, ex.relu_roundtrip(points, T)) > 0.1


def test_relu_recoverable_agrees_with_solving_on_the_active_rows():
    points = ex.spiral(300)
    T = ex.random_embedding(5, np.random.default_rng(3))
    ok = ex.relu_recoverable(points, T)
    assert 0 < ok.sum() < len(points)
    y = np.maximum(points @ T.T, 0)
    for x, yx, good in zip(points[ok][:20], y[ok][:20], ok[ok][:20]):
        rows = yx > 0
        solved = np.linalg.lstsq(T[rows], yx[rows], rcond=None)[0]
        assert np.allclose(solved, x)


def test_more_of_the_spiral_survives_relu_as_the_embedding_widens():
    points = ex.spiral(500)
    kept = {n: np.mean([ex.relu_recoverable(points, ex.random_embedding(
        n, np.random.default_rng(seed))).mean() for seed in range(10)]) for n in (2, 30)}
    assert kept[2] < 0.5 < 0.9 < kept[30]


@pytest.mark.parametrize("block", [
    DepthwiseSeparable(4, 6, stride=2, rng=np.random.default_rng(0), dtype=np.float64),
    InvertedResidual(4, 4, 1, 2, rng=np.random.default_rng(0), dtype=np.float64),
])
def test_gradient_check_module_finds_the_blocks_backward_correct(block):
    rng = np.random.default_rng(0)
    randomize_batchnorm(block, rng)
    x = rng.standard_normal((2, 4, 5, 5))
    errors = ex.gradient_check_module(block, x, rng, count=8)
    assert "input" in errors and len(errors) == 1 + len(list(block.named_parameters()))
    assert max(errors.values()) < 1e-6


def test_gradient_check_module_catches_a_wrong_backward():
    rng = np.random.default_rng(0)
    block = InvertedResidual(4, 4, 1, 2, rng=rng, dtype=np.float64)
    randomize_batchnorm(block, rng)
    block.use_res_connect = True
    backward = block.backward
    block.backward = lambda dout: backward(dout) - dout  # forgets the skip's gradient
    errors = ex.gradient_check_module(block, rng.standard_normal((2, 4, 5, 5)), rng, count=8)
    assert errors["input"] > 1e-2


def test_fit_overhead_and_work_recovers_a_known_line():
    macs = np.array([50e6, 150e6, 300e6, 600e6])
    a, b, worst = ex.fit_overhead_and_work(macs, 2.0 + 0.01 * macs / 1e6)
    assert abs(a - 2.0) < 1e-9 and abs(b - 0.01) < 1e-12 and worst < 1e-9


def test_relu_recover_inverts_exactly_where_relu_keeps_enough_rows():
    rng = np.random.default_rng(0)
    points = ex.spiral(200)
    T = ex.random_embedding(15, rng)
    back = ex.relu_recover(points, T)
    ok = ex.relu_recoverable(points, T)
    assert ok.any() and not np.isnan(back[ok]).any()
    np.testing.assert_allclose(back[ok], points[ok], atol=1e-9)
    assert np.isnan(back[~ok]).all()


def test_receptive_fields_follow_v1s_strides():
    rows = ex.receptive_fields(mm.mobilenet_v1(num_classes=10, width_mult=0.25), 224)
    assert rows[0].field == 3 and rows[0].jump == 2 and rows[0].size == 112  # the stem
    assert rows[-1].size == 7 and rows[-1].jump == 32  # five stride-2 layers
    fields = [r.field for r in rows]
    assert fields == sorted(fields)


def test_layer_timings_times_every_conv_once_and_leaves_the_model_as_it_was():
    model = mm.mobilenet_v1(num_classes=10, width_mult=0.25, cifar=True, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    with mm.no_grad():
        before = model.eval().forward(x)
    model.train()
    rows = ex.layer_timings(model, x, repeats=1, warmup=0)
    convs = [n for n, m in model.named_modules()
             if isinstance(m, (mm.Conv2d, mm.DepthwiseConv2d, mm.PointwiseConv2d))]
    assert [r.name for r in rows] == convs
    assert model.training and all("forward" not in m.__dict__ for _, m in model.named_modules())
    assert sum(r.macs for r in rows) == 2 * mm.cost.profile(model, (3, 32, 32)).macs - 2 * 10 * (
        model.classifier[-1].params["weight"].shape[1])
    with mm.no_grad():
        np.testing.assert_array_equal(model.eval().forward(x), before)


def test_time_on_rungs_runs_each_rung_and_puts_the_fast_one_back():
    seen = []
    timings = ex.time_on_rungs(lambda: seen.append(mm.kernels.current()), repeats=2, warmup=1)
    assert set(timings) == {"simple", "fast"} and seen == ["simple"] * 3 + ["fast"] * 3
    assert mm.kernels.current() == "fast"


def test_copy_bandwidth_and_the_cache_size_are_sane():
    bw = ex.copy_bandwidth(1 << 20, repeats=3)
    assert bw.gbps > 0 and len(bw.samples) == 3
    size = ex.last_level_cache_bytes()
    assert size is None or size >= 1 << 16


def test_paper_beside_sweep_matches_widths_exactly_and_resolutions_largest_first():
    def row(width, resolution, accuracy=0.5, network="v1"):
        return {"network": network, "width": width, "resolution": resolution, "accuracy": accuracy}
    rows = [row(1.0, 32), row(0.5, 32), row(0.5, 16), row(1.0, 16), row(1.0, 24),
            row(0.25, 32, accuracy=None), row(1.0, 32, network="v2")]
    table6 = ex.paper_beside_sweep(rows, "width")
    assert [(p.setting, p.paper, p.row and (p.row["width"], p.row["resolution"]))
            for p in table6] == [(1.0, ex.V1_TABLE_6[1.0], (1.0, 32)),
                                 (0.75, ex.V1_TABLE_6[0.75], None),
                                 (0.5, ex.V1_TABLE_6[0.5], (0.5, 32)),
                                 (0.25, ex.V1_TABLE_6[0.25], None)]  # no accuracy: left out
    table7 = ex.paper_beside_sweep(rows, "resolution")
    assert [(p.setting, p.row and p.row["resolution"]) for p in table7] == [
        (224, 32), (192, 24), (160, 16), (128, None)]
    assert ex.paper_beside_sweep([row(1.0, r) for r in (32, 28, 24, 20, 16)],
                                 "resolution")[-1] == (None, None, row(1.0, 16))
    with pytest.raises(ValueError, match="table"):
        ex.paper_beside_sweep(rows, "depth")


def test_gradient_check_module_refuses_random_forwards_and_a_seed_for_a_generator():
    block = mm.Sequential(mm.PointwiseConv2d(3, 4, rng=np.random.default_rng(0)),
                          mm.Dropout(0.2)).astype(np.float64)
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"gradient_check_module: the Dropout at 1 makes every "
                                         r"forward random"):
        ex.gradient_check_module(block, x, np.random.default_rng(2))
    with pytest.raises(ValueError, match=r"expected rng to be a np.random.Generator .* got int"):
        ex.gradient_check_module(block, x, 0)


def test_the_measuring_helpers_name_a_bad_size_count_or_network():
    with pytest.raises(ValueError, match=r"theoretical_ratio: C_out, K: expected integers >= 1, "
                                         r"got \(0, 3\)"):
        ex.theoretical_ratio(0, 3)
    with pytest.raises(ValueError, match=r"time_callable: repeats: expected an integer >= 1, "
                                         r"got 2.5"):
        ex.time_callable(lambda: None, repeats=2.5)
    with pytest.raises(ValueError, match=r"copy_bandwidth: nbytes: expected an integer >= 1, "
                                         r"got 64000000.0"):
        ex.copy_bandwidth(64e6)
    with pytest.raises(ValueError, match=r"measure_latency: resolution: expected an integer "
                                         r">= 1, got 224.0"):
        ex.measure_latency(mm.mobilenet_v1(width_mult=0.25, cifar=True, seed=0), 224.0)
    with pytest.raises(ValueError, match=r"fit_overhead_and_work: expected .* at least two "
                                         r"distinct counts"):
        ex.fit_overhead_and_work([5e6], [1.0])
    rows = [dict(network="v1", width=1.0, resolution=32, accuracy=0.7)]
    with pytest.raises(ValueError, match=r"paper_beside_sweep: network: expected a network of "
                                         r"the sweep's rows \(v1\), got 'mobilenet_v1'"):
        ex.paper_beside_sweep(rows, "width", network="mobilenet_v1")
