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
                             bool align_corners=False, bool deterministic=False,
                             str mode="bilinear", int[]? points_per_level=None) -> Tensor
    msdacore::ms_deform_attn_backward(Tensor value, Tensor spatial_shapes,
                             Tensor level_start_index, Tensor sampling_locations,
                             Tensor attention_weights, Tensor grad_output,
                             bool align_corners=False, bool deterministic=False,
                             str mode="bilinear", int[]? points_per_level=None)
                             -> (Tensor, Tensor, Tensor)

``deterministic`` has no effect on the forward; the forward carries it to its autograd
backward (the CUDA backward then sums grad_value without atomics, bitwise reproducible).

Besides autograd (reverse mode), both operators have vmap rules (the batch is folded into
N, one call). Forward-mode AD of the raw operators raises a clear error: the friendly
entry point, msdacore.torch.ms_deform_attn (api.py), has the forward-mode formula and the
torch.func support.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as _forward_ad
import torch.fx.experimental.symbolic_shapes as _symbolic_shapes
from torch import Tensor
from torch._subclasses.fake_tensor import FakeTensor as _FakeTensor

from msdacore import _core, _dispatch, _frameworks

__all__: list = []

def _refuse_forward_ad(*tensors: Tensor) -> None:
    """The raw operators have no forward-mode formula: a forward-AD tangent on an input
    would otherwise be dropped silently (a zero tangent)."""
    if _forward_ad._current_level < 0:
        return
    for t in tensors:
        if _forward_ad.unpack_dual(t).tangent is not None:
            raise RuntimeError(
                "torch.ops.msdacore operators have no forward-mode derivative: call "
                "msdacore.torch.ms_deform_attn instead, which has one (torch.func.jvp, "
                "jacfwd, torch.autograd.forward_ad) for value and attention_weights; "
                "sampling_locations needs reverse mode (backward, torch.func.grad / vjp / "
                "jacrev)")


def _size_hint(size) -> int:
    """A size as an int: a traced (symbolic) size's hint, without adding a guard."""
    if isinstance(size, int):
        return size
    return _symbolic_shapes.optimization_hint(size, fallback=1)


def _spec(t: Tensor) -> tuple:
    """(shape, dtype name, device type, device index) of a tensor, real or fake."""
    return (tuple(_size_hint(d) for d in t.shape), str(t.dtype).replace("torch.", ""),
            t.device.type, t.device.index or 0)


def _index_values(t: Tensor):
    """The values of an index tensor where they exist (a real CPU tensor), else None."""
    if isinstance(t, _FakeTensor) or t.device.type != "cpu" or \
            torch._C._dispatch_tls_local_include_set().has(torch._C.DispatchKey.Python):
        return None
    try:
        return t.reshape(-1).tolist()
    except (RuntimeError, NotImplementedError):  # data-less tensors (meta, functional)
        return None


def _check_shapes(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights, options, grad_output=None) -> None:
    """The core's check that needs no data (so tracing with fake tensors fails as the real
    call would, in the same words); symbolic sizes are checked at their hints."""
    _core.check_shapes(tuple(_spec(t) for t in (value, spatial_shapes, level_start_index,
                                                sampling_locations, attention_weights)),
                       options, _index_values(spatial_shapes), _index_values(level_start_index),
                       None if grad_output is None else _spec(grad_output))


def op_arguments(options) -> tuple:
    """An msdacore.Options as the operators' trailing arguments: (align_corners,
    deterministic, mode, points_per_level as a list or None)."""
    counts = options.points_per_level
    return (options.align_corners, options.deterministic, options.mode,
            None if counts is None else list(counts))


# ---------------------------------------------------------------------------
# Forward operator


@torch.library.custom_op("msdacore::ms_deform_attn", mutates_args=())
def _ms_deform_attn_op(value: Tensor, spatial_shapes: Tensor, level_start_index: Tensor,
                       sampling_locations: Tensor, attention_weights: Tensor,
                       align_corners: bool = False, deterministic: bool = False,
                       mode: str = "bilinear",
                       points_per_level: Optional[list[int]] = None) -> Tensor:
    _refuse_forward_ad(value, sampling_locations, attention_weights)
    return _dispatch.forward(_frameworks.torch_framework(), value, spatial_shapes,
                             level_start_index, sampling_locations, attention_weights,
                             options=_dispatch.op_options(align_corners, deterministic, mode,
                                                          points_per_level))


@_ms_deform_attn_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      align_corners=False, deterministic=False, mode="bilinear", points_per_level=None):
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights,
                  _dispatch.op_options(align_corners, deterministic, mode, points_per_level))
    N, _, M, D = value.shape  # the core's output shape (N, Lq, M*D), in traced sizes
    return value.new_empty((N, sampling_locations.shape[1], M * D))


