"""benchmarks/bench_train_step.py: minimobile's side alone (--only mm), on a tiny batch, with
its breakdown by layer type and by layer type and shape."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_train_step  # noqa: E402


def _breakdown(capsys, *extra):
    bench_train_step.main(["--only", "mm", "--models", "v1:0.25", "--steps", "1",
                           "--batch-size", "4", *extra])
    out = capsys.readouterr().out
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("where minimobile's"))
    return out, [line.split()[:-3] for line in lines[start + 1:] if line.strip()]


def test_the_row_has_minimobile_and_no_torch_columns(capsys):
    out, _ = _breakdown(capsys)
    row = next(line for line in out.splitlines() if line.startswith("v1 0.25"))
    fields = row.split()
    assert float(fields[2]) > 0 and float(fields[3]) > 0  # ms and images per second
    assert fields[4:] == ["-", "-", "-", "-", "-"]  # no PyTorch, so no best and no ratio


def test_the_step_runs_on_images_of_the_resolution_asked_for(capsys, monkeypatch):
    shapes = []
    real_step = bench_train_step.minimobile_step

    def recording_step(model, optimizer, x, y):
        shapes.append(x.shape)
        return real_step(model, optimizer, x, y)

    monkeypatch.setattr(bench_train_step, "minimobile_step", recording_step)
    bench_train_step.main(["--only", "mm", "--models", "v1:0.25", "--steps", "1",
                           "--batch-size", "2", "--resolution", "40", "--no-breakdown"])
    assert set(shapes) == {(2, 3, 40, 40)}
    assert capsys.readouterr().out.startswith("batch 2, 40x40 CIFAR variants")
    with pytest.raises(SystemExit, match="--resolution: expected 8-1024, got 4"):
        bench_train_step.main(["--only", "mm", "--resolution", "4"])


def test_the_breakdown_by_type_names_each_kind_of_layer_once(capsys):
    _, rows = _breakdown(capsys)
    keys = [" ".join(r) for r in rows]
    assert "PointwiseConv2d.backward" in keys and "DepthwiseConv2d.forward" in keys
    assert len(keys) == len(set(keys))


def test_by_shape_splits_each_type_by_the_shape_it_reads(capsys):
    _, rows = _breakdown(capsys, "--by-shape")
    keys = [" ".join(r) for r in rows]
    # V1 0.25's stem reads the 4 images; its first pointwise conv 8 -> 16 channels at 32x32.
    assert "Conv2d.forward 4x3x32x32" in keys
    assert "PointwiseConv2d.forward 4x8x32x32" in keys
    # Backward reads the output's gradient: 16 channels of that conv.
    assert "PointwiseConv2d.backward 4x16x32x32" in keys
    pointwise = [k for k in keys if k.startswith("PointwiseConv2d.forward ")]
    assert len(pointwise) > 3  # one line per shape, not one for the type


def test_torch_profile_lists_the_ops_of_a_step_by_shape():
    torch = pytest.importorskip("torch")
    weight = torch.ones(8, 8, requires_grad=True)

    def step():
        (weight @ torch.ones(8, 4)).sum().backward()
    table = bench_train_step.torch_profile(step)
    assert "aten::mm" in table and "[8, 8]" in table


INTEL_AMX = "model name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
AMD_AVX2 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx2 fma\n"


def test_cpu_description_reads_the_model_and_the_bfloat16_flags():
    assert bench_train_step.cpu_description(INTEL_AMX) == (
        "Intel(R) Xeon(R) Platinum 8480+", ["amx_bf16", "avx512_bf16"])
    assert bench_train_step.cpu_description(AMD_AVX2) == ("AMD EPYC", [])


def test_auto_times_bfloat16_only_where_the_cpu_runs_it_natively():
    assert bench_train_step.torch_configs("auto", ["amx_bf16"]) == ["pt", "ptCL", "ptBF"]
    assert bench_train_step.torch_configs("auto", []) == ["pt", "ptCL"]
    assert bench_train_step.torch_configs("auto", None) == ["pt", "ptCL", "ptBF"]  # can't tell
    assert bench_train_step.torch_configs("ptCL,ptBF", []) == ["ptCL", "ptBF"]


def test_an_unknown_torch_configuration_is_refused_by_name():
    with pytest.raises(SystemExit, match="expected 'auto' or .*pt, ptCL, ptBF; got 'ptXX'"):
        bench_train_step.torch_configs("ptXX", [])


def test_the_cpu_line_says_what_it_could_not_tell():
    assert bench_train_step.cpu_line("AMD EPYC", []) == "CPU: AMD EPYC; bfloat16 in hardware: no"
    assert bench_train_step.cpu_line("X", ["amx_bf16"]).endswith("hardware: amx_bf16")
    assert bench_train_step.cpu_line("unknown", None).endswith("hardware: cannot tell")
