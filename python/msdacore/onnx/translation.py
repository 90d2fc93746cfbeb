"""How one call of ``torch.ops.msdacore.ms_deform_attn`` becomes ONNX: the onnxscript
functions the dynamo exporter calls with the call's inputs (symbolic tensors) and options
(Python values), one per export target, and the check of what TensorRT's plugin can
express.

- "msdacore": one ``msdacore::MultiScaleDeformableAttention`` node (SPEC "ONNX");
  ``deterministic`` (a backward option) is dropped.
- "tensorrt": TensorRT's ``MultiscaleDeformableAttnPlugin_TRT`` node on int32 index
  arrays, whose (N, Lq, M, D) output is reshaped to (N, Lq, M*D).
"""

from __future__ import annotations

import onnxscript
from onnx import TensorProto
from onnxscript import opset18 as op

from .. import _dispatch
from .schema import (
    DOMAIN,
    OPSET_VERSION,
    TRT_DOMAIN,
    TRT_OP_TYPE,
    TRT_PLUGIN_VERSION,
    node_attributes,
)

__all__ = ["TARGETS", "translation_table", "tensorrt_problems"]

TARGETS = ("msdacore", "tensorrt")

_msdacore = onnxscript.values.Opset(DOMAIN, OPSET_VERSION)
_tensorrt = onnxscript.values.Opset(TRT_DOMAIN, OPSET_VERSION)


def tensorrt_problems(options, dtypes) -> list:
    """What TensorRT's plugin cannot express of one call with these msdacore.Options, as
    phrases (empty: it can). dtypes: the names of the value, sampling_locations and
    attention_weights dtypes.
    The plugin computes bilinear sampling with align_corners=False on the uniform
    layout, in float32 or float16, all three float inputs of one dtype. A flattened
    layout with the same count on every level is the uniform layout reshaped."""
    problems = []
    if options.mode != "bilinear":
        problems.append(f"mode={options.mode!r} (the plugin samples bilinearly only)")
    if options.align_corners:
        problems.append("align_corners=True (the plugin uses align_corners=False only)")
    counts = options.points_per_level
    if counts is not None and len(set(counts)) > 1:
        problems.append(f"points_per_level={list(counts)} (the plugin takes the "
                        "same number of points on every level)")
    if len(set(dtypes)) > 1 or dtypes[0] not in ("float32", "float16"):
        problems.append("value, sampling_locations and attention_weights of dtypes "
                        f"{', '.join(dtypes)} (the plugin takes all three in float32 or "
                        "all three in float16)")
    return problems


def _msdacore_node(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, align_corners=False, deterministic=False,
                   mode="bilinear", points_per_level=None):
    """msdacore::MultiScaleDeformableAttention: output (N, Lq, M*D) of value's type."""
    attributes = node_attributes(_dispatch.op_options(bool(align_corners), False, str(mode),
                                                      points_per_level))
    return _msdacore.MultiScaleDeformableAttention(
        value, op.Cast(spatial_shapes, to=TensorProto.INT64),
        op.Cast(level_start_index, to=TensorProto.INT64), sampling_locations,
        attention_weights, **attributes)


def _tensorrt_node(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, align_corners=False, deterministic=False,
                   mode="bilinear", points_per_level=None):
    """TensorRT's plugin node, then a Reshape of its (N, Lq, M, D) output to
    (N, Lq, M*D). export() has already refused what the plugin cannot express; this
    refuses it again for callers of the translation table."""
    options = _dispatch.op_options(bool(align_corners), False, str(mode), points_per_level)
    problems = tensorrt_problems(options, ["float32"] * 3)  # dtypes: checked by export()
    if problems:
        raise ValueError("msdacore.onnx.export(target=\"tensorrt\"): TensorRT's "
                         f"{TRT_OP_TYPE} cannot express " + "; ".join(problems))
    if points_per_level is not None:  # the same count on every level: the uniform layout
        levels, points = len(points_per_level), int(points_per_level[0])
        sampling_locations = op.Reshape(
            sampling_locations, op.Constant(value_ints=[0, 0, 0, levels, points, 2]))
        attention_weights = op.Reshape(
            attention_weights, op.Constant(value_ints=[0, 0, 0, levels, points]))
    heads = _tensorrt.MultiscaleDeformableAttnPlugin_TRT(
        value, op.Cast(spatial_shapes, to=TensorProto.INT32),
        op.Cast(level_start_index, to=TensorProto.INT32), sampling_locations,
        attention_weights, plugin_version=TRT_PLUGIN_VERSION, plugin_namespace="")
    return op.Reshape(heads, op.Constant(value_ints=[0, 0, -1]))


def _is_all_true(condition):
    """aten._is_all_true (a 0-d bool: every element of condition is true), which
    transformers' torch_compilable_check leaves in exported graphs (RT-DETRv2, D-FINE)
    and torch's exporter has no translation for. Its only use is a runtime assertion,
    which the exporter drops, so the node is then removed as unused."""
    smallest = op.ReduceMin(op.Cast(condition, to=TensorProto.INT32), keepdims=0)
    return op.Cast(smallest, to=TensorProto.BOOL)


def translation_table(target: str) -> dict:
    """{torch operator overload: onnxscript function} for torch.onnx.export's
    custom_translation_table, for target "msdacore" or "tensorrt" (with a translation
    of aten._is_all_true, which transformers' detectors need)."""
    import torch

    import msdacore.torch  # noqa: F401  (registers torch.ops.msdacore)

    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(map(repr, TARGETS))}, "
                         f"got {target!r}")
    node = _msdacore_node if target == "msdacore" else _tensorrt_node
    return {torch.ops.msdacore.ms_deform_attn.default: node,
            torch.ops.aten._is_all_true.default: _is_all_true}
