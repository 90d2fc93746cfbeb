"""msdacore.onnxruntime.session: an ONNX Runtime InferenceSession in which the
``msdacore::MultiScaleDeformableAttention`` nodes run on msdacore's CPU kernel.

ONNX Runtime's C/C++ custom-op headers are not available from the package registries, so
the nodes run as Python operators of onnxruntime-extensions (PyOp). PyOp registers its
operators in its own domain, ``ai.onnx.contrib``, with a fixed element type per input and
a fixed set of attributes that every node must carry; so the session runs a rewritten
copy of the model (the caller's model is not changed) in which each msdacore node

- is in domain ``ai.onnx.contrib``, with op type ``MultiScaleDeformableAttention``
  (float32) or ``MultiScaleDeformableAttentionFloat64`` (float64): one PyOp per dtype;
- carries all three attributes: align_corners (int), mode (string) and
  points_per_level as a string ("" for the uniform layout, "3,6,3" for the flattened
  one), since PyOp attributes are ints, floats or strings only.

The operator body calls msdacore's NumPy API; the numbers are msdacore's. Its output goes
back to ONNX Runtime as an array, not as the Python list onnxruntime-extensions makes of
it (_install_array_results).
"""

from __future__ import annotations

import os
import weakref

__all__ = ["session", "CONTRIB_DOMAIN", "OP_TYPES"]

CONTRIB_DOMAIN = "ai.onnx.contrib"
# ONNX element type -> PyOp op type in CONTRIB_DOMAIN (one registration per dtype)
OP_TYPES = {1: "MultiScaleDeformableAttention",            # FLOAT
            11: "MultiScaleDeformableAttentionFloat64"}    # DOUBLE
_DTYPE_NAMES = {1: "float32", 11: "float64", 10: "float16", 16: "bfloat16"}
_REGISTERED = False
# The SessionOptions that already carry onnxruntime-extensions' library: ONNX Runtime
# refuses to register it twice on one SessionOptions ("Conflicting with a registered
# kernel"), and a caller may build several sessions from one.
_OPTIONS_WITH_LIBRARY = weakref.WeakSet()


def _points_per_level(text: str):
    """The points_per_level string attribute of a rewritten node -> None or a list."""
    return [int(p) for p in text.split(",")] if text else None


def _run(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
         align_corners=0, mode="bilinear", points_per_level=""):
    """The body of the Python operators: msdacore's NumPy forward on the node's inputs
    (value (N, S, M, D), int64 index arrays, locations and weights in either layout);
    returns (N, Lq, M*D) of value's dtype."""
    import msdacore

    return msdacore.ms_deform_attn(value, spatial_shapes, level_start_index,
                                   sampling_locations, attention_weights,
                                   align_corners=bool(align_corners), mode=mode,
                                   points_per_level=_points_per_level(points_per_level))


def _install_array_results(ours: set) -> None:
    """Makes onnxruntime-extensions hand the output of msdacore's Python operators back
    to ONNX Runtime as a flat NumPy array rather than as a Python list of floats (its
    invocation hook calls .tolist(), which costs more than the kernel: about 0.1 s per
    million elements here); ONNX Runtime copies the array's buffer. Invocations of
    other Python operators go to the previous hook unchanged. ours: the ids of msdacore's
    operator definitions."""
    from onnxruntime_extensions import _ocos

    previous = getattr(_ocos, "_on_pyop_invocation", None)
    if previous is None or not hasattr(_ocos, "Opdef") or not hasattr(_ocos.Opdef, "_odlist"):
        # Another onnxruntime-extensions release than the pinned one (0.15.2), without
        # these internals: its own hook stays, correct but slower.
        return

    def invoke(k_id, feed, attributes):
        if k_id not in ours:
            return previous(k_id, feed, attributes)
        opdef = _ocos.Opdef._odlist[k_id]
        out = opdef.body(*feed, **opdef.cast_attributes(attributes))
        return (k_id, out.shape, out.reshape(-1))

    _ocos.PyCustomOpDef.install_hooker(invoke)


