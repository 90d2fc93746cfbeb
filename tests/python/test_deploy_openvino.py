"""msdacore.openvino: the OpenVINO extension (python/msdacore/openvino/extension).

- ONNX models holding msdacore's node (SPEC.md, "ONNX"), written here with onnx.helper,
  read by OpenVINO with the extension and run on the CPU plugin, against msdacore's NumPy
  API on the same inputs: every layout, mode and align_corners, dynamic batch, the
  float dtypes (the CPU plugin runs the op in float32; Model.evaluate runs the op's own
  float64 / float16 path), a bfloat16 inference precision hint, an IR round trip;
- ov.convert_model of torch modules calling msdacore.torch.ms_deform_attn and of a tiny
  patched transformers DeformableDetr, against torch: one msdacore op per call and no
  GridSample left;
- bad models and inputs: clear errors naming the argument.

The extension is built once per session (extension_path() caches it across sessions too).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

ov = pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install "
                         "msdacore[openvino])")
onnx = pytest.importorskip("onnx", reason="onnx is not installed (pip install onnx)")
from onnx import TensorProto, helper  # noqa: E402

import msdacore  # noqa: E402
import msdacore.openvino  # noqa: E402

OP = "MultiScaleDeformableAttention"
LEVELS = [(6, 7), (3, 4), (2, 2)]
TOL = {np.float32: 5e-5, np.float64: 1e-12, np.float16: 1e-2}  # SPEC "Numerics"
ONNX_TYPES = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE,
              np.float16: TensorProto.FLOAT16}


@pytest.fixture(scope="session")
def extension():
    return msdacore.openvino.extension_path()


@pytest.fixture(scope="session")
def core(extension):
    c = ov.Core()
    c.add_extension(extension)
    return c


def rel_err(got, ref) -> float:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def problem(N=2, Lq=9, M=2, D=5, P=3, ppl=None, dtype=np.float32, seed=0, levels=LEVELS):
    """Inputs in the layout ppl asks for (None: uniform), locations partly outside [0, 1],
    positive unnormalized weights."""
    rng = np.random.default_rng(seed)
    shapes = np.array(levels, np.int64)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    points = (len(levels), P) if ppl is None else (sum(ppl),)
    value = rng.standard_normal((N, int(sizes.sum()), M, D)).astype(dtype)
    loc = rng.uniform(-0.1, 1.1, (N, Lq, M, *points, 2)).astype(dtype)
    attn = rng.uniform(0.05, 1.0, (N, Lq, M, *points)).astype(dtype)
    return [value, shapes, starts, loc, attn]


def _empty(v) -> bool:
    return isinstance(v, list) and not v


def onnx_model(inputs, batch="N", float_type=TensorProto.FLOAT, index_type=TensorProto.INT64,
               shapes=None, **attributes) -> bytes:
    """One msdacore node; `batch` names (dynamic) or fixes dimension 0 of the float
    inputs; `shapes` overrides the declared input shapes."""
    names = ["value", "spatial_shapes", "level_start_index", "sampling_locations",
             "attention_weights"]
    types = [float_type, index_type, index_type, float_type, float_type]
    declared = shapes or [[batch, *x.shape[1:]] if i in (0, 3, 4) else list(x.shape)
                          for i, x in enumerate(inputs)]
    node = helper.make_node(OP, names, ["output"], domain="msdacore",
                            **{k: v for k, v in attributes.items() if not _empty(v)})
    node.attribute.extend(helper.make_attribute(k, [], attr_type=onnx.AttributeProto.INTS)
                          for k, v in attributes.items() if _empty(v))
    graph = helper.make_graph(
        [node], "msda",
        [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(names, types, declared)],
        [helper.make_tensor_value_info("output", float_type, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                     helper.make_opsetid("msdacore", 1)])
    return model.SerializeToString()


def compile_f32(core, model):
    """Compiled for the CPU in float32 (the default is bfloat16 on CPUs that have it)."""
    return core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32",
                                             "INFERENCE_NUM_THREADS": 2})


def op_types(model) -> list:
    return [op.get_type_name() for op in model.get_ops()]


# ----------------------------------------------------------------------------- ONNX

CASES = {
    "uniform": ({}, {}),
    "points_per_level": ({"ppl": [2, 4, 1]}, {"points_per_level": [2, 4, 1]}),
    "discrete": ({}, {"mode": "discrete"}),
    "discrete_points_per_level": ({"ppl": [1, 3, 2]},
                                  {"mode": "discrete", "points_per_level": [1, 3, 2]}),
    "align_corners": ({}, {"align_corners": 1}),
}


@pytest.mark.parametrize("case", CASES)
def test_onnx_node_matches_numpy_api(core, case):
    problem_args, attributes = CASES[case]
    inputs = problem(**problem_args)
    model = core.read_model(onnx_model(inputs, **attributes))
    assert op_types(model).count(OP) == 1
    got = compile_f32(core, model)(inputs)[0]
    expected = msdacore.ms_deform_attn(
        *inputs, align_corners=bool(attributes.get("align_corners", 0)),
        mode=attributes.get("mode", "bilinear"), points_per_level=problem_args.get("ppl"))
    assert got.shape == expected.shape and got.dtype == np.float32
    assert rel_err(got, expected) <= TOL[np.float32]


def test_onnx_dynamic_batch_and_queries(core):
    inputs = problem(N=3, Lq=7)
    shapes = [["N", "S", 2, 5], [3, 2], [3], ["N", "Lq", 2, 3, 3, 2], ["N", "Lq", 2, 3, 3]]
    model = core.read_model(onnx_model(inputs, shapes=shapes))
    assert str(model.output(0).get_partial_shape()) == "[?,?,10]"
    compiled = compile_f32(core, model)
    for N, Lq in ((3, 7), (1, 12), (0, 5), (2, 0)):
        sized = problem(N=N, Lq=Lq, seed=N + Lq)
        got = compiled(sized)[0]
        assert got.shape == (N, Lq, 10)
        if got.size:
            assert rel_err(got, msdacore.ms_deform_attn(*sized)) <= TOL[np.float32]


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_onnx_float_types_on_the_cpu_plugin(core, dtype):
    """The CPU plugin converts float64 and float16 around custom ops and runs them in
    float32: the result has the model's dtype and float32 accuracy."""
    inputs = problem(dtype=dtype)
    compiled = compile_f32(core, core.read_model(onnx_model(inputs,
                                                            float_type=ONNX_TYPES[dtype])))
    got = compiled(inputs)[0]
    assert got.dtype == dtype
    widened = [x.astype(np.float32) if x.dtype.kind == "f" else x for x in inputs]
    expected = msdacore.ms_deform_attn(*widened)
    assert rel_err(got, expected) <= max(TOL[np.float32], TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_op_evaluate_in_the_model_dtype(core, dtype):
    """Model.evaluate calls the op's evaluate with the model's own types: msdacore's
    float64 and float16 kernels."""
    inputs = problem(dtype=dtype, ppl=[1, 2, 2])
    model = core.read_model(onnx_model(inputs, float_type=ONNX_TYPES[dtype],
                                       points_per_level=[1, 2, 2]))
    expected = msdacore.ms_deform_attn(*inputs, points_per_level=[1, 2, 2])
    out = ov.Tensor(model.output(0).get_element_type(), list(expected.shape))
    assert model.evaluate([out], [ov.Tensor(np.ascontiguousarray(x)) for x in inputs])
    assert out.data.dtype == dtype
    assert rel_err(out.data, expected) <= TOL[dtype]


def test_op_evaluate_bfloat16_with_float32_locations(core):
    """Model.evaluate with a bfloat16 value and float32 locations and weights (SPEC's mixed
    precision): msdacore's bfloat16 kernel, within bfloat16 tolerance."""
    value, shapes, starts, loc, attn = problem()
    value_bits = (value.view(np.uint32) >> 16).astype(np.uint16)  # bfloat16, truncated
    value_bf16 = (value_bits.astype(np.uint32) << 16).view(np.float32)  # its exact values
    declared = [["N", *value.shape[1:]], list(shapes.shape), list(starts.shape),
                ["N", *loc.shape[1:]], ["N", *attn.shape[1:]]]
    model = onnx.load_from_string(onnx_model([value, shapes, starts, loc, attn],
                                             shapes=declared))
    model.graph.input[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    ov_model = core.read_model(model.SerializeToString())
    assert ov_model.output(0).get_element_type() == ov.Type.bf16
    value_tensor = ov.Tensor(ov.Type.bf16, list(value.shape))
    value_tensor.data.view(np.uint16)[...] = value_bits
    out = ov.Tensor(ov.Type.bf16, [value.shape[0], loc.shape[1], value.shape[2] * value.shape[3]])
    assert ov_model.evaluate([out], [value_tensor] + [ov.Tensor(x) for x in
                                                     (shapes, starts, loc, attn)])
    got = (out.data.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
    expected = msdacore.ms_deform_attn(value_bf16, shapes, starts, loc, attn)
    assert rel_err(got, expected) <= 5e-2  # SPEC: bfloat16


def test_bf16_inference_precision_hint(core):
    """With a bfloat16 hint (the CPU plugin's default where the CPU has bfloat16), the
    op still runs in float32."""
    inputs = problem()
    compiled = core.compile_model(core.read_model(onnx_model(inputs)), "CPU",
                                  {"INFERENCE_PRECISION_HINT": "bf16"})
    got = compiled(inputs)[0]
    assert got.dtype == np.float32
    assert rel_err(got, msdacore.ms_deform_attn(*inputs)) <= TOL[np.float32]


def test_ir_round_trip(core, tmp_path):
    """visit_attributes: the op and its attributes survive ov.save_model / read_model."""
    inputs = problem(ppl=[3, 1, 2])
    model = core.read_model(onnx_model(inputs, mode="discrete", points_per_level=[3, 1, 2]))
    ov.save_model(model, tmp_path / "msda.xml")
    again = core.read_model(tmp_path / "msda.xml")
    (node,) = [op for op in again.get_ops() if op.get_type_name() == OP]
    attributes = node.get_attributes()
    assert attributes["mode"] == "discrete" and list(attributes["points_per_level"]) == [3, 1, 2]
    got = compile_f32(core, again)(inputs)[0]
    expected = msdacore.ms_deform_attn(*inputs, mode="discrete", points_per_level=[3, 1, 2])
    assert rel_err(got, expected) <= TOL[np.float32]


def test_extension_path_is_cached(extension):
    """The same built file on every call (the build is cached)."""
    assert msdacore.openvino.extension_path() == extension
    assert extension.endswith("libmsdacore_openvino.so")


# ----------------------------------------------------------------------------- errors

BAD_MODELS = {
    "mode": ({"mode": "nearest"}, 'mode must be "bilinear" or "discrete", got "nearest"'),
    "align_corners_value": ({"align_corners": 2}, "align_corners must be 0 or 1, got 2"),
    "discrete_align_corners": ({"mode": "discrete", "align_corners": 1},
                               "align_corners=True does not apply to mode=discrete"),
    "int32_indices": ({"index_type": TensorProto.INT32},
                      "spatial_shapes must be int64, got i32"),
    "float_indices": ({"index_type": TensorProto.FLOAT},
                      "spatial_shapes must be int64, got f32"),
    "points_per_level_count": ({"points_per_level": [1, 2]},
                               "points_per_level has 2 counts but spatial_shapes"),
    "points_per_level_value": ({"points_per_level": [1, 0, 2]},
                               r"points_per_level\[1\] = 0: every level needs at least 1 "
                               r"point, got \[1, 0, 2\]"),
    "empty_points_per_level": ({"points_per_level": []},
                               "points_per_level is empty"),
    "location_rank": ({"shapes": [["N", 42, 2, 5], [3, 2], [3], ["N", 9, 2, 3, 2],
                                  ["N", 9, 2, 3, 3]]},
                      r"sampling_locations must have shape \(N, Lq, M, L, P, 2\) = "
                      r"\(\?, \?, 2, 3, \?, 2\), got \[\?,9,2,3,2\]"),
    "weights_shape": ({"shapes": [["N", 42, 2, 5], [3, 2], [3], ["N", 9, 2, 3, 3, 2],
                                 ["N", 9, 2, 3, 4]]},
                      r"attention_weights must have shape \(N, Lq, M, L, P\) = "
                      r"\(\?, 9, 2, 3, 3\), got \[\?,9,2,3,4\]"),
    "value_rank": ({"shapes": [["N", 42, 10], [3, 2], [3], ["N", 9, 2, 3, 3, 2],
                               ["N", 9, 2, 3, 3]]},
                   r"value must have shape \(N, S, M, D\), got \[\?,42,10\]"),
    "heads": ({"shapes": [["N", 42, 4, 5], [3, 2], [3], ["N", 9, 2, 3, 3, 2],
                          ["N", 9, 2, 3, 3]]},
              r"sampling_locations must have shape \(N, Lq, M, L, P, 2\) = "
              r"\(\?, \?, 4, 3, \?, 2\), got \[\?,9,2,3,3,2\]"),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_is_a_clear_error(core, case):
    kwargs, message = BAD_MODELS[case]
    with pytest.raises(RuntimeError, match=message):
        core.compile_model(core.read_model(onnx_model(problem(), **kwargs)), "CPU")


def test_inconsistent_index_values_fail_at_inference(core):
    """Values only the run sees (msdacore checks them): an error naming the node."""
    inputs = problem()
    compiled = compile_f32(core, core.read_model(onnx_model(inputs)))
    bad_starts = inputs[:2] + [np.array([0, 40, 54], np.int64)] + inputs[3:]
    with pytest.raises(RuntimeError, match=r"level_start_index must hold the prefix sums of "
                                           r"H_l\*W_l from spatial_shapes: expected "
                                           r"\[0, 42, 54\], got \[0, 40, 54\]"):
        compiled(bad_starts)
    bad_shapes = [inputs[0], np.array([[6, 7], [3, 4], [2, 3]], np.int64)] + inputs[2:]
    with pytest.raises(RuntimeError, match="value has S = 58 tokens"):
        compiled(bad_shapes)
    # the compiled model still works afterwards
    assert rel_err(compiled(inputs)[0], msdacore.ms_deform_attn(*inputs)) <= TOL[np.float32]


# ----------------------------------------------------------------------------- PyTorch

torch_cases = {
    "uniform": ({}, None),
    "points_per_level": ({"points_per_level": [2, 1, 3]}, [2, 1, 3]),
    "discrete": ({"mode": "discrete", "points_per_level": [1, 2, 2]}, [1, 2, 2]),
    "align_corners": ({"align_corners": True}, None),
}


@pytest.mark.parametrize("case", torch_cases)
def test_convert_model_of_a_torch_call(extension, case):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import msdacore.torch as mt

    kwargs, ppl = torch_cases[case]

    class TwoCalls(torch.nn.Module):
        """Two calls on the same levels (a layer's output feeds the next call's value)."""

        def forward(self, value, sampling_locations, attention_weights):
            out = mt.ms_deform_attn(value, LEVELS, None, sampling_locations, attention_weights,
                                    **kwargs)
            value2 = value + out.reshape(value.shape[0], -1, *value.shape[2:]).mean(1, True)
            return mt.ms_deform_attn(value2, LEVELS, None, sampling_locations,
                                     attention_weights, **kwargs)

    value, _, _, loc, attn = (torch.from_numpy(x) for x in problem(Lq=8, D=4, ppl=ppl))
    module = TwoCalls()
    converted = ov.convert_model(module, example_input=(value, loc, attn), extension=extension)
    types = op_types(converted)
    assert types.count(OP) == 2 and "GridSample" not in types
    compiled = ov.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled([value.numpy(), loc.numpy(), attn.numpy()])[0]
    with torch.no_grad():
        expected = module(value, loc, attn).numpy()
    assert rel_err(got, expected) <= TOL[np.float32]


@pytest.mark.parametrize("case", ["discrete", "align_corners"])
def test_convert_model_of_torch_export(extension, case):
    """torch.export programs name the call msdacore.ms_deform_attn.default and hand over
    the string argument as bytes."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import msdacore.torch as mt

    kwargs, ppl = torch_cases[case]

    class OneCall(torch.nn.Module):
        def forward(self, value, sampling_locations, attention_weights):
            return mt.ms_deform_attn(value, LEVELS, None, sampling_locations, attention_weights,
                                     **kwargs)

    value, _, _, loc, attn = problem(Lq=6, D=4, ppl=ppl, seed=3)
    args = tuple(torch.from_numpy(x) for x in (value, loc, attn))
    program = torch.export.export(OneCall(), args)
    converted = ov.convert_model(program, extension=extension)
    assert op_types(converted).count(OP) == 1
    compiled = ov.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled([a.numpy() for a in args])[0]
    with torch.no_grad():
        expected = OneCall()(*args).numpy()
    assert rel_err(got, expected) <= TOL[np.float32]


def tiny_model(name):
    """(model, inputs, wrapped): a tiny transformers model of transformers_families.py
    (random weights moved off their initialisation), its float32 inputs, and a module
    returning the family's compared outputs as a tuple (what convert_model traces)."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    pytest.importorskip("transformers", reason="transformers is not installed")
    import pathlib

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
    import transformers_families as F

    spec = F.BY_NAME[name]
    torch.manual_seed(0)
    model = spec.build().eval()
    F.perturb_sampling(model)
    inputs = spec.inputs(torch.Generator().manual_seed(2), torch.float32)

    class Outputs(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, pixel_values, pixel_mask=None):
            extra = {} if pixel_mask is None else {"pixel_mask": pixel_mask}
            out = self.model(pixel_values=pixel_values, **extra)
            return tuple(getattr(out, name) for name in spec.outputs)

    return model, inputs, Outputs(), spec


def test_convert_model_of_patched_d_fine(extension):
    """D-FINE samples an uneven number of points per level (the flattened layout).
    OpenVINO's conversion of this tiny model differs from torch with and without
    msdacore (its query selection meets ties that OpenVINO's TopK orders differently),
    so the patched model is compared with the stock one, both converted by OpenVINO."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import msdacore.torch as mt

    model, inputs, wrapped, spec = tiny_model("d_fine")
    feed = {k: v.numpy() for k, v in inputs.items()}
    properties = {"INFERENCE_PRECISION_HINT": "f32"}
    with torch.no_grad():
        stock = ov.convert_model(wrapped, example_input=inputs)
        assert mt.patch_transformers(model)
        patched = ov.convert_model(wrapped, example_input=inputs, extension=extension)
    assert op_types(stock).count("GridSample") > 0
    types = op_types(patched)
    assert types.count(OP) == 2 and "GridSample" not in types
    expected = ov.compile_model(stock, "CPU", properties)(feed)
    got = ov.compile_model(patched, "CPU", properties)(feed)
    for i, name in enumerate(spec.outputs):
        assert rel_err(got[i], expected[i]) <= 1e-4, name


def test_convert_model_of_patched_deformable_detr(extension):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    import msdacore.torch as mt

    model, inputs, wrapped, spec = tiny_model("deformable_detr")

    calls = []
    hooks = [m.register_forward_hook(lambda *args: calls.append(1))
             for m in model.modules() if type(m).__name__ == "MultiScaleDeformableAttention"]
    with torch.no_grad():
        stock = wrapped(**inputs)  # transformers' own grid_sample composition
    for h in hooks:
        h.remove()
    assert mt.patch_transformers(model)
    with torch.no_grad():
        converted = ov.convert_model(wrapped, example_input=inputs, extension=extension)
    types = op_types(converted)
    assert types.count(OP) == len(calls) == 4
    assert "GridSample" not in types
    compiled = ov.compile_model(converted, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    got = compiled({k: v.numpy() for k, v in inputs.items()})
    for i, name in enumerate(spec.outputs):
        assert rel_err(got[i], stock[i].numpy()) <= 1e-4, name
