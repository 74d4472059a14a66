"""benchmarks/bench_pointwise.py: the layers it finds, the variants it sets, a tiny run."""

import sys
from pathlib import Path

import numba
import numpy as np
import pytest

from minimobile import ops, tuning

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_pointwise  # noqa: E402


def test_it_finds_v1s_small_map_pointwise_layers_with_their_counts():
    # V1 0.5 on CIFAR: 128->256 then five 256->256 on 4x4 maps, then 256->512 and 512->512
    # on 2x2 (the paper's 512 and 1024 channels at half width).
    assert bench_pointwise.small_map_layers("v1", 0.5, 16) == {
        (128, 256, 4, 4): 1, (256, 256, 4, 4): 5, (256, 512, 2, 2): 1, (512, 512, 2, 2): 1}


@pytest.mark.parametrize("variant, expected", [
    ("per_image", (1, None, None)),
    ("channel_major", (10**9, "channel_major", None)),
    ("groups:96", (10**9, "groups", 96)),
])
def test_each_variant_sets_tuning_and_restore_puts_it_back(variant, expected):
    before = (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
              tuning.POINTWISE_GROUP_COLUMNS)
    saved = bench_pointwise.apply_variant(variant)
    now = (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
           tuning.POINTWISE_GROUP_COLUMNS)
    bench_pointwise.restore(saved)
    assert saved == before
    assert all(e is None or e == n for e, n in zip(expected, now))
    assert (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
            tuning.POINTWISE_GROUP_COLUMNS) == before


@pytest.mark.parametrize("variant", ["groups:", "groups:many", "rows"])
def test_a_bad_variant_name_is_refused_with_the_names_it_takes(variant):
    before = (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS)
    with pytest.raises(SystemExit, match="per_image, channel_major, groups:COLS, torch or torch_cl"):
        bench_pointwise.apply_variant(variant)
    assert (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS) == before


def test_a_tiny_run_prints_a_row_per_layer_and_the_total(capsys):
    bench_pointwise.main(["--models", "v1:0.25", "--rounds", "1", "--batch", "3",
                          "--max-pixels", "4", "--variants", "channel_major,groups:8"])
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("128->256 2x2 (x1)") for line in lines)
    assert lines[-1].startswith("total")
    assert len(lines[-1].split()) == 1 + 2 * 2  # "total", then ms and ratio per variant


def test_flops_count_forward_and_backward():
    # 2 * 8 * 16 per pixel forward, twice that backward, 3 images of 2x2.
    assert bench_pointwise.flops((8, 16, 2, 2), 3) == 6 * 8 * 16 * 4 * 3


def test_gflops_prints_the_reference_and_a_rate_per_cell(capsys):
    bench_pointwise.main(["--models", "v1:0.25", "--rounds", "1", "--batch", "3",
                          "--max-pixels", "4", "--variants", "groups:8", "--gflops"])
    lines = capsys.readouterr().out.splitlines()
    reference = next(line for line in lines if line.startswith("one large product"))
    assert float(reference.split(":")[1].split()[0]) > 0
    total = lines[-1].split()
    assert total[0] == "total" and float(total[1]) > 0 and float(total[2]) > 0


@pytest.mark.parametrize("variant", bench_pointwise.TORCH_VARIANTS)
def test_a_torch_variant_leaves_tuning_alone_or_says_pytorch_is_missing(variant):
    before = (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
              tuning.POINTWISE_GROUP_COLUMNS)
    if bench_pointwise.torch is None:
        with pytest.raises(SystemExit, match="needs PyTorch"):
            bench_pointwise.apply_variant(variant)
        during = before
    else:
        saved = bench_pointwise.apply_variant(variant)
        during = (tuning.PER_IMAGE_MIN_PIXELS, tuning.POINTWISE_SMALL_MAPS,
                  tuning.POINTWISE_GROUP_COLUMNS)
        bench_pointwise.restore(saved)
    assert during == before


def test_torch_computes_the_same_layer_as_minimobile():
    # The torch variants time PyTorch's conv and backward: check that they are this layer's.
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 8, 2, 2)).astype(np.float32)
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    dout = rng.standard_normal((3, 16, 2, 2)).astype(np.float32)
    out, cache = ops.pointwise_conv2d_forward(x, w)
    dx, dw, _ = ops.pointwise_conv2d_backward(dout, cache)
    for variant in bench_pointwise.TORCH_VARIANTS:
        xt, wt, dt = bench_pointwise.torch_tensors(variant, x, w, dout)
        if variant == "torch_cl":
            assert xt.is_contiguous(memory_format=torch.channels_last)
        tout, tdx, tdw = bench_pointwise.torch_forward_backward(xt, wt, dt)  # what is timed
        np.testing.assert_allclose(tout.numpy(), out, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tdx.numpy(), dx, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(tdw.numpy(), dw, rtol=1e-5, atol=1e-5)


def test_a_tiny_run_with_torch_prints_its_column_and_gives_its_threads_back(capsys):
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if numba.get_num_threads() != 1 else 2)  # one the run changes
    mine = torch.get_num_threads()
    try:
        bench_pointwise.main(["--models", "v1:0.25", "--rounds", "1", "--batch", "3",
                              "--max-pixels", "4", "--variants", "groups:8,torch_cl",
                              "--gflops"])
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(threads)
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("the same product by PyTorch") for line in lines)
    total = lines[-1].split()
    assert total[0] == "total" and len(total) == 1 + 2 * 2 and float(total[4]) > 0
