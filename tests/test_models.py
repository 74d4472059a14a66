"""Tests of minimobile.models: tables, shapes, state dicts, modes and whole-network gradients."""

import numpy as np
import pytest

from minimobile import ops
from minimobile.blocks import (Bneck, ConvBNActivation, DepthwiseSeparable, InvertedResidual,
                               NonlinearBottleneck, make_divisible)
from minimobile.gradcheck import numerical_gradient, randomize_batchnorm, sample_indices
from minimobile.layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, Hardsigmoid,
                               Hardswish, Linear, PointwiseConv2d, ReLU, ReLU6,
                               SqueezeExcitation, deferred_normalization, no_grad)
from minimobile.models import (V1_SETTING, V2_SETTING, V3_LARGE_SETTING, V3_SMALL_SETTING,
                               mobilenet_v1, mobilenet_v2, mobilenet_v3_large,
                               mobilenet_v3_small)

BUILDERS = {"v1": mobilenet_v1, "v2": mobilenet_v2, "v3_small": mobilenet_v3_small,
            "v3_large": mobilenet_v3_large}


def blocks_of(model):
    return [m for m in model.features if isinstance(m, (DepthwiseSeparable, InvertedResidual,
                                                        Bneck))]


def last_width(arch, width_mult):
    """Channels of the last feature map, from the papers' tables."""
    return {"v1": make_divisible(1024 * width_mult),
            "v2": make_divisible(1280 * max(1.0, width_mult)),
            "v3_small": 6 * make_divisible(96 * width_mult),
            "v3_large": 6 * make_divisible(160 * width_mult)}[arch]


def test_architecture_tables_have_the_published_rows():
    assert len(V1_SETTING) == 13 and V1_SETTING[-1] == (1024, 1)
    assert sum(n for _, _, n, _ in V2_SETTING) == 17
    assert len(V3_LARGE_SETTING) == 15 and len(V3_SMALL_SETTING) == 11
    for table in (V3_LARGE_SETTING, V3_SMALL_SETTING):
        # each row's input is the previous row's output
        assert all(a[3] == b[0] for a, b in zip(table, table[1:]))