# ---------------------------------------------------------------------------
# Backward operator


@torch.library.custom_op("msdacore::ms_deform_attn_backward", mutates_args=())
def _ms_deform_attn_backward_op(value: Tensor, spatial_shapes: Tensor,
                                level_start_index: Tensor, sampling_locations: Tensor,
                                attention_weights: Tensor, grad_output: Tensor,
                                align_corners: bool = False,
                                deterministic: bool = False, mode: str = "bilinear",
                                points_per_level: Optional[list[int]] = None
                                ) -> tuple[Tensor, Tensor, Tensor]:
    _refuse_forward_ad(value, sampling_locations, attention_weights, grad_output)
    return _dispatch.backward(_frameworks.torch_framework(), value, spatial_shapes,
                              level_start_index, sampling_locations, attention_weights,
                              grad_output,
                              options=_dispatch.op_options(align_corners, deterministic, mode,
                                                           points_per_level))


@_ms_deform_attn_backward_op.register_fake
def _(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
      grad_output, align_corners=False, deterministic=False, mode="bilinear",
      points_per_level=None):
    _check_shapes(value, spatial_shapes, level_start_index, sampling_locations,
                  attention_weights,
                  _dispatch.op_options(align_corners, deterministic, mode, points_per_level),
                  grad_output)
    return (torch.empty_like(value, memory_format=torch.contiguous_format),
            torch.empty_like(sampling_locations, memory_format=torch.contiguous_format),
            torch.empty_like(attention_weights, memory_format=torch.contiguous_format))


# ---------------------------------------------------------------------------
# Autograd


def _setup_context(ctx, inputs, output):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs[:5]
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                          attention_weights)
    ctx.options = tuple(inputs[5:])  # align_corners, deterministic, mode, points_per_level


def _backward(ctx, grad_output, backward_op=None):
    """The gradients of the forward operator's nine inputs; `backward_op` (default: the
    backward operator) computes the three float ones."""
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
        ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad_output is None or not (needs[0] or needs[3] or needs[4]):
        return (None,) * 9
    grad_value, grad_loc, grad_attn = (backward_op or _ms_deform_attn_backward_op)(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        grad_output.contiguous(), *ctx.options)
    return (grad_value if needs[0] else None, None, None,
            grad_loc if needs[3] else None,
            grad_attn if needs[4] else None) + (None,) * 4


_ms_deform_attn_op.register_autograd(_backward, setup_context=_setup_context)


def refuse_double_backward(ctx, *grads):
    """The backward operator has no derivative (the autograd formula of both routes)."""
    raise RuntimeError("msdacore: double backward (a derivative of the gradients of "
                       "ms_deform_attn) is not supported")


_ms_deform_attn_backward_op.register_autograd(refuse_double_backward,
                                              setup_context=lambda ctx, inputs, output: None)


# ---------------------------------------------------------------------------
# vmap: the batch dimension folded into N, one call


def _fold(x: Tensor, in_dim, batch: int) -> Tensor:
    """x with its vmap dimension first and merged into N: (B*N, ...)."""
    x = x.movedim(in_dim, 0) if in_dim is not None else x.unsqueeze(0).expand(batch, *x.shape)
    return x.reshape(batch * x.shape[1], *x.shape[2:])


def _check_index_dims(in_dims) -> None:
    if in_dims[1] is not None or in_dims[2] is not None:
        raise ValueError("msdacore: spatial_shapes and level_start_index cannot be batched "
                         "under vmap (every batch element must share the levels)")


def _unfold(x: Tensor, batch: int) -> Tensor:
    return x.reshape(batch, x.shape[0] // batch, *x.shape[1:])


@torch.library.register_vmap("msdacore::ms_deform_attn")
def _(info, in_dims, value, spatial_shapes, level_start_index, sampling_locations,
      attention_weights, *options):
    _check_index_dims(in_dims)
    B = info.batch_size
    out = _ms_deform_attn_op(_fold(value, in_dims[0], B), spatial_shapes, level_start_index,
                             _fold(sampling_locations, in_dims[3], B),
                             _fold(attention_weights, in_dims[4], B), *options)
    return _unfold(out, B), 0


@torch.library.register_vmap("msdacore::ms_deform_attn_backward")
def _(info, in_dims, value, spatial_shapes, level_start_index, sampling_locations,
      attention_weights, grad_output, *options):
    _check_index_dims(in_dims)
    B = info.batch_size
    grads = _ms_deform_attn_backward_op(
        _fold(value, in_dims[0], B), spatial_shapes, level_start_index,
        _fold(sampling_locations, in_dims[3], B), _fold(attention_weights, in_dims[4], B),
        _fold(grad_output, in_dims[5], B), *options)
    return tuple(_unfold(g, B) for g in grads), (0, 0, 0)
