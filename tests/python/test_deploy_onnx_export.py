"""msdacore.onnx.export (SPEC "ONNX"): one msdacore::MultiScaleDeformableAttention node per
call in every layout and mode, or TensorRT's plugin node; onnx's checker and shape
inference; clear errors for what the TensorRT target cannot express. Running the
exported models is test_deploy_onnxruntime.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch", reason="msdacore.onnx exports torch models")
onnx = pytest.importorskip("onnx", reason="msdacore.onnx needs onnx (pip install "
                           "msdacore[onnx])")
pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
pytest.importorskip("transformers", reason="the detector tests build transformers models")

import onnx_models as om  # noqa: E402

import msdacore.onnx as mo  # noqa: E402


def check_and_infer(model):
    """Full onnx check, then shape inference from the inputs alone (the exporter's
    value_info dropped). Returns the inferred model."""
    onnx.checker.check_model(model, full_check=True)
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    bare.graph.ClearField("value_info")
    for output in bare.graph.output:
        output.type.tensor_type.ClearField("shape")
    return onnx.shape_inference.infer_shapes(bare, strict_mode=True)


def shape_of(model, name):
    """The (possibly symbolic) shape of tensor name recorded in model."""
    for info in list(model.graph.value_info) + list(model.graph.output):
        if info.name == name:
            return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]
    raise AssertionError(f"no shape recorded for {name!r}")


def index_type(model, name):
    """The element type of an index input: an initializer or a recorded value."""
    for t in model.graph.initializer:
        if t.name == name:
            return t.data_type
    for info in list(model.graph.value_info):
        if info.name == name:
            return info.type.tensor_type.elem_type
    raise AssertionError(f"no type recorded for {name!r}")


@pytest.mark.parametrize("name", [c.name for c in om.CALLS])
def test_direct_call_is_one_node_with_the_spec_attributes(name):
    call = om.BY_NAME[name]
    model = om.export_direct(name)
    [node] = om.nodes(model, "msdacore", "MultiScaleDeformableAttention")
    assert "GridSample" not in om.op_types(model)
    attrs = om.attributes(node)
    assert attrs["align_corners"] == int(call.align_corners)
    assert attrs["mode"] == call.mode.encode()
    if call.points_per_level is None:
        assert "points_per_level" not in attrs
    else:
        assert attrs["points_per_level"] == list(call.points_per_level)
    for i in (1, 2):
        assert index_type(model, node.input[i]) == onnx.TensorProto.INT64
    assert {o.domain: o.version for o in model.opset_import}["msdacore"] == 1
    inferred = check_and_infer(model)
    batch, queries, channels = shape_of(inferred, node.output[0])
    assert isinstance(batch, str) and (queries, channels) == (om.QUERIES,
                                                              om.HEADS * om.CHANNELS)


def test_models_check_in_a_process_without_the_schemas(tmp_path):
    """A user's process that never imported msdacore.onnx checks the files too."""
    paths = []
    for name, target in (("flattened", "msdacore"), ("bilinear", "tensorrt")):
        paths.append(str(tmp_path / f"{name}_{target}.onnx"))
        onnx.save(om.export_direct(name, target), paths[-1])
    code = ("import sys, onnx\n"
            "for p in sys.argv[1:]: onnx.checker.check_model(onnx.load(p), full_check=True)\n"
            "print('checked', len(sys.argv) - 1)")
    result = subprocess.run([sys.executable, "-c", code, *paths], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "checked 2" in result.stdout


def test_deformable_detr_one_node_per_attention_and_dynamic_batch():
    model = om.export_detector("deformable_detr")
    found = om.nodes(model, "msdacore", "MultiScaleDeformableAttention")
    assert len(found) == 4  # 2 encoder + 2 decoder layers
    assert "GridSample" not in om.op_types(model)
    assert all(om.attributes(n) == {"align_corners": 0, "mode": b"bilinear"} for n in found)
    assert isinstance(shape_of_input(model, "pixel_values")[0], str)
    inferred = check_and_infer(model)
    for node in found:  # (N, Lq, M*D): 4 heads x 8 channels
        shape = shape_of(inferred, node.output[0])
        assert isinstance(shape[0], str) and shape[2] == 32


def shape_of_input(model, name):
    [info] = [i for i in model.graph.input if i.name == name]
    return [d.dim_param or d.dim_value for d in info.type.tensor_type.shape.dim]


def test_d_fine_uneven_points_export_the_flattened_layout():
    model = om.export_detector("d_fine")
    found = om.nodes(model, "msdacore", "MultiScaleDeformableAttention")
    assert len(found) == 2  # 2 decoder layers
    assert "GridSample" not in om.op_types(model)
    for node in found:
        assert om.attributes(node) == {"align_corners": 0, "mode": b"bilinear",
                                       "points_per_level": [3, 1, 2]}
    check_and_infer(model)


# ---------------------------------------------------------------------------- TensorRT


@pytest.mark.parametrize("name", ["bilinear", "flattened_even"])
def test_tensorrt_target_writes_the_plugin_node(name):
    model = om.export_direct(name, "tensorrt")
    assert not om.nodes(model, "msdacore", "MultiScaleDeformableAttention")
    [node] = om.nodes(model, mo.TRT_DOMAIN, mo.TRT_OP_TYPE)
    assert om.attributes(node) == {"plugin_version": mo.TRT_PLUGIN_VERSION.encode(),
                                   "plugin_namespace": b""}
    for i in (1, 2):
        assert index_type(model, node.input[i]) == onnx.TensorProto.INT32
    consumers = [n for n in model.graph.node if node.output[0] in n.input]
    assert [n.op_type for n in consumers] == ["Reshape"]
    if name == "flattened_even":  # the flattened layout reshaped to (.., L, P, ..)
        producers = {n.output[0]: n.op_type for n in model.graph.node}
        assert producers[node.input[3]] == "Reshape" and producers[node.input[4]] == "Reshape"
    inferred = check_and_infer(model)
    assert shape_of(inferred, node.output[0])[1:] == [om.QUERIES, om.HEADS, om.CHANNELS]
    assert shape_of(inferred, consumers[0].output[0])[1:] == [om.QUERIES,
                                                              om.HEADS * om.CHANNELS]


def test_tensorrt_target_on_deformable_detr():
    model = om.export_detector("deformable_detr", "tensorrt")
    assert len(om.nodes(model, mo.TRT_DOMAIN, mo.TRT_OP_TYPE)) == 4
    assert not om.nodes(model, "msdacore", "MultiScaleDeformableAttention")
    check_and_infer(model)


@pytest.mark.parametrize("name, words", [
    ("flattened", r"points_per_level=\[3, 1, 2\]"),
    ("discrete", "mode='discrete'"),
    ("discrete_flattened", "mode='discrete'.*points_per_level"),
    ("align_corners", "align_corners=True"),
])
def test_tensorrt_target_refuses_what_the_plugin_cannot_express(name, words):
    value, queries = om.direct_inputs(2)
    with pytest.raises(ValueError, match=f"MultiscaleDeformableAttnPlugin_TRT cannot "
                                         f"express .*{words}"):
        mo.export(om.direct_model(name), (value, queries), target="tensorrt")


def test_tensorrt_target_refuses_float64():
    value, queries = om.direct_inputs(2, torch.float64)
    with pytest.raises(ValueError, match="float64, float64, float64"):
        mo.export(om.direct_model("bilinear", torch.float64), (value, queries),
                  target="tensorrt")


# ---------------------------------------------------------------------------- arguments


def test_bad_arguments_are_clear_errors():
    model, args = om.direct_model("bilinear"), om.direct_inputs(2)
    with pytest.raises(ValueError, match="target must be one of 'msdacore', 'tensorrt', "
                                         "got 'openvino'"):
        mo.export(model, args, target="openvino")
    with pytest.raises(ValueError, match="dynamo exporter only"):
        mo.export(model, args, dynamo=False)
    with pytest.raises(ValueError, match="dynamic_axes belong to the TorchScript"):
        mo.export(model, args, dynamic_axes={"value": {0: "batch"}})


def test_export_writes_the_file_and_keeps_a_given_translation_table(tmp_path):
    path = tmp_path / "model.onnx"
    calls = []

    def relu(x):
        from onnxscript import opset18 as op
        calls.append(1)
        return op.Relu(x)

    class WithRelu(om.DirectCall):
        def forward(self, value, queries):
            return torch.relu(super().forward(value, queries))

    torch.manual_seed(0)
    mo.export(WithRelu(om.BY_NAME["bilinear"]).eval(), om.direct_inputs(2), str(path),
              custom_translation_table={torch.ops.aten.relu.default: relu})
    model = onnx.load(str(path))
    assert calls and len(om.nodes(model, "msdacore", "MultiScaleDeformableAttention")) == 1