def _register_python_ops() -> None:
    """Registers the Python operators with onnxruntime-extensions (once per process)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from onnxruntime_extensions import PyCustomOpDef as T
    from onnxruntime_extensions import onnx_op

    attributes = {"align_corners": T.dt_int64, "mode": T.dt_string,
                  "points_per_level": T.dt_string}
    ours = set()
    for element, real in ((1, T.dt_float), (11, T.dt_double)):
        opdef = onnx_op(op_type=OP_TYPES[element],
                        inputs=[real, T.dt_int64, T.dt_int64, real, real], outputs=[real],
                        attrs=attributes)(_run)
        ours.add(id(opdef))
    _install_array_results(ours)
    _REGISTERED = True


def _load(model):
    """A copy of model (a path, bytes or an onnx.ModelProto) as an onnx.ModelProto."""
    import onnx

    if isinstance(model, onnx.ModelProto):
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    if isinstance(model, (bytes, bytearray)):
        return onnx.load_from_string(bytes(model))
    if isinstance(model, (str, os.PathLike)):
        return onnx.load(os.fspath(model))
    raise TypeError("msdacore.onnxruntime.session: model must be a path, bytes or an "
                    f"onnx.ModelProto, got {type(model).__name__}")


def _element_types(model) -> dict:
    """{tensor name: ONNX element type} of the graph's inputs, outputs, initializers and
    recorded value_info."""
    graph = model.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in list(graph.input) + list(graph.output) + list(graph.value_info):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _nested_nodes(graph, domain: str) -> list:
    """Names of the nodes of domain inside graph's subgraphs (any depth)."""
    import onnx

    found = []
    for node in graph.node:
        for attribute in node.attribute:
            subgraphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else \
                list(attribute.graphs)
            for sub in subgraphs:
                found += [n.name for n in sub.node if n.domain == domain]
                found += _nested_nodes(sub, domain)
    return found


def _rewrite(model) -> int:
    """Rewrites model's msdacore nodes in place (see the module doc). Returns their
    count. Raises TypeError for a dtype PyOp cannot run, ValueError for a msdacore node
    in a subgraph or an element type that cannot be found."""
    import onnx

    from msdacore.onnx import schema
    from msdacore.onnx.schema import DOMAIN, OP_TYPE, register_schemas

    nodes = [n for n in model.graph.node if n.domain == DOMAIN and n.op_type == OP_TYPE]
    nested = _nested_nodes(model.graph, DOMAIN)
    if nested:
        raise ValueError(f"msdacore.onnxruntime.session: msdacore nodes {nested} are in "
                         "subgraphs (If, Loop, Scan); they are run from the main graph only")
    types = _element_types(model)
    if any(node.input[0] not in types for node in nodes):
        register_schemas()
        types = _element_types(onnx.shape_inference.infer_shapes(model))
    for node in nodes:
        element = types.get(node.input[0])
        if element is None:
            raise ValueError(f"msdacore.onnxruntime.session: the element type of "
                             f"{node.input[0]!r} (value of node {node.name!r}) is not "
                             "recorded in the model and shape inference cannot find it")
        if element not in OP_TYPES:
            raise TypeError(f"msdacore.onnxruntime.session: node {node.name!r} has a "
                            f"{_DTYPE_NAMES.get(element, onnx.TensorProto.DataType.Name(element))} "
                            "value; ONNX Runtime runs msdacore nodes in float32 or float64 "
                            "(onnxruntime-extensions' Python operators)")
        given = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        options = schema.node_options(given, f"msdacore.onnxruntime.session: node "
                                             f"{node.name!r}")  # checked before any run
        points = options.points_per_level
        del node.attribute[:]
        node.attribute.extend([
            onnx.helper.make_attribute(schema.ATTRIBUTES[0], int(options.align_corners)),
            onnx.helper.make_attribute(schema.ATTRIBUTES[1], options.mode),
            onnx.helper.make_attribute(schema.ATTRIBUTES[2], ",".join(map(str, points))
                                       if points else "")])
        node.domain = CONTRIB_DOMAIN
        node.op_type = OP_TYPES[element]
    if nodes:
        imports = [o for o in model.opset_import if o.domain != DOMAIN]
        if not any(o.domain == CONTRIB_DOMAIN for o in imports):
            imports.append(onnx.helper.make_opsetid(CONTRIB_DOMAIN, 1))
        del model.opset_import[:]
        model.opset_import.extend(imports)
    return len(nodes)


def session(model, **kwargs):
    """An onnxruntime.InferenceSession of model in which msdacore's nodes run on
    msdacore's kernel.

    model   a path, bytes or an onnx.ModelProto (exported by msdacore.onnx.export);
            not modified: the session runs a rewritten copy
    kwargs  onnxruntime.InferenceSession's keyword arguments (sess_options, providers,
            provider_options, ...); onnxruntime-extensions' operator library is
            registered with sess_options once (a new SessionOptions when none is
            given; one SessionOptions may serve several sessions); providers default
            to ["CPUExecutionProvider"]
    returns onnxruntime.InferenceSession

    The msdacore nodes run on the CPU with msdacore's threads (msdacore.set_num_threads),
    in float32 or float64 (others: TypeError). Models over 2 GB (protobuf's limit) cannot
    be rewritten in memory.
    """
    import onnxruntime
    from onnxruntime_extensions import get_library_path

    copy = _load(model)
    _rewrite(copy)
    _register_python_ops()
    options = kwargs.pop("sess_options", None) or onnxruntime.SessionOptions()
    if options not in _OPTIONS_WITH_LIBRARY:
        options.register_custom_ops_library(get_library_path())
        _OPTIONS_WITH_LIBRARY.add(options)
    kwargs.setdefault("providers", ["CPUExecutionProvider"])
    return onnxruntime.InferenceSession(copy.SerializeToString(), sess_options=options,
                                        **kwargs)
