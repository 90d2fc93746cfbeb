"""The torch operators ``msdacore::ms_deform_attn`` and ``msdacore::ms_deform_attn_backward``.

Both are ``torch.library.custom_op`` operators whose implementation calls msdacore's core
directly (_dispatch.py with the torch adapter): outputs and CUDA scratch come from
torch's allocator on torch's current stream, tensors reach the core through DLPack
without copies. They have fake (meta) implementations, so ``torch.compile`` traces them
without graph breaks, and the forward has an autograd formula that calls the backward
operator.

Operator schemas (every tensor as in docs/conventions.md):

    msdacore::ms_deform_attn(Tensor value, Tensor spatial_shapes, Tensor level_start_index,
                             Tensor sampling_locations, Tensor attention_weights,
                             bool align_corners=False, bool deterministic=False) -> Tensor
    msdacore::ms_deform_attn_backward(Tensor value, Tensor spatial_shapes,
                             Tensor level_start_index, Tensor sampling_locations,
                             Tensor attention_weights, Tensor grad_output,
                             bool align_corners=False, bool deterministic=False)
                             -> (Tensor, Tensor, Tensor)

``deterministic`` has no effect on the forward; the forward carries it to its autograd
backward (the CUDA backward then sums grad_value without atomics, bitwise reproducible).

The Python function :func:`ms_deform_attn` is the friendly entry point: it also takes
``spatial_shapes`` as a list of (H, W) pairs, derives ``level_start_index`` when it is
None and applies the autocast rules.
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from msdacore import _dispatch, _frameworks

__all__ = ["ms_deform_attn", "level_start_index_of"]

SpatialShapes = Union[Tensor, Sequence[Sequence[int]]]

def _host_index(t: Tensor) -> Tensor:
    """spatial_shapes / level_start_index on the host (the core reads them there)."""
    return _frameworks.torch_framework().to_host(t)


def _check_meta(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor) -> None:
    """The checks the output shape depends on, in the core's words, so that tracing with
    fake tensors fails the way the real call would."""
    if value.dim() != 4:
        raise ValueError(f"value must have shape (N, S, M, D), got {tuple(value.shape)}")
    N, _, M, _ = value.shape
    if sampling_locations.dim() != 6:
        raise ValueError("sampling_locations must have shape (N, Lq, M, L, P, 2), got "
                         f"{tuple(sampling_locations.shape)}")
    _, Lq, _, L, P, _ = sampling_locations.shape
    expected = (N, Lq, M, L, P, 2)
    if tuple(sampling_locations.shape) != expected:
        raise ValueError(f"sampling_locations must have shape (N, Lq, M, L, P, 2) = {expected}, "
                         f"got {tuple(sampling_locations.shape)}")
    if tuple(attention_weights.shape) != expected[:5]:
        raise ValueError(f"attention_weights must have shape (N, Lq, M, L, P) = {expected[:5]}, "
                         f"got {tuple(attention_weights.shape)}")
    dtypes = (value.dtype, sampling_locations.dtype, attention_weights.dtype)
    if len(set(dtypes)) != 1:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes[:2])
        raise TypeError("value, sampling_locations and attention_weights must have the same "
                        f"dtype, got {names} and {str(dtypes[2]).replace('torch.', '')}")


# ---------------------------------------------------------------------------
# Forward operator


@torch.library.custom_op("msdacore::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor,
                       align_corners: bool = False, deterministic: bool = False) -> Tensor:
    return _dispatch.forward(_frameworks.torch_framework(), value, spatial_shapes,
                             level_start_index, sampling_locations, attention_weights,
                             align_corners=align_corners)


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      align_corners=False, deterministic=False):
    _check_meta(value, sampling_locations, attention_weights)
    N, _, M, D = value.shape
    return value.new_empty((N, sampling_locations.shape[1], M * D))


# ---------------------------------------------------------------------------
# Backward operator


@torch.library.custom_op("msdacore::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(value: Tensor, spatial_shapes: Tensor,
                                level_start_index: Tensor, sampling_locations: Tensor,
                                attention_weights: Tensor, grad_output: Tensor,
                                align_corners: bool = False,
                                deterministic: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    return _dispatch.backward(_frameworks.torch_framework(), value, spatial_shapes,
                              level_start_index, sampling_locations, attention_weights,
                              grad_output, align_corners=align_corners,
                              deterministic=deterministic)


@_ms_deform_attn_backward_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      grad_output, align_corners=False, deterministic=False):
    _check_meta(value, sampling_locations, attention_weights)
    N, _, M, D = value.shape
    expected = (N, sampling_locations.shape[1], M * D)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"grad_output must have shape (N, Lq, M*D) = {expected}, "
                         f"got {tuple(grad_output.shape)}")
    return (torch.empty_like(value, memory_format=torch.contiguous_format),
            torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
            torch.empty_like(attention_weights, memory_format=torch.contiguous_format))


# ---------------------------------------------------------------------------
# Autograd


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights, \
        align_corners, deterministic = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights)
    ctx.align_corners = align_corners
    ctx.deterministic = deterministic


def _backward(ctx, grad_output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
        ctx.saved_tensors
    needs = ctx.needs_input_grad
    if not (needs[0] or needs[3] or needs[4]):
        return None, None, None, None, None, None, None
    grad_value, grad_loc, grad_attn = _ms_deform_attn_backward_op(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output.contiguous(), ctx.align_corners, ctx.deterministic)
    return (grad_value if needs[0] else None, None, None,
            grad_loc if needs[3] else None,
            grad_attn if needs[4] else None, None, None)


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


# ---------------------------------------------------------------------------
# Public entry point


def level_start_index_of(spatial_shapes: SpatialShapes) -> Union[Tensor, list]:
    """Prefix sums of H*W: a list for a list of pairs, an int64 tensor on the same
    device for a tensor."""
    if isinstance(spatial_shapes, Tensor):
        sizes = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).to(torch.int64)
        return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    starts, total = [], 0
    for h, w in spatial_shapes:
        starts.append(total)
        total = total + h * w
    return starts


def _as_index_tensor(x) -> Tensor:
    if isinstance(x, Tensor):
        return x
    return torch.tensor(x, dtype=torch.int64)


def _autocast_dtype(device_type: str, dtype: torch.dtype) -> Optional[torch.dtype]:
    """The dtype a floating input of `dtype` is cast to under autocast, or None.

    CPU: the core computes float32 and float64, so float16/bfloat16 inputs run in float32.
    CUDA: the autocast dtype (float16 or bfloat16) runs natively; float32 inputs are cast
    to it. float64 is never cast, as torch's own autocast leaves it alone.
    """
    if dtype == torch.float64 or not torch.is_autocast_enabled(device_type):
        return None
    if device_type == "cpu":
        return torch.float32 if dtype in (torch.float16, torch.bfloat16) else None
    if device_type == "cuda":
        target = torch.get_autocast_dtype("cuda")
        return target if dtype != target else None
    return None


def _apply_autocast(value: Tensor, *floats: Tensor) -> tuple:
    device_type = value.device.type
    if device_type not in ("cpu", "cuda"):
        return (value,) + floats
    out = []
    for t in (value,) + floats:
        target = _autocast_dtype(device_type, t.dtype)
        out.append(t if target is None else t.to(target))
    return tuple(out)


def ms_deform_attn(value: Tensor, spatial_shapes: SpatialShapes,
                   level_start_index: Optional[Union[Tensor, Sequence[int]]],
                   sampling_locations: Tensor, attention_weights: Tensor, *,
                   align_corners: bool = False, deterministic: bool = False) -> Tensor:
    """Multi-scale deformable attention with autograd, ``torch.compile`` and autocast.

    value               (N, S, M, D)         float tensor (T)
    spatial_shapes      (L, 2) int tensor of rows (H, W), or a list of (H, W) pairs
    level_start_index   (L,) int tensor, a list, or None (derived from spatial_shapes)
    sampling_locations  (N, Lq, M, L, P, 2)  T, (x, y) normalized to [0, 1]
    attention_weights   (N, Lq, M, L, P)     T
    align_corners       False: pixel = loc*size - 0.5 (Deformable DETR);
                        True: pixel = loc*(size - 1) (DAT)
    deterministic       CUDA: the backward sums grad_value without atomics (bitwise
                        reproducible, slower); the CPU backward always is
    returns             (N, Lq, M*D)         T, contiguous, on value's device

    The index arrays are read on the host: given as lists (or CPU tensors) they cost
    nothing; given as GPU tensors they are copied to the host, which waits for the GPU.

    Autocast: under CPU autocast, float16/bfloat16 inputs are computed in float32; under
    CUDA autocast, the inputs run natively in the autocast dtype. float64 is never cast.

    Raises ValueError (shapes, devices, index arrays) or TypeError (dtypes), as the core.
    """
    if level_start_index is None:
        if isinstance(spatial_shapes, Tensor):
            spatial_shapes = _host_index(spatial_shapes)  # one copy for both index arrays
        level_start_index = level_start_index_of(spatial_shapes)
    value, sampling_locations, attention_weights = _apply_autocast(
        value, sampling_locations, attention_weights)
    return _ms_deform_attn_op(value, _as_index_tensor(spatial_shapes),
                              _as_index_tensor(level_start_index), sampling_locations,
                              attention_weights, bool(align_corners), bool(deterministic))
