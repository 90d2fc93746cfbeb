"""msdacore.onnxruntime.session: exported msdacore nodes run in ONNX Runtime on msdacore's
kernel, in every layout and mode, at another batch size than the export's, equal to the
float64 reference (direct calls) and to torch (whole detectors) within float32
tolerance."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the models are exported from torch")
onnx = pytest.importorskip("onnx", reason="msdacore.onnxruntime needs onnx "
                           "(pip install msdacore[onnx])")
pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
pytest.importorskip("onnxruntime", reason="msdacore.onnxruntime needs onnxruntime")
pytest.importorskip("onnxruntime_extensions",
                    reason="msdacore.onnxruntime runs its nodes as onnxruntime-extensions "
                           "Python operators")
pytest.importorskip("transformers", reason="the detector tests build transformers models")

import onnx_models as om  # noqa: E402

import msdacore.onnxruntime as mort  # noqa: E402
from msdacore import configs, reference  # noqa: E402

FLOAT32 = 5e-5  # SPEC "Numerics": max|a-b| / max|ref| against float64
NETWORK = 1e-4  # a whole float32 network: ONNX Runtime's and torch's layers differ in rounding


def rel_error(a, ref) -> float:
    a, ref = np.asarray(a, np.float64), np.asarray(ref, np.float64)
    return float(np.abs(a - ref).max() / max(np.abs(ref).max(), 1e-30))


def direct_reference(name, value, queries) -> np.ndarray:
    """The direct-call module's output with the float64 reference in place of msdacore."""
    model = om.direct_model(name, torch.float64)
    with torch.no_grad():
        locations, weights = model.sampling(queries.double())
    out = reference.ms_deform_attn(value.double().numpy(), list(om.LEVELS),
                                   configs.level_start_index(om.LEVELS),
                                   locations.numpy(), weights.numpy(),
                                   model.call.align_corners,
                                   points_per_level=model.call.points_per_level,
                                   mode=model.call.mode)
    return 2.0 * out


def run(sess, *arrays):
    return sess.run(None, {i.name: a for i, a in zip(sess.get_inputs(), arrays)})


@pytest.mark.parametrize("name", [c.name for c in om.CALLS])
def test_direct_call_matches_the_reference_at_another_batch(name):
    sess = mort.session(om.export_direct(name))
    value, queries = om.direct_inputs(3, seed=4)  # exported at batch 2
    [out] = run(sess, value.numpy(), queries.numpy())
    assert out.shape == (3, om.QUERIES, om.HEADS * om.CHANNELS) and out.dtype == np.float32
    assert rel_error(out, direct_reference(name, value, queries)) < FLOAT32
    with torch.no_grad():  # and torch with msdacore, on the same float32 inputs
        assert rel_error(out, om.direct_model(name)(value, queries)) < FLOAT32


def test_float64_model_runs_in_float64():
    model = om.export_direct("discrete_flattened", dtype=torch.float64)
    sess = mort.session(model)
    value, queries = om.direct_inputs(1, torch.float64, seed=2)
    [out] = run(sess, value.numpy(), queries.numpy())
    assert out.dtype == np.float64
    assert rel_error(out, direct_reference("discrete_flattened", value, queries)) < 1e-12


def test_session_takes_a_path_bytes_or_a_model_and_leaves_it_unchanged(tmp_path):
    model = om.export_direct("flattened")
    before = model.SerializeToString()
    path = tmp_path / "model.onnx"
    onnx.save(model, str(path))
    value, queries = om.direct_inputs(2, seed=1)
    outputs = [run(mort.session(m), value.numpy(), queries.numpy())[0]
               for m in (model, before, str(path), path)]
    assert model.SerializeToString() == before
    for out in outputs[1:]:
        np.testing.assert_array_equal(out, outputs[0])


