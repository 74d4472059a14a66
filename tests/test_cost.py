"""Tests of minimobile.cost: per-layer formulas, the published totals, and a model left intact."""

import numpy as np
import pytest

from minimobile.cost import profile
from minimobile.layers import (BatchNorm2d, Conv2d, DepthwiseConv2d, Flatten, GlobalAvgPool2d,
                               Linear, PointwiseConv2d, ReLU6, Sequential)
from minimobile.models import (mobilenet_v1, mobilenet_v2, mobilenet_v3_large,
                               mobilenet_v3_small)


@pytest.fixture(scope="module")
def v1():
    return mobilenet_v1(seed=0)


def test_layer_macs_follow_the_formula_of_each_layer_type():
    rng = np.random.default_rng(0)
    model = Sequential(Conv2d(3, 4, 3, stride=2, padding=1, rng=rng), BatchNorm2d(4), ReLU6(),
                       DepthwiseConv2d(4, 5, rng=rng), PointwiseConv2d(4, 6, bias=True, rng=rng),
                       GlobalAvgPool2d(), Flatten(), Linear(6, 7, rng=rng))
    result = profile(model, (3, 9, 9))
    rows = {row.name: row for row in result.rows}
    assert rows["0"].output_shape == (4, 5, 5)
    assert rows["0"].macs == 4 * 3 * 3 * 3 * 5 * 5  # C_out * C_in * K * K * Ho * Wo
    assert rows["3"].macs == 4 * 5 * 5 * 5 * 5  # C * K * K * Ho * Wo
    assert rows["4"].macs == 6 * 4 * 5 * 5 and rows["4"].params == 6 * 4 + 6
    assert rows["7"].macs == 6 * 7 and rows["7"].output_shape == (7,)
    assert [rows[k].macs for k in ("1", "2", "5", "6")] == [0, 0, 0, 0]
    assert rows["1"].params == 8  # weight and bias; running statistics are not parameters
    assert result.params == model.num_parameters()
    assert result.macs == sum(row.macs for row in result.rows)


@pytest.mark.parametrize("build, params, mmacs", [
    (mobilenet_v1, 4_231_976, 568.74),
    (mobilenet_v2, 3_504_872, 300.77),
    (mobilenet_v3_small, 2_542_856, 56.51),
    (mobilenet_v3_large, 5_483_032, 216.59),
])
def test_totals_at_224_match_the_published_counts(build, params, mmacs):
    result = profile(build(seed=0))
    assert result.params == params
    assert round(result.macs / 1e6, 2) == mmacs


@pytest.mark.parametrize("width_mult, mmacs, mparams", [(0.75, 325, 2.6), (0.5, 149, 1.3),
                                                       (0.25, 41, 0.5)])
def test_v1_width_multipliers_reproduce_the_papers_table_6(width_mult, mmacs, mparams):
    result = profile(mobilenet_v1(width_mult=width_mult, seed=0))
    assert round(result.macs / 1e6) == mmacs
    assert round(result.params / 1e6, 1) == mparams


@pytest.mark.parametrize("resolution, mmacs", [(192, 418), (160, 291), (128, 186)])
def test_v1_resolutions_reproduce_the_papers_table_7(v1, resolution, mmacs):
    result = profile(v1, (3, resolution, resolution))
    assert round(result.macs / 1e6) == mmacs
    assert result.params == 4_231_976


def test_squeeze_excite_convs_are_counted_and_its_scaling_is_not():
    result = profile(mobilenet_v3_small(seed=0))
    fc1 = next(row for row in result.rows if row.name == "features.1.block.1.fc1")
    assert fc1.type == "PointwiseConv2d" and fc1.output_shape == (8, 1, 1)
    assert fc1.macs == 8 * 16 and fc1.params == 8 * 16 + 8
    assert not any(row.name.endswith("block.1") for row in result.rows)  # not a leaf


def test_profile_leaves_the_model_as_it_was():
    model = mobilenet_v3_small(width_mult=0.25, cifar=True, seed=0)
    before = model.state_dict()
    profile(model, (3, 32, 32))
    assert all(m.training for _, m in model.named_modules())
    assert all("forward" not in vars(m) for _, m in model.named_modules())
    after = model.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    profile(model.eval(), (3, 32, 32))
    assert not any(m.training for _, m in model.named_modules())


def test_cifar_profile_ends_at_the_documented_size():
    rows = profile(mobilenet_v2(width_mult=0.5, cifar=True, seed=0), (3, 32, 32)).rows
    assert next(r for r in rows if r.name == "features.18.0").output_shape == (1280, 4, 4)
    assert rows[-1].output_shape == (10,)


def test_format_table_prints_every_layer_and_the_totals(v1):
    result = profile(v1)
    text = str(result)
    assert text == result.format_table()
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "type", "output", "params", "MACs"]
    assert len(lines) == len(result.rows) + 4
    assert "features.13.pw.0" in text and "32x112x112" in text
    assert lines[-1] == "total at 3x224x224: 4,231,976 params, 568,740,352 MACs (568.74 M)"