@pytest.mark.parametrize("arch, expected", [
    ("v1", 4_231_976), ("v2", 3_504_872), ("v3_small", 2_542_856), ("v3_large", 5_483_032),
])
def test_parameter_counts_match_the_published_models(arch, expected):
    assert BUILDERS[arch](seed=0).num_parameters() == expected


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("width_mult, resolution", [(0.35, 64), (1.0, 96), (1.4, 72)])
def test_output_shapes_follow_width_and_resolution(arch, width_mult, resolution):
    model = BUILDERS[arch](width_mult=width_mult, num_classes=7, seed=0).eval()
    x = np.zeros((1, 3, resolution, resolution), np.float32)
    with no_grad():
        features = model.features.forward(x)
        logits = model.forward(x)
    side = -(-resolution // 32)  # five stride-2 layers, each rounding up
    assert features.shape == (1, last_width(arch, width_mult), side, side)
    assert logits.shape == (1, 7) and logits.dtype == np.float32


@pytest.mark.parametrize("arch, side", [("v1", 2), ("v2", 4), ("v3_small", 4), ("v3_large", 4)])
def test_cifar_variants_take_32x32_and_end_at_the_documented_size(arch, side):
    model = BUILDERS[arch](width_mult=0.25, cifar=True, seed=0).eval()
    x = np.zeros((2, 3, 32, 32), np.float32)
    with no_grad():
        assert model.features.forward(x).shape[2:] == (side, side)
        assert model.forward(x).shape == (2, 10)


def test_num_classes_defaults_to_1000_or_10_for_cifar_unless_given():
    assert mobilenet_v3_small(width_mult=0.25, seed=0).num_classes == 1000
    assert mobilenet_v3_small(width_mult=0.25, cifar=True, seed=0).num_classes == 10
    model = mobilenet_v1(width_mult=0.25, cifar=True, num_classes=100, seed=0)
    assert model.state_dict()["classifier.1.weight"].shape == (100, 256)


@pytest.mark.parametrize("arch, residual_blocks", [
    ("v1", 0), ("v2", 10), ("v3_small", 6), ("v3_large", 10),
])
def test_skip_connections_are_exactly_where_stride_is_1_and_widths_match(arch,
                                                                         residual_blocks):
    model = BUILDERS[arch](seed=0)
    blocks = blocks_of(model)
    for block in blocks:
        expected = (not isinstance(block, DepthwiseSeparable) and block.stride == 1
                    and block.in_channels == block.out_channels)
        assert block.use_res_connect == expected
    assert sum(b.use_res_connect for b in blocks) == residual_blocks


V2_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.num_batches_tracked": (),
    "features.1.conv.0.0.weight": (32, 1, 3, 3),  # t = 1: no expand, the depthwise comes first
    "features.1.conv.1.weight": (16, 32, 1, 1),
    "features.1.conv.2.running_var": (16,),
    "features.2.conv.0.0.weight": (96, 16, 1, 1),
    "features.2.conv.1.0.weight": (96, 1, 3, 3),
    "features.2.conv.2.weight": (24, 96, 1, 1),
    "features.2.conv.3.running_mean": (24,),
    "features.17.conv.2.weight": (320, 960, 1, 1),
    "features.18.0.weight": (1280, 320, 1, 1),
    "features.18.1.bias": (1280,),
    "classifier.1.weight": (1000, 1280),
    "classifier.1.bias": (1000,),
}
V3_LARGE_KEYS = {
    "features.0.0.weight": (16, 3, 3, 3),
    "features.1.block.0.0.weight": (16, 1, 3, 3),
    "features.1.block.1.0.weight": (16, 16, 1, 1),
    "features.4.block.0.0.weight": (72, 24, 1, 1),
    "features.4.block.1.0.weight": (72, 1, 5, 5),
    "features.4.block.2.fc1.weight": (24, 72, 1, 1),
    "features.4.block.2.fc2.bias": (72,),
    "features.4.block.3.1.running_var": (40,),
    "features.15.block.2.fc1.weight": (240, 960, 1, 1),
    "features.16.0.weight": (960, 160, 1, 1),
    "classifier.0.weight": (1280, 960),
    "classifier.3.weight": (1000, 1280),
}
V3_SMALL_KEYS = {
    "features.1.block.0.0.weight": (16, 1, 3, 3),
    "features.1.block.1.fc1.weight": (8, 16, 1, 1),
    "features.1.block.2.0.weight": (16, 16, 1, 1),
    "features.12.0.weight": (576, 96, 1, 1),
    "classifier.0.weight": (1024, 576),
    "classifier.3.bias": (1000,),
}
V1_KEYS = {
    "features.0.0.weight": (32, 3, 3, 3),
    "features.0.1.running_mean": (32,),
    "features.1.dw.0.weight": (32, 1, 3, 3),
    "features.1.dw.1.weight": (32,),
    "features.1.pw.0.weight": (64, 32, 1, 1),
    "features.13.pw.0.weight": (1024, 1024, 1, 1),
    "features.13.pw.1.num_batches_tracked": (),
    "classifier.1.weight": (1000, 1024),
}


@pytest.mark.parametrize("arch, keys, count", [
    ("v1", V1_KEYS, 164), ("v2", V2_KEYS, 314), ("v3_small", V3_SMALL_KEYS, 244),
    ("v3_large", V3_LARGE_KEYS, 312),
])
def test_state_dict_keys_and_shapes_are_torchvisions(arch, keys, count):
    state = BUILDERS[arch](seed=0).state_dict()
    assert {k: state[k].shape for k in keys} == keys
    assert len(state) == count
    assert state[next(iter(state))].dtype == np.float32
    assert all(state[k].dtype == np.int64 for k in state if k.endswith("num_batches_tracked"))


