"""msdacore.onnx.export: torch's dynamo ONNX exporter with one node per call of msdacore's
torch operator (translation.py), after a check of every call against the target."""

from __future__ import annotations

from .. import _dispatch
from .schema import TRT_OP_TYPE, register_schemas
from .translation import TARGETS, tensorrt_problems, translation_table

__all__ = ["export", "msdacore_calls"]

# Options of torch.onnx.export that only make sense for the TorchScript exporter.
_TORCHSCRIPT_ONLY = ("dynamic_axes", "custom_opsets", "operator_export_type", "training",
                     "export_modules_as_functions", "autograd_inlining",
                     "do_constant_folding", "keep_initializers_as_inputs")


def _options(node) -> dict:
    """The arguments of one FX call of msdacore::ms_deform_attn by name, defaults filled."""
    schema = node.target._schema
    options = {}
    for i, argument in enumerate(schema.arguments):
        if i < len(node.args):
            options[argument.name] = node.args[i]
        elif argument.name in node.kwargs:
            options[argument.name] = node.kwargs[argument.name]
        elif argument.has_default_value():
            options[argument.name] = argument.default_value
    return options


def _where(node) -> str:
    """The module path of a call in the model (or its FX node name)."""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path = list(stack.values())[-1][0]
        return f"the call in {path!r}" if path else f"call {node.name!r}"
    return f"call {node.name!r}"


def msdacore_calls(program) -> list:
    """The calls of msdacore::ms_deform_attn in a torch.export ExportedProgram, in graph
    order: a list of (FX node, {argument: value})."""
    import torch

    target = torch.ops.msdacore.ms_deform_attn.default
    return [(node, _options(node)) for node in program.graph.nodes
            if node.op == "call_function" and node.target == target]


def _check_tensorrt(program) -> None:
    """Raises ValueError naming each call that TensorRT's plugin cannot express."""
    refused = []
    for node, options in msdacore_calls(program):
        dtypes = [str(options[name].meta["val"].dtype).replace("torch.", "")
                  for name in ("value", "sampling_locations", "attention_weights")]
        # the operator's arguments after its five tensors are the options, by name
        call_options = _dispatch.op_options(
            **{k: v for k, v in options.items() if k not in _dispatch.FORWARD_INPUTS})
        problems = tensorrt_problems(call_options, dtypes)
        if problems:
            refused.append(f"{_where(node)}: " + "; ".join(problems))
    if refused:
        raise ValueError(f"msdacore.onnx.export(target=\"tensorrt\"): TensorRT's "
                         f"{TRT_OP_TYPE} cannot express " + " | ".join(refused) +
                         ". Export with target=\"msdacore\" for a runtime with msdacore's "
                         "kernel (ONNX Runtime, OpenVINO).")


def export(model, args=(), f=None, *, target: str = "msdacore", **kwargs):
    """Exports a torch model whose deformable attention runs through msdacore to ONNX.

    model     a torch.nn.Module (or a torch.export.ExportedProgram) that calls
              torch.ops.msdacore.ms_deform_attn: a model patched with
              msdacore.torch.patch_transformers, msdacore's modules, or direct calls of
              msdacore.torch.ms_deform_attn
    args      the example positional inputs (a tuple)
    f         where to write the .onnx file (a path), or None
    target    "msdacore": one msdacore::MultiScaleDeformableAttention node per call
              (SPEC "ONNX": int64 index arrays, output (N, Lq, M*D)); "tensorrt":
              TensorRT's built-in MultiscaleDeformableAttnPlugin_TRT node (int32 index
              arrays, output (N, Lq, M, D)) then a Reshape to (N, Lq, M*D): bilinear,
              align_corners=False, the same number of points on every level, float32
              or float16; anything else is a ValueError naming the call
    kwargs    torch.onnx.export's keyword arguments (kwargs= the model's keyword
              inputs, dynamic_shapes, opset_version, input_names, output_names,
              external_data, optimize, ...); a custom_translation_table given is kept,
              with msdacore's entry added
    returns   torch's ONNXProgram (its .model_proto is the ONNX model)

    Always torch's dynamo exporter (dynamo=False is refused). Dynamic sizes are given
    with dynamic_shapes (torch.export.Dim), e.g. {"pixel_values": {0: batch}}.
    """
    import torch

    if target not in TARGETS:
        raise ValueError(f"msdacore.onnx.export: target must be one of "
                         f"{', '.join(map(repr, TARGETS))}, got {target!r}")
    if kwargs.pop("dynamo", True) is not True:
        raise ValueError("msdacore.onnx.export uses torch's dynamo exporter only: drop "
                         "dynamo=False")
    old = sorted(k for k in kwargs if k in _TORCHSCRIPT_ONLY)
    if old:
        raise ValueError(f"msdacore.onnx.export: {', '.join(old)} belong to the "
                         "TorchScript exporter; use dynamic_shapes for dynamic sizes")
    if not isinstance(args, tuple):
        args = (args,)
    table = dict(kwargs.pop("custom_translation_table", None) or {})
    table.update(translation_table(target))
    register_schemas()

    model_kwargs = kwargs.pop("kwargs", None)
    dynamic_shapes = kwargs.pop("dynamic_shapes", None)
    if isinstance(model, torch.export.ExportedProgram):
        if dynamic_shapes is not None:
            raise ValueError("msdacore.onnx.export: dynamic_shapes applies to an "
                             "nn.Module; an ExportedProgram carries its own")
        program = model
    else:
        program = torch.export.export(model, args, kwargs=model_kwargs,
                                      dynamic_shapes=dynamic_shapes, strict=False)
    if target == "tensorrt":
        _check_tensorrt(program)
    return torch.onnx.export(program, f=f, dynamo=True, custom_translation_table=table,
                             **kwargs)
