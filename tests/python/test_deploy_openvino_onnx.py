"""The deployment path end to end: models exported with msdacore.onnx.export (one msdacore
node per call) run in OpenVINO with msdacore's extension, at another batch size than the
export's, equal to the float64 reference (direct calls, every layout and mode) and to torch
(a tiny patched Deformable DETR). test_deploy_openvino.py covers the extension on hand-built
nodes and torch conversion; test_deploy_onnxruntime.py the same exports in ONNX Runtime."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch", reason="the models are exported from torch")
pytest.importorskip("onnx", reason="the export needs onnx (pip install msdacore[onnx])")
pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
ov = pytest.importorskip("openvino", reason="OpenVINO is not installed "
                         "(pip install msdacore[openvino])")
pytest.importorskip("transformers", reason="the detector test builds a transformers model")

import onnx_models as om  # noqa: E402
from test_deploy_onnxruntime import FLOAT32, NETWORK, direct_reference, rel_error  # noqa: E402

import msdacore.onnx  # noqa: E402
import msdacore.openvino  # noqa: E402


@pytest.fixture(scope="module")
def core():
    c = ov.Core()
    c.add_extension(msdacore.openvino.extension_path())
    return c


def compile_exported(core, model_proto):
    """The exported model read by OpenVINO's ONNX frontend, compiled for the CPU in float32
    (the CPU plugin otherwise picks bf16 where the CPU has it)."""
    model = core.read_model(model_proto.SerializeToString(), b"")
    types = [op.get_type_name() for op in model.get_ops()]
    assert "GridSample" not in types
    return types, core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})


@pytest.mark.parametrize("name", [c.name for c in om.CALLS])
def test_exported_direct_call_runs_in_openvino(core, name):
    types, compiled = compile_exported(core, om.export_direct(name))
    assert types.count("MultiScaleDeformableAttention") == 1
    value, queries = om.direct_inputs(3, seed=5)  # exported at batch 2
    out = compiled([value.numpy(), queries.numpy()])[0]
    assert out.shape == (3, om.QUERIES, om.HEADS * om.CHANNELS)
    assert rel_error(out, direct_reference(name, value, queries)) < FLOAT32


def test_exported_patched_deformable_detr_runs_in_openvino_equal_to_torch(core):
    model_proto = om.export_detector("deformable_detr")
    types, compiled = compile_exported(core, model_proto)
    assert types.count("MultiScaleDeformableAttention") == len(
        om.nodes(model_proto, msdacore.onnx.DOMAIN, msdacore.onnx.OP_TYPE)) == 4
    pixels = om.detector_pixels(3, seed=2)  # exported at batch 2
    got = compiled([pixels.numpy()])
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(
            om.detector("deformable_detr")(pixel_values=pixels).to_tuple())
    assert len(got) == len(expected)
    for i, want in enumerate(expected):
        assert got[i].shape == tuple(want.shape)
        assert rel_error(got[i], want.numpy()) < NETWORK, model_proto.graph.output[i].name