def test_state_dict_round_trips_between_models_and_rejects_other_widths():
    a = mobilenet_v3_small(width_mult=0.25, cifar=True, seed=1)
    b = mobilenet_v3_small(width_mult=0.25, cifar=True, seed=2)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    b.load_state_dict(a.state_dict())
    with no_grad():
        np.testing.assert_array_equal(a.eval().forward(x), b.eval().forward(x))
    with pytest.raises(ValueError, match="shape mismatches"):
        mobilenet_v3_small(width_mult=0.5, cifar=True, seed=0).load_state_dict(a.state_dict())


def test_weights_come_from_the_seed_or_rng_but_not_both():
    a, b = mobilenet_v2(width_mult=0.25, seed=5), mobilenet_v2(width_mult=0.25, seed=5)
    c = mobilenet_v2(width_mult=0.25, rng=np.random.default_rng(5))
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
        np.testing.assert_array_equal(v, c.state_dict()[k])
    assert not np.array_equal(a.state_dict()["features.0.0.weight"],
                              mobilenet_v2(width_mult=0.25, seed=6).state_dict()[
                                  "features.0.0.weight"])
    with pytest.raises(ValueError, match="not both"):
        mobilenet_v2(seed=1, rng=np.random.default_rng(1))


def test_initialisation_follows_torchvision():
    model = mobilenet_v2(seed=0)
    for _, m in model.named_modules():
        if isinstance(m, BatchNorm2d):
            assert (m.params["weight"] == 1).all() and (m.params["bias"] == 0).all()
            assert (m.buffers["running_mean"] == 0).all() and (m.buffers["running_var"] == 1).all()
            assert (m.eps, m.momentum) == (1e-5, 0.1)
        if isinstance(m, Linear):
            assert abs(m.params["weight"].std() - 0.01) < 1e-4
            assert (m.params["bias"] == 0).all()
    w = model.state_dict()["features.18.0.weight"]  # Kaiming normal, fan-out = 1280
    assert abs(w.std() / np.sqrt(2 / 1280) - 1) < 0.01 and abs(w.mean()) < 1e-3
    v3 = mobilenet_v3_small(width_mult=0.25, seed=0)
    assert all((m.eps, m.momentum) == (1e-3, 0.01) for _, m in v3.named_modules()
               if isinstance(m, BatchNorm2d))


def test_dtype_float64_builds_float64_parameters_and_outputs():
    model = mobilenet_v1(width_mult=0.25, cifar=True, dtype=np.float64, seed=0)
    assert all(p.dtype == np.float64 for _, p, _ in model.named_parameters())
    with no_grad():
        assert model.forward(np.zeros((2, 3, 32, 32))).dtype == np.float64


@pytest.mark.parametrize("arch", ["v1", "v2", "v3_small"])
def test_eval_mode_uses_running_statistics_and_turns_dropout_off(arch):
    rng = np.random.default_rng(0)
    model = BUILDERS[arch](width_mult=0.25, cifar=True, dropout=0.5, seed=0)
    assert any(isinstance(m, Dropout) and m.p == 0.5 for _, m in model.named_modules())
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    with no_grad():
        train_a, train_b = model.forward(x), model.forward(x)  # dropout draws new masks
        assert not np.allclose(train_a, train_b)
        bn = next(m for _, m in model.named_modules() if isinstance(m, BatchNorm2d))
        assert bn.buffers["num_batches_tracked"] == 2
        running = bn.buffers["running_mean"].copy()
        model.eval()
        eval_a, eval_b = model.forward(x), model.forward(x)
    np.testing.assert_array_equal(eval_a, eval_b)
    np.testing.assert_array_equal(bn.buffers["running_mean"], running)
    assert bn.buffers["num_batches_tracked"] == 2
    assert not np.allclose(eval_a, train_a)
    model.train()
    assert all(m.training for _, m in model.named_modules())


