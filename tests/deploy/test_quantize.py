"""INT8 ONNX: every convolution but the first quantized (weights int8 per channel), batch norm folded,
the metadata kept, and outputs near the float32 graph's."""

from __future__ import annotations

import pytest
import torch

from tinyssd.deploy.export import export_model
from tinyssd.deploy.onnx_runtime import OnnxModel
from tinyssd.deploy.quantize import calibration_pictures, quantize_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from test_export import _module, _pictures  # noqa: E402


def test_int8_quantizes_the_convolutions_after_the_first_and_stays_near_float32(tmp_path):
    module = _module()
    fp32, meta = export_model(module, tmp_path / "m.onnx", nms=False)  # raw outputs: probabilities to compare
    quantize_onnx(fp32, tmp_path / "m.int8.onnx", _pictures(32, seed=2))
    model = onnx.load(str(tmp_path / "m.int8.onnx"))
    nodes = model.graph.node
    made_by = {output: node for node in nodes for output in node.output}
    convolutions = [n for n in nodes if n.op_type == "Conv"]
    assert len(convolutions) == sum(isinstance(m, torch.nn.Conv2d) for m in module.net.modules())
    first, *rest = convolutions  # the first (it reads the pixels) stays float32
    assert made_by.get(first.input[1]) is None and made_by[first.input[0]].op_type != "DequantizeLinear"
    for conv in rest:  # input and weights both come through QDQ pairs
        assert made_by[conv.input[0]].op_type == made_by[conv.input[1]].op_type == "DequantizeLinear"
    weights = {i.name: i for i in model.graph.initializer}
    quantized = [weights[made_by[c.input[1]].input[0]] for c in rest]
    assert all(w.data_type == onnx.TensorProto.INT8 and len(w.dims) == 4 for w in quantized)
    assert not [n for n in nodes if n.op_type == "BatchNormalization"]
    int8, float32 = OnnxModel(tmp_path / "m.int8.onnx"), OnnxModel(fp32)
    assert int8.metadata == meta == float32.metadata
    pictures = _pictures(8, seed=3).numpy()  # not the calibration pictures
    probs_int8, probs_fp32 = int8.run(pictures)["class_probs"], float32.run(pictures)["class_probs"]
    difference = abs(probs_int8 - probs_fp32)
    assert difference.mean() < 0.01 and difference.max() < 0.2, (difference.mean(), difference.max())


def test_calibration_pictures_spread_over_the_split_in_the_graphs_input_type():
    dataset = [(torch.full((3, 4, 4), 10 * i, dtype=torch.uint8), None) for i in range(10)]
    as_uint8 = calibration_pictures(dataset, 4, "uint8")
    assert as_uint8.dtype == torch.uint8 and as_uint8[:, 0, 0, 0].tolist() == [0, 30, 60, 90]  # pictures 0, 3, 6, 9
    as_float = calibration_pictures(dataset, 50, "float32")
    assert as_float.shape == (10, 3, 4, 4) and as_float[9, 0, 0, 0] == pytest.approx(90 / 255)
