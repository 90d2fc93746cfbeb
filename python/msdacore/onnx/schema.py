"""The ONNX operator schemas of the nodes msdacore exports, registered with the onnx
package of this process: the checker then validates those nodes (inputs, types,
attributes) and shape inference gives their output shapes.

- ``msdacore::MultiScaleDeformableAttention`` (SPEC "ONNX"): inputs (value,
  spatial_shapes, level_start_index, sampling_locations, attention_weights), int64 index
  arrays; attributes align_corners (int 0/1), mode (string), points_per_level (ints,
  absent for the uniform layout); output (N, Lq, M*D) of value's type.
- ``trt.plugins::MultiscaleDeformableAttnPlugin_TRT``: TensorRT's built-in plugin
  node, int32 index arrays, attributes plugin_version and plugin_namespace (strings, as
  TensorRT's ONNX parser reads them); output (N, Lq, M, D).

A process that has not registered them (no ``import msdacore.onnx``) still checks these
models: the checker accepts nodes of a domain it has no schema for, without looking at
them, and shape inference leaves their outputs as the exporter recorded them.
"""

from __future__ import annotations

from onnx import TypeProto, defs

from .. import _core

__all__ = ["DOMAIN", "OP_TYPE", "TRT_DOMAIN", "TRT_OP_TYPE", "TRT_PLUGIN_VERSION",
           "ATTRIBUTES", "node_attributes", "node_options", "register_schemas"]

# The msdacore node's attributes (SPEC "ONNX"), the one mapping between them and
# msdacore.Options (deterministic, a backward option, has no attribute).
ATTRIBUTES = ("align_corners", "mode", "points_per_level")


def node_attributes(options) -> dict:
    """The attributes of the msdacore node for an msdacore.Options (points_per_level
    absent for the uniform layout)."""
    attributes = {"align_corners": int(options.align_corners), "mode": options.mode}
    if options.points_per_level is not None:
        attributes[ATTRIBUTES[2]] = list(options.points_per_level)
    return attributes


def node_options(attributes: dict, where: str):
    """The msdacore.Options of a node's attributes (names -> Python values, as
    onnx.helper.get_attribute_value gives them), checked: ValueError naming `where` for
    an unknown attribute or an align_corners other than 0 / 1, and the core's errors for
    the rest (a mode other than "bilinear" / "discrete", counts < 1, ...)."""
    unknown = sorted(set(attributes) - set(ATTRIBUTES))
    if unknown:
        raise ValueError(f"{where} has unknown attributes {unknown}")
    align_corners = attributes.get("align_corners", 0)
    if isinstance(align_corners, bool) or align_corners not in (0, 1):
        raise ValueError(f"{where}: align_corners must be 0 or 1, got {align_corners!r}")
    mode = attributes.get("mode", "bilinear")
    counts = attributes.get(ATTRIBUTES[2])
    return _core.Options(align_corners=bool(align_corners),
                         mode=mode.decode() if isinstance(mode, bytes) else mode,
                         points_per_level=list(counts) if counts else None)

DOMAIN = "msdacore"
OP_TYPE = "MultiScaleDeformableAttention"
# TensorRT's ONNX parser builds a plugin from any node whose op type names a registered
# plugin creator, with the version given by the plugin_version attribute. Version "2" is
# the plugin's IPluginV3 implementation, the one current TensorRT registers ("1", the
# IPluginV2 one, is no longer registered there). The domain is the one ONNX Runtime's
# TensorRT execution provider uses for TensorRT plugins.
TRT_DOMAIN = "trt.plugins"
TRT_OP_TYPE = "MultiscaleDeformableAttnPlugin_TRT"
TRT_PLUGIN_VERSION = "2"
OPSET_VERSION = 1  # of both domains

_FLOATS = ["tensor(float)", "tensor(double)", "tensor(float16)", "tensor(bfloat16)"]


def _output_type(ctx, split_heads: bool) -> None:
    """Shape inference of both nodes: the output has value's element type and shape
    (N, Lq, M*D), or (N, Lq, M, D) with split_heads; a dimension that cannot be known
    is left unknown."""
    value, locations = ctx.get_input_type(0), ctx.get_input_type(3)
    out = TypeProto()
    out.tensor_type.elem_type = value.tensor_type.elem_type
    if value.tensor_type.HasField("shape") and locations.tensor_type.HasField("shape"):
        v, loc = value.tensor_type.shape.dim, locations.tensor_type.shape.dim
        if len(v) == 4 and len(loc) >= 5:
            shape = out.tensor_type.shape
            shape.dim.add().CopyFrom(v[0])  # N
            shape.dim.add().CopyFrom(loc[1])  # Lq
            if split_heads:
                shape.dim.add().CopyFrom(v[2])
                shape.dim.add().CopyFrom(v[3])
            else:
                heads_channels = shape.dim.add()
                if v[2].HasField("dim_value") and v[3].HasField("dim_value"):
                    heads_channels.dim_value = v[2].dim_value * v[3].dim_value
    ctx.set_output_type(0, out)


def _schema(name: str, domain: str, doc: str, index_type: str, attributes,
            split_heads: bool, mixed_precision: bool) -> defs.OpSchema:
    param = defs.OpSchema.FormalParameter
    location_type, weight_type = ("TL", "TW") if mixed_precision else ("T", "T")
    constraints = [("T", _FLOATS, "value and output")]
    if mixed_precision:  # SPEC "Numerics": float32 locations and weights with a half value
        constraints += [("TL", _FLOATS, "sampling_locations"),
                        ("TW", _FLOATS, "attention_weights")]
    schema = defs.OpSchema(
        name, domain, OPSET_VERSION, doc,
        inputs=[param("value", "T"), param("spatial_shapes", index_type),
                param("level_start_index", index_type),
                param("sampling_locations", location_type),
                param("attention_weights", weight_type)],
        outputs=[param("output", "T")],
        type_constraints=constraints,
        attributes=attributes)
    schema.set_type_and_shape_inference_function(lambda ctx: _output_type(ctx, split_heads))
    return schema


def register_schemas() -> None:
    """Registers both schemas with onnx (once per process; later calls do nothing)."""
    attr = defs.OpSchema.Attribute
    kind = defs.OpSchema.AttrType
    if not defs.has(OP_TYPE, OPSET_VERSION, DOMAIN):
        defs.register_schema(_schema(
            OP_TYPE, DOMAIN,
            "Multi-scale deformable attention (msdacore SPEC): output (N, Lq, M*D).",
            "tensor(int64)",
            [attr("align_corners", kind.INT, "0: pixel = loc*size - 0.5; 1: loc*(size - 1)",
                  required=False),
             attr("mode", kind.STRING, "\"bilinear\" (default) or \"discrete\"",
                  required=False),
             attr("points_per_level", kind.INTS, "the flattened layout's points per "
                  "level; absent for the uniform layout", required=False)],
            split_heads=False, mixed_precision=True))
    if not defs.has(TRT_OP_TYPE, OPSET_VERSION, TRT_DOMAIN):
        defs.register_schema(_schema(
            TRT_OP_TYPE, TRT_DOMAIN,
            "TensorRT's built-in multi-scale deformable attention plugin: output "
            "(N, Lq, M, D).",
            "tensor(int32)",
            [attr("plugin_version", kind.STRING, "plugin creator version", required=False),
             attr("plugin_namespace", kind.STRING, "plugin creator namespace",
                  required=False)],
            split_heads=True, mixed_precision=False))