# Every input of these activations is logged as the piece it falls in; two forwards that log
# different pieces straddle a kink somewhere in the network.
KINKS = {ReLU: (0.0,), ReLU6: (0.0, 6.0), Hardswish: (-3.0, 3.0), Hardsigmoid: (-3.0, 3.0)}


def log_activation_pieces(model):
    """Wrap each piecewise activation's forward (an instance attribute shadows the method) to
    append np.digitize(x, kinks) to the returned log, which the caller clears per forward."""
    log = []

    def logging_forward(module, kinks):
        forward = module.forward

        def forward_and_log(x):
            log.append(np.digitize(x, kinks).astype(np.int8).tobytes())
            return forward(x)
        return forward_and_log

    for _, m in model.named_modules():
        if type(m) in KINKS:
            m.forward = logging_forward(m, KINKS[type(m)])
    return log


@pytest.mark.slow
@pytest.mark.parametrize("arch, width_mult, side", [
    ("v1", 0.25, 32), ("v2", 0.1, 16), ("v3_small", 0.25, 16), ("v3_large", 0.1, 16),
])
def test_whole_network_backward_matches_numerical_gradient(arch, width_mult, side):
    """3 sampled entries of every parameter array and 5 of the input, float64, training mode,
    dropout 0, cifar layout ending at 2x2. Each probe moves ~1e5 activation inputs at once, so
    some +-h pair straddles a kink now and then: those probes are detected and dropped. An
    array's error is scaled by its largest analytic gradient, not by the 3 samples'."""
    rng = np.random.default_rng(11)
    model = BUILDERS[arch](width_mult=width_mult, cifar=True, dropout=0.0, dtype=np.float64,
                           rng=rng)
    randomize_batchnorm(model, rng)
    for _, m in model.named_modules():
        if isinstance(m, Linear):  # torchvision's N(0, 0.01) would make every gradient tiny
            m.params["weight"][...] = rng.standard_normal(m.params["weight"].shape) * 0.3
            m.params["bias"][...] = rng.standard_normal(m.params["bias"].shape) * 0.3
    # The kink logger must see every activation's input, so the blocks run their children one
    # by one; the fused batch norm + activation is bitwise the same (tests/test_blocks.py).
    for _, m in model.named_modules():
        if isinstance(m, ConvBNActivation):
            m.fuse = False
    log = log_activation_pieces(model)
    x = rng.standard_normal((2, 3, side, side))
    out = model.forward(x)
    dout = rng.standard_normal(out.shape)
    dx = model.backward(dout)
    targets = [(name, p, g.copy()) for name, p, g in model.named_parameters()]
    targets.append(("input", x, dx))
    scale = max(np.abs(g).max() for _, _, g in targets)
    bn_biases = {f"{path}.bias" for path, m in model.named_modules()
                 if isinstance(m, BatchNorm2d)}
    pieces = []

    def f():
        log.clear()
        with no_grad():
            logits = model.forward(x)
        pieces.append(b"".join(log))
        return logits

    errors, probes, straddled = {}, 0, 0
    for name, p, g in targets:
        indices = sample_indices(p.shape, 5 if name == "input" else 3, rng)
        pieces.clear()
        numeric = numerical_gradient(f, p, dout, indices=indices)
        smooth = [i for k, i in enumerate(indices) if pieces[2 * k] == pieces[2 * k + 1]]
        probes, straddled = probes + len(indices), straddled + len(indices) - len(smooth)
        if not smooth:
            continue
        picked = tuple(np.array(smooth).T)
        if np.abs(g).max() <= 1e-10 * scale:
            # A batch norm's bias that feeds a 1x1 conv and another training-mode batch norm
            # has gradient exactly 0: the second norm subtracts any per-channel shift.
            assert name in bn_biases, name
            assert np.abs(numeric[picked]).max() <= 1e-7 * scale, name
            continue
        errors[name] = float(np.abs(g[picked] - numeric[picked]).max() / np.abs(g).max())
    # Straddles depend on how close the nearest of ~1e5 inputs lies to a kink (1e-5 is
    # typical); what matters is that most arrays keep a smooth probe and get a verdict.
    assert len(errors) >= 0.75 * len(targets), (len(errors), len(targets), straddled, probes)
    worst = max(errors, key=errors.get)
    assert errors[worst] < 1e-6, (worst, errors[worst])


