import numpy as np
import pytest

import minimobile as mm
from minimobile import checkpoint, onnx_export
from minimobile.gradcheck import randomize_running_statistics, relative_error

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

BUILDERS = {"v1": mm.mobilenet_v1, "v2": mm.mobilenet_v2, "v3-small": mm.mobilenet_v3_small,
            "v3-large": mm.mobilenet_v3_large}



def run_in_onnxruntime(proto, x):
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {onnx_export.INPUT_NAME: x})[0]


@pytest.mark.parametrize("name", list(BUILDERS))
@pytest.mark.parametrize("cifar, resolution, batch", [(True, 32, 2), (False, 224, 1)])
def test_onnxruntime_gives_minimobiles_logits(name, cifar, resolution, batch, rng):
    # CIFAR: 10 classes at 32x32, batch 2 (the batch dimension is symbolic). ImageNet: 1000
    # classes at 224x224, batch 1, width 1.0: the published networks as they are.
    model = randomize_running_statistics(BUILDERS[name](cifar=cifar, seed=0), rng)
    x = rng.standard_normal((batch, 3, resolution, resolution)).astype(np.float32)
    with mm.no_grad():
        expected = model.forward(x)
    proto = onnx_export.to_onnx(model)
    logits = run_in_onnxruntime(proto, x)
    assert logits.shape == (batch, 10 if cifar else 1000)
    assert relative_error(expected, logits) < 1e-4
    ops_used = {node.op_type for node in proto.graph.node}
    assert "BatchNormalization" not in ops_used and "Conv" in ops_used


def test_export_without_fusing_keeps_batchnorm_nodes_and_the_logits(rng):
    model = randomize_running_statistics(
        mm.mobilenet_v3_small(cifar=True, width_mult=0.5, seed=0), rng)
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    with mm.no_grad():
        expected = model.forward(x)
    fused, plain = onnx_export.to_onnx(model), onnx_export.to_onnx(model, fuse=False)
    kinds = [node.op_type for node in plain.graph.node]
    assert kinds.count("BatchNormalization") == sum(
        isinstance(m, mm.BatchNorm2d) for _, m in model.named_modules())
    assert len(fused.graph.node) < len(plain.graph.node)
    assert relative_error(expected, run_in_onnxruntime(plain, x)) < 1e-4


def test_the_graph_passes_the_checker_with_a_current_opset(rng):
    proto = onnx_export.to_onnx(mm.mobilenet_v2(cifar=True, width_mult=0.25, seed=0))
    onnx.checker.check_model(proto, full_check=True)
    assert proto.opset_import[0].version >= 17
    (graph_input,) = proto.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ["N", 3, 32, 32]


def test_export_from_a_checkpoint_round_trips_through_a_file(tmp_path, rng):
    from dataclasses import asdict

    from minimobile.train import CHECKPOINT_KIND, TrainConfig, build_model
    config = TrainConfig(model="v1", width=0.25)
    model = randomize_running_statistics(build_model("v1", 0.25, seed=5), rng)
    path = tmp_path / "best.npz"
    checkpoint.save(path, {f"model/{k}": v for k, v in model.state_dict().items()},
                    {"kind": CHECKPOINT_KIND, "config": asdict(config)})
    onnx_path = onnx_export.export_checkpoint(path, tmp_path / "model.onnx")
    x = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    with mm.no_grad():
        expected = model.forward(x)
    assert relative_error(expected, run_in_onnxruntime(onnx.load(str(onnx_path)), x)) < 1e-4


def test_an_unknown_layer_is_named():
    class Mystery(mm.Module):
        def forward(self, x):
            return x
    with pytest.raises(ValueError, match="expected a minimobile layer or block, got Mystery "
                       "at 1"):
        onnx_export.to_onnx(mm.Sequential(mm.ReLU(), Mystery()), resolution=8, fuse=False)


def test_export_refuses_nan_weights_and_writes_nothing(tmp_path):
    model = mm.mobilenet_v1(cifar=True, width_mult=0.25, seed=0)
    model.features[0][1].buffers["running_var"][2] = np.inf
    with pytest.raises(ValueError, match=r"NaN or infinite weights \(features.0.1.running_var\)"):
        onnx_export.export(model, tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_to_onnx_refuses_a_resolution_no_network_takes(tmp_path):
    model = mm.mobilenet_v1(width_mult=0.25, cifar=True, seed=0)
    for resolution in (0, 7, 32.0, True):
        with pytest.raises(ValueError, match=rf"to_onnx: expected resolution None or an integer "
                                             rf"from 8 to 1024, got {resolution!r}"):
            onnx_export.export(model, tmp_path / "m.onnx", resolution=resolution)
    assert not (tmp_path / "m.onnx").exists()
