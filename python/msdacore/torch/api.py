"""msdacore.torch.ms_deform_attn, the friendly entry point of the torch operators (ops.py):
argument forms (lists of (H, W) pairs, a derived level_start_index), autocast, and an
autograd.Function over the operators that gives reverse mode (backward, torch.func.grad,
vjp, jacrev), forward mode for value and attention_weights (torch.func.jvp, jacfwd,
torch.autograd.forward_ad; the operator is linear in each) and vmap (the operators' rule:
the batch is folded into N). Forward mode with respect to sampling_locations raises a
clear error.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

from msdacore import _dispatch

from .ops import (
    _backward,
    _ms_deform_attn_backward_op,
    _ms_deform_attn_op,
    op_arguments,
    refuse_double_backward,
)

__all__ = ["ms_deform_attn", "level_start_index_of"]

SpatialShapes = Union[Tensor, Sequence[Sequence[int]]]


def _transforms_active() -> bool:
    """True under torch.func transforms or forward-mode AD, which need _MSDeformAttn.
    (Where torch lacks these queries, always True: correct, only slower.)"""
    functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
    level = getattr(_forward_ad, "_current_level", 0)
    return functorch_active is None or functorch_active() or level >= 0


class _MSDeformAttnBackward(torch.autograd.Function):
    """The backward operator in a form torch.func transforms accept (the operator's own
    autograd wrapper is not one); it has no derivative of its own."""

    generate_vmap_rule = True

    @staticmethod
    def forward(value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, grad_output, *options):
        return _ms_deform_attn_backward_op(value, spatial_shapes, level_start_index,
                                           sampling_locations, attention_weights, grad_output,
                                           *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    backward = staticmethod(refuse_double_backward)


class _MSDeformAttn(torch.autograd.Function):
    """The forward operator with its derivatives, in the form torch.func transforms need
    (setup_context, jvp, a generated vmap rule over the operators' own)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights, *options):
        return _ms_deform_attn_op(value, spatial_shapes, level_start_index, sampling_locations,
                                  attention_weights, *options)

    @staticmethod
    def setup_context(ctx, inputs, output):
        tensors = inputs[:5]  # value, spatial_shapes, level_start_index, locations, weights
        ctx.save_for_backward(*tensors)
        ctx.save_for_forward(*tensors)
        ctx.options = tuple(inputs[5:])  # align_corners, deterministic, mode, points_per_level
        ctx.set_materialize_grads(False)  # tangents of inputs without one stay None

    @staticmethod
    def backward(ctx, grad_output):
        return _backward(ctx, grad_output, _MSDeformAttnBackward.apply)

    @staticmethod
    def jvp(ctx, value_t, _spatial_t, _start_t, locations_t, weights_t, *_options_t):
        if locations_t is not None:
            raise RuntimeError(
                "msdacore.torch.ms_deform_attn: forward-mode AD (torch.func.jvp, jacfwd, "
                "torch.autograd.forward_ad) is supported for value and attention_weights, "
                "not for sampling_locations; use reverse mode for it (backward, "
                "torch.func.grad / vjp / jacrev)")
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
            ctx.saved_tensors
        out = None
        if value_t is not None:  # linear in value
            out = _ms_deform_attn_op(value_t, spatial_shapes, level_start_index,
                                     sampling_locations, attention_weights, *ctx.options)
        if weights_t is not None:  # linear in attention_weights
            term = _ms_deform_attn_op(value, spatial_shapes, level_start_index,
                                      sampling_locations, weights_t, *ctx.options)
            out = term if out is None else out + term
        return out


def level_start_index_of(spatial_shapes: SpatialShapes) -> Union[Tensor, list]:
    """Prefix sums of H*W: a list for a list of pairs, an int64 tensor on the same
    device for a tensor."""
    if isinstance(spatial_shapes, Tensor):
        shapes = spatial_shapes.to(torch.int64)  # widened first: H*W may pass int32
        sizes = shapes[:, 0] * shapes[:, 1]
        return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    starts, total = [], 0
    for h, w in spatial_shapes:
        starts.append(total)
        total = total + _size(h) * _size(w)
    return starts


def _size(x):
    """A level size as a Python int (no overflow of NumPy int32 scalars), or the
    torch.SymInt it is while tracing with dynamic shapes (int() would fix it to the
    example's value: an export with a dynamic image size would silently keep it)."""
    return x if isinstance(x, torch.SymInt) else int(x)


def _as_index_tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.tensor(x, dtype=torch.int64)


def _autocast_dtype(device_type: str, dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype `value` of `dtype` is computed in under autocast, or None (no autocast
    on this device, or float64, which torch's own autocast never casts either)."""
    if device_type not in ("cpu", "cuda") or dtype == torch.float64 \
            or not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def _apply_autocast(value: Tensor, sampling_locations: Tensor,
                    attention_weights: Tensor) -> tuple:
    """Under autocast, `value` follows the autocast dtype while the sampling locations
    and attention weights are computed in float32 (a bfloat16 location on a 167-pixel
    level is off by up to 0.33 pixel: SPEC "Numerics"). Every backend of the core takes
    that mix (its dtype check, validate.cpp, is the same for every device)."""
    target = _autocast_dtype(value.device.type, value.dtype)
    if target is None:
        return value, sampling_locations, attention_weights

    def to(t: Tensor, dtype: torch.dtype) -> Tensor:
        return t if t.dtype == dtype or t.dtype == torch.float64 else t.to(dtype)

    return (to(value, target), to(sampling_locations, torch.float32),
            to(attention_weights, torch.float32))


def ms_deform_attn(value: Tensor, spatial_shapes: SpatialShapes,
                   level_start_index: Optional[Union[Tensor, Sequence[int]]],
                   sampling_locations: Tensor, attention_weights: Tensor, *,
                   align_corners: bool = False, deterministic: bool = False,
                   points_per_level: Optional[Sequence[int]] = None,
                   mode: str = "bilinear") -> Tensor:
    """Multi-scale deformable attention with autograd, ``torch.compile`` and autocast.

    value               (N, S, M, D)         float tensor (T)
    spatial_shapes      (L, 2) int tensor of rows (H, W), or a list of (H, W) pairs
    level_start_index   (L,) int tensor, a list, or None (derived from spatial_shapes)
    sampling_locations  (N, Lq, M, L, P, 2)  T, (x, y) normalized to [0, 1]
    attention_weights   (N, Lq, M, L, P)     T
    align_corners       False: pixel = loc*size - 0.5 (Deformable DETR);
                        True: pixel = loc*(size - 1) (DAT)
    points_per_level    None (uniform layout), or L counts: the flattened layout,
                        sampling_locations (N, Lq, M, P_total, 2), attention_weights
                        (N, Lq, M, P_total) (RT-DETRv2, D-FINE)
    mode                "bilinear" or "discrete" (nearest pixel, clamped; zero location
                        gradients)
    deterministic       CUDA: the backward sums grad_value without atomics (bitwise
                        reproducible, slower); the CPU backward always is
    returns             (N, Lq, M*D)         T, contiguous, on value's device

    The index arrays are read on the host: given as lists (or CPU tensors) they cost
    nothing; given as GPU tensors they are copied to the host, which waits for the GPU.

    Autocast (CPU and CUDA): value is cast to the autocast dtype, sampling_locations and
    attention_weights are computed in float32 (mixed precision; the output has the
    autocast dtype). float64 inputs are never cast.

    Raises ValueError (shapes, devices, index arrays) or TypeError (dtypes), as the core.
    """
    for name, t in (("value", value), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if isinstance(t, Tensor) and (t.is_nested or t.layout != torch.strided):
            raise TypeError(f"{name} is a {'nested' if t.is_nested else str(t.layout)} "
                            "tensor: msdacore takes dense (strided) tensors")
    if level_start_index is None:
        if isinstance(spatial_shapes, Tensor):
            # one copy to the host for both index arrays
            spatial_shapes = spatial_shapes if spatial_shapes.device.type == "cpu" else \
                spatial_shapes.cpu()
        level_start_index = level_start_index_of(spatial_shapes)
    value, sampling_locations, attention_weights = _apply_autocast(
        value, sampling_locations, attention_weights)
    if torch.compiler.is_compiling():  # the operator's fake implementation checks them
        options = (align_corners, deterministic, mode,
                   None if points_per_level is None else [int(p) for p in points_per_level])
    else:  # checked here, so that a bad option gets the core's message, not the schema's
        options = op_arguments(_dispatch.op_options(align_corners, deterministic, mode,
                                                    points_per_level))
    args = (value, _as_index_tensor(spatial_shapes), _as_index_tensor(level_start_index),
            sampling_locations, attention_weights, *options)
    # Two routes, both to the same operators: torch.func transforms and forward-mode AD
    # need an autograd.Function (setup_context, jvp, a vmap rule), which the operator's
    # registered autograd is not; everywhere else the operator itself is cheaper and is
    # what Dynamo traces without a graph break. Measured on a 2-core CPU (a tiny call,
    # N=1, Lq=8, M=2, D=8, torch 2.13): forward without grad 39-47 us against 96-99 us,
    # with grad 90 against 98-100 us, forward+backward 276-278 against 360-377 us.
    if torch.compiler.is_compiling() or not _transforms_active():
        return _ms_deform_attn_op(*args)
    return _MSDeformAttn.apply(*args)