def test_backward_fills_every_gradient_and_returns_the_input_gradient():
    rng = np.random.default_rng(0)
    model = mobilenet_v3_small(width_mult=0.25, cifar=True, seed=0)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    dx = model.backward(np.ones_like(model.forward(x)))
    assert dx.shape == x.shape and dx.dtype == np.float32
    assert all(np.abs(g).sum() > 0 for name, _, g in model.named_parameters())
    assert all(m._cache is None for _, m in model.named_modules())


@pytest.mark.parametrize("arch", list(BUILDERS))
def test_only_the_stem_is_a_standard_conv(arch):
    model = BUILDERS[arch](width_mult=0.25, seed=0)
    convs = [(name, type(m)) for name, m in model.named_modules()
             if isinstance(m, (Conv2d, DepthwiseConv2d, PointwiseConv2d))]
    assert convs[0] == ("features.0.0", Conv2d)
    assert all(kind is not Conv2d for _, kind in convs[1:])
    assert any(kind is DepthwiseConv2d for _, kind in convs)


def test_v1_paper_multipliers_need_no_rounding_so_plain_scaling_gives_the_same_widths():
    for alpha in (1.0, 0.75, 0.5, 0.25):
        for c in [32] + [c for c, _ in V1_SETTING]:
            assert make_divisible(c * alpha) == c * alpha
    assert mobilenet_v1(width_mult=0.25, seed=0).features[13].pw[0].params["weight"].shape[0] \
        == 256


def test_mobilenet_v2_builds_its_blocks_with_the_given_block_class_and_the_same_arguments():
    calls = []

    class RecordingBlock(InvertedResidual):
        def __init__(self, *args, **kwargs):
            calls.append((args, sorted(kwargs)))
            super().__init__(*args, **kwargs)

    mine = mobilenet_v2(width_mult=0.25, cifar=True, seed=0, block=RecordingBlock)
    library = mobilenet_v2(width_mult=0.25, cifar=True, seed=0)
    assert len(calls) == sum(n for _, _, n, _ in V2_SETTING) == len(blocks_of(library))
    assert all(isinstance(m, RecordingBlock) for m in blocks_of(mine))
    assert all(kwargs == ["dtype", "rng"] for _, kwargs in calls)
    assert [args for args, _ in calls] == [
        (m.in_channels, m.out_channels, m.stride, m.expand_ratio) for m in blocks_of(library)]
    # Same arguments and the same draws from the same seed: the same network, weight for weight.
    mine_state, library_state = mine.state_dict(), library.state_dict()
    assert list(mine_state) == list(library_state)
    assert all(np.array_equal(mine_state[k], library_state[k]) for k in library_state)


def test_mobilenet_v2_with_nonlinear_bottlenecks_keeps_its_parameters_and_clips_each_projection():
    linear = mobilenet_v2(width_mult=0.25, cifar=True, seed=0)
    nonlinear = mobilenet_v2(width_mult=0.25, cifar=True, seed=0, block=NonlinearBottleneck)
    assert all(isinstance(m, NonlinearBottleneck) and isinstance(m.conv[-1], ReLU6)
               for m in blocks_of(nonlinear))
    linear_state, nonlinear_state = linear.state_dict(), nonlinear.state_dict()
    assert list(nonlinear_state) == list(linear_state)
    assert all(np.array_equal(nonlinear_state[k], linear_state[k]) for k in linear_state)