def test_session_keeps_given_options_and_providers():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    sess = mort.session(om.export_direct("bilinear"), sess_options=options,
                        providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_session_options().intra_op_num_threads == 1


def test_one_session_options_serves_several_sessions():
    import onnxruntime

    options = onnxruntime.SessionOptions()
    model = om.export_direct("bilinear")
    first = mort.session(model, sess_options=options)
    second = mort.session(model, sess_options=options)  # was: "Conflicting with a
    # registered kernel" (the operator library registered on the same options again)
    arrays = [x.numpy() for x in om.direct_inputs(2, torch.float32)]
    np.testing.assert_array_equal(run(first, *arrays)[0], run(second, *arrays)[0])


def test_session_errors():
    with pytest.raises(TypeError, match="model must be a path, bytes or an onnx.ModelProto, "
                                        "got int"):
        mort.session(3)
    half = onnx.ModelProto()
    half.CopyFrom(om.export_direct("bilinear"))
    for info in list(half.graph.input) + list(half.graph.value_info) + list(half.graph.output):
        info.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    with pytest.raises(TypeError, match="float16 value; ONNX Runtime runs msdacore nodes in "
                                        "float32 or float64"):
        mort.session(half)


@pytest.mark.parametrize("name, batch", [("deformable_detr", 3), ("d_fine", 2)])
def test_detector_matches_torch(name, batch):
    """The whole patched detector in ONNX Runtime against torch (with msdacore), output by
    output; Deformable DETR at another batch size than exported."""
    sess = mort.session(om.export_detector(name))
    pixels = om.detector_pixels(batch, seed=3)
    outputs = run(sess, pixels.numpy())
    with torch.no_grad():
        expected = torch.utils._pytree.tree_leaves(om.detector(name)(pixel_values=pixels)
                                                   .to_tuple())
    assert len(outputs) == len(expected)
    for got, want in zip(outputs, expected):
        assert got.shape == tuple(want.shape)
        assert rel_error(got, want.numpy()) < NETWORK


class _MSDeformAttnOnLevels(torch.nn.Module):
    """msdacore.torch.MSDeformAttn on the levels of onnx_models, with a padding mask."""

    def __init__(self):
        super().__init__()
        import msdacore.torch as mt
        self.attention = mt.MSDeformAttn(d_model=8, n_levels=len(om.LEVELS), n_heads=2,
                                         n_points=3)

    def forward(self, query, reference_points, features, mask):
        return self.attention(query, reference_points, features, list(om.LEVELS), None, mask)


def _perturbed(module):
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return module.eval()


@pytest.mark.parametrize("kind", ["MSDeformAttn", "DeformableAttention2d"])
def test_msdacore_modules_export_and_run(kind):
    """msdacore's own modules: one node per call (DAT samples twice, the features and
    the relative position bias, both with align_corners=True), ONNX Runtime equal to
    torch at another batch size than exported."""
    import msdacore.onnx
    import msdacore.torch as mt

    torch.manual_seed(0)
    batch = torch.export.Dim("batch", min=1, max=16)
    g = torch.Generator().manual_seed(1)
    if kind == "MSDeformAttn":
        module = _perturbed(_MSDeformAttnOnLevels())

        def inputs(n):
            mask = torch.zeros(n, om.S, dtype=torch.bool)
            mask[-1, -3:] = True
            return (torch.randn(n, 5, 8, generator=g), torch.rand(n, 5, len(om.LEVELS), 2,
                                                                   generator=g),
                    torch.randn(n, om.S, 8, generator=g), mask)
        dynamic = ({0: batch},) * 4
        calls = [0]  # align_corners of each call
    else:
        module = _perturbed(mt.DeformableAttention2d(16, n_heads=2, n_groups=2, stride=2,
                                                     q_size=(8, 8)))

        def inputs(n):
            return (torch.randn(n, 16, 8, 8, generator=g),)
        dynamic = ({0: batch},)
        calls = [1, 1]
    model = msdacore.onnx.export(module, inputs(2), dynamic_shapes=dynamic).model_proto
    found = om.nodes(model, "msdacore", "MultiScaleDeformableAttention")
    assert sorted(om.attributes(n)["align_corners"] for n in found) == calls
    assert "GridSample" not in om.op_types(model)
    args = inputs(3)
    [got] = run(mort.session(model), *(a.numpy() for a in args))[:1]
    with torch.no_grad():
        want = module(*args)
    want = want[0] if isinstance(want, tuple) else want
    assert got.shape == tuple(want.shape)
    assert rel_error(got, want.numpy()) < NETWORK


class _FromImage(torch.nn.Module):
    """Levels taken from the image size (a conv feature map and a pooled one): with
    dynamic height and width, the level sizes are symbolic while tracing."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.queries = torch.nn.Linear(8, 2 * 2 * 3 * 2 + 2 * 2 * 3)

    def forward(self, image):
        import msdacore.torch as mt

        fine = self.conv(image)
        coarse = torch.nn.functional.avg_pool2d(fine, 2)
        n = image.shape[0]
        value = torch.cat([f.flatten(2) for f in (fine, coarse)], 2).transpose(1, 2)
        q = self.queries(fine.mean((2, 3)))[:, None].expand(n, 5, -1)
        locations = (torch.sigmoid(q[..., :24]) * 1.2 - 0.1).reshape(n, 5, 2, 2, 3, 2)
        weights = torch.softmax(q[..., 24:].reshape(n, 5, 2, 6), -1).reshape(n, 5, 2, 2, 3)
        levels = [tuple(f.shape[2:]) for f in (fine, coarse)]
        return mt.ms_deform_attn(value.reshape(n, -1, 2, 4), levels, None, locations,
                                 weights)


def test_dynamic_image_size():
    """An export with dynamic height and width runs at other image sizes (level sizes
    from the image, not fixed at the example's)."""
    import msdacore.onnx

    torch.manual_seed(0)
    module = _perturbed(_FromImage())
    batch = torch.export.Dim("batch", min=1, max=8)
    h, w = torch.export.Dim("h", min=2, max=64), torch.export.Dim("w", min=2, max=64)
    model = msdacore.onnx.export(module, (torch.randn(2, 3, 16, 20),),
                                 dynamic_shapes=({0: batch, 2: 4 * h, 3: 4 * w},)).model_proto
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims[2] and dims[3] and not dims[2].isdigit()
    sess = mort.session(model)
    g = torch.Generator().manual_seed(2)
    for shape in [(2, 3, 16, 20), (3, 3, 24, 12), (1, 3, 8, 32)]:
        image = torch.randn(*shape, generator=g)
        [got] = run(sess, image.numpy())
        with torch.no_grad():
            want = module(image)
        assert got.shape == tuple(want.shape)
        assert rel_error(got, want.numpy()) < NETWORK


def test_msdacore_node_in_a_subgraph_is_refused():
    """A model whose msdacore node sits in an If branch: a clear error, not a session
    that fails later."""
    inner = onnx.ModelProto()
    inner.CopyFrom(om.export_direct("bilinear"))
    graph = inner.graph
    [node] = om.nodes(inner, "msdacore", "MultiScaleDeformableAttention")
    branch = onnx.helper.make_graph([node], "branch", [], [onnx.helper.make_tensor_value_info(
        node.output[0], onnx.TensorProto.FLOAT, None)])
    condition = onnx.helper.make_tensor("condition", onnx.TensorProto.BOOL, [], [True])
    graph.initializer.append(condition)
    switch = onnx.helper.make_node("If", ["condition"], [node.output[0]], name="switch",
                                   then_branch=branch, else_branch=branch)
    position = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(position, switch)
    with pytest.raises(ValueError, match=r"msdacore nodes \['node_ms_deform_attn', "
                                         r"'node_ms_deform_attn'\] are in subgraphs"):
        mort.session(inner)