def test_build_model_lives_in_models_and_refuses_a_width_beyond_the_bound():
    from minimobile import models, train
    assert train.build_model is models.build_model and train.MODELS is models.MODELS
    assert type(models.build_model("v3-small", width=0.25)).__name__ == "MobileNetV3"
    for width in (0, -1, models.MAX_WIDTH * 1.01, 100):
        with pytest.raises(ValueError, match="width"):
            models.build_model("v1", width=width)



@pytest.mark.parametrize("arch", list(BUILDERS))
def test_deferring_batch_norm_into_the_next_conv_changes_no_bit(arch, monkeypatch, sums_made,
                                                                 statistics_made):
    """MobileNet.defer_normalization hands each depthwise or 1x1 conv that alone reads a batch
    norm's output a NormalizedMap instead (the map is never written), V3's squeeze-excite its
    depthwise layer's output the same way (counted where it pools it), and V3's projection
    squeeze-excite's output as a ScaledMap, the depthwise and 1x1 convs make such a batch
    norm's backward sums (kernels/batchnorm.py, 3e), each 1x1 conv makes its own batch
    norm's dx (3f), and the depthwise and 1x1 convs make their own batch norm's forward
    statistics (3g): a training step gives the same logits and gradients, bit for bit, as the
    plain path."""
    handed, gradients = [], []

    def counting_backward(dout, cache, backward=ops.batchnorm2d_backward_deferred):
        gradients.append(1)
        return backward(dout, cache)
    monkeypatch.setattr(ops, "batchnorm2d_backward_deferred", counting_backward)
    for name in ("depthwise_conv2d_forward", "pointwise_conv2d_forward",
                 "depthwise_conv2d_forward_with_statistics",
                 "pointwise_conv2d_forward_with_statistics", "global_avg_pool_forward"):
        def counting_forward(x, *args, forward=getattr(ops, name)):
            handed.append(isinstance(x, (ops.NormalizedMap, ops.ScaledMap)))
            return forward(x, *args)
        monkeypatch.setattr(ops, name, counting_forward)
    x = np.random.default_rng(1).standard_normal((3, 3, 32, 32)).astype(np.float32)
    steps = []
    for defer in (True, False):
        model = BUILDERS[arch](width_mult=0.25, cifar=True, seed=0)
        model.defer_normalization = defer
        handed.clear()
        logits = model.forward(x)
        model.backward(np.random.default_rng(2).standard_normal(logits.shape).astype(np.float32))
        grads = {name: g.copy() for name, module in model.named_modules()
                 for name_g, g in module.grads.items() for name in [f"{name}.{name_g}"]}
        steps.append((logits, grads, sum(handed), sum(sums_made), len(gradients),
                      sum(statistics_made)))
        sums_made.clear()
        gradients.clear()
        statistics_made.clear()
    ((logits, grads, deferred, made, deferred_gradients, statistics),
     (plain_logits, plain_grads, none, none_made, no_gradients, no_statistics)) = steps
    expected = sum(isinstance(m, (ConvBNActivation, SqueezeExcitation)) and m.defer_output
                   for _, m in model.named_modules())
    assert deferred == expected > 0 and none == 0
    # and some of the batch norms read by a depthwise conv got their backward sums from it,
    # and every 1x1 conv's batch norm left its dx to the conv (ops.NormalizedGradient)
    assert made > 0 and none_made == 0
    assert deferred_gradients == sum(isinstance(m, ConvBNActivation)
                                     and isinstance(m[0], PointwiseConv2d)
                                     for _, m in model.named_modules()) > 0
    assert no_gradients == 0
    # and the batch norms after depthwise and 1x1 convs on maps of at least
    # BN_ROW_SUMS_MIN_PIXELS got their statistics from the conv (at 32x32 input, every
    # network has some)
    assert statistics > 0 and no_statistics == 0
    np.testing.assert_array_equal(logits, plain_logits)
    assert grads.keys() == plain_grads.keys()
    for name in grads:
        np.testing.assert_array_equal(grads[name], plain_grads[name], err_msg=name)


def _marked(model):
    return [name for name, m in model.named_modules()
            if isinstance(m, ConvBNActivation) and m.defer_output]


def test_deferral_marks_only_maps_one_conv_alone_reads():
    """V1: the stem and every pointwise layer but the last feed the next block's depthwise
    conv, and every depthwise layer its block's pointwise conv. V2: each expansion, and the
    stem (at width 0.5 the first block has no expansion and no skip; at 0.25 it keeps 8
    channels and has a skip, which reads the stem's output too), and every depthwise layer,
    read by its block's projection. V3: every depthwise layer (read by its projection, or by
    squeeze-excite, which pools and scales it as it reads), and every squeeze-excite (the
    projection alone reads its output). A block called on its own, outside MobileNet.forward,
    still returns an array, and so does squeeze-excite in eval mode."""
    v1 = mobilenet_v1(width_mult=0.25, cifar=True, seed=0)
    assert _marked(v1) == ["features.0"] + [f"features.{i}.{part}" for i in range(1, 14)
                                            for part in ("dw", "pw") if (i, part) != (13, "pw")]
    for width, stem in ((0.5, ["features.0"]), (0.25, [])):
        v2 = mobilenet_v2(width_mult=width, cifar=True, seed=0)
        assert _marked(v2) == stem + ["features.1.conv.0"] + [
            f"features.{i}.conv.{j}" for i in range(2, 18) for j in (0, 1)]
    v3 = mobilenet_v3_small(width_mult=1.0, cifar=True, seed=0)
    bnecks = [block for block in v3.features if isinstance(block, Bneck)]
    with_se = [any(isinstance(m, SqueezeExcitation) for m in b.block) for b in bnecks]
    depthwise = [next(m for m in b.block if isinstance(m, ConvBNActivation)
                      and isinstance(m[0], DepthwiseConv2d)) for b in bnecks]
    assert all(d.defer_output for d in depthwise)
    assert any(with_se) and not all(with_se)
    gates = [m for b in bnecks for m in b.block if isinstance(m, SqueezeExcitation)]
    assert len(gates) == sum(with_se) and all(g.defer_output for g in gates)
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    assert isinstance(v1.features[0].forward(x), np.ndarray)
    with deferred_normalization():
        v3.train()
        y = np.random.default_rng(1).standard_normal((2, gates[0].fc1.params["weight"].shape[1],
                                                      8, 8)).astype(np.float32)
        assert isinstance(gates[0].forward(y), ops.ScaledMap)
        v3.eval()
        assert isinstance(gates[0].forward(y), np.ndarray)


@pytest.mark.parametrize("kwargs, message", [
    (dict(width_mult=0), r"mobilenet_v1: width_mult: expected a finite number > 0, got 0"),
    (dict(width_mult=-1.0), r"mobilenet_v1: width_mult: expected a finite number > 0, got -1\.0"),
    (dict(width_mult="1.0"), r"mobilenet_v1: width_mult: expected a finite number > 0, "
                             r"got '1\.0'"),
    (dict(dtype=np.int32), r"mobilenet_v1: dtype: expected float32 or float64, got "),
    (dict(dtype="banana"), r"mobilenet_v1: dtype: expected float32 or float64, got 'banana'"),
    (dict(seed=-1), r"seed: expected None or an integer >= 0, got -1"),
    (dict(num_classes=0), r"mobilenet_v1: num_classes: expected None or an integer >= 1, got 0"),
    (dict(dropout=1.0), r"mobilenet_v1: dropout: expected a number with 0 <= dropout < 1, "
                        r"got 1\.0"),
])
def test_builders_name_a_bad_argument_before_building_a_layer(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mobilenet_v1(cifar=True, **kwargs)


@pytest.mark.parametrize("builder", [mobilenet_v2, mobilenet_v3_small, mobilenet_v3_large])
def test_every_builder_checks_its_width(builder):
    with pytest.raises(ValueError, match=rf"{builder.__name__}: width_mult: expected a finite "
                                         rf"number > 0, got 0"):
        builder(cifar=True, width_mult=0)
