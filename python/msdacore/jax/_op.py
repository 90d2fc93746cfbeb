"""msdacore.jax.ms_deform_attn: multi-scale deformable attention as an XLA FFI call, with
its backward wired through jax.custom_vjp."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .. import _dispatch
from . import _ffi


class _Static(NamedTuple):
    """The static (hashable) part of a call, as the handlers' attributes take it."""
    spatial_shapes: tuple      # (H_0, W_0, H_1, W_1, ...)
    level_start_index: tuple   # (L,) prefix sums
    points_per_level: tuple    # P_l per level ((P,) * L for the uniform layout)
    options: object            # the msdacore.Options of the call


def _static_index(obj, name: str) -> np.ndarray:
    """spatial_shapes / level_start_index as a host int64 array (a tuple, list, NumPy array
    or concrete JAX array); a traced value is a TypeError (they fix the program's shapes).
    Arrays of other dtypes than int32 / int64 (unsigned and narrow ints included, as in
    the NumPy API) are returned as they are: the core's check names their dtype."""
    try:
        array = np.asarray(obj)
    except (jax.errors.TracerArrayConversionError, jax.errors.ConcretizationTypeError):
        raise TypeError(
            f"{name} must be static (a tuple, list or NumPy array of ints): it fixes the "
            f"shapes of the computation, so it cannot be traced; pass it as a static "
            f"argument of jit or close over it") from None
    if array.dtype in (np.int32, np.int64):
        return np.ascontiguousarray(array, dtype=np.int64)
    return np.ascontiguousarray(array)  # the core's check names the dtype


def _attributes(static: _Static) -> dict:
    return {"spatial_shapes": np.asarray(static.spatial_shapes, np.int64),
            "level_start_index": np.asarray(static.level_start_index, np.int64),
            "points_per_level": np.asarray(static.points_per_level, np.int64),
            "align_corners": np.int32(static.options.align_corners),
            "mode": np.int32(static.options.mode_code),
            "deterministic": np.int32(static.options.deterministic)}


def _flattened(static: _Static, loc, attn):
    """sampling_locations and attention_weights in the flattened layout (a free reshape):
    (N, Lq, M, P_total, 2) and (N, Lq, M, P_total)."""
    p_total = sum(static.points_per_level)
    return (loc.reshape(*loc.shape[:3], p_total, 2), attn.reshape(*attn.shape[:3], p_total))


def _forward(static: _Static, value, loc, attn):
    loc_f, attn_f = _flattened(static, loc, attn)
    N, _, M, D = value.shape
    out = jax.ShapeDtypeStruct((N, loc.shape[1], M * D), value.dtype)
    return jax.ffi.ffi_call(_ffi.FORWARD, out, vmap_method="broadcast_all")(
        value, loc_f, attn_f, **_attributes(static))


def _forward_with_residuals(static: _Static, value, loc, attn):
    return _forward(static, value, loc, attn), (value, loc, attn)


def _backward(static: _Static, residuals, grad_output):
    value, loc, attn = residuals
    loc_f, attn_f = _flattened(static, loc, attn)
    shapes = (jax.ShapeDtypeStruct(value.shape, value.dtype),
              jax.ShapeDtypeStruct(loc_f.shape, loc.dtype),
              jax.ShapeDtypeStruct(attn_f.shape, attn.dtype))
    grad_value, grad_loc, grad_attn = jax.ffi.ffi_call(
        _ffi.BACKWARD, shapes, vmap_method="broadcast_all")(
        value, loc_f, attn_f, grad_output.astype(value.dtype), **_attributes(static))
    return grad_value, grad_loc.reshape(loc.shape), grad_attn.reshape(attn.shape)


_ms_deform_attn = jax.custom_vjp(_forward, nondiff_argnums=(0,))
_ms_deform_attn.defvjp(_forward_with_residuals, _backward)


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, *, align_corners=False, points_per_level=None,
                   mode="bilinear", deterministic=False):
    """Multi-scale deformable attention in JAX: an XLA custom call running msdacore's
    kernels (CPU; CUDA where msdacore was built with it), differentiable (jax.grad, through
    msdacore's backward), and usable under jit, vmap and jax.checkpoint.

    value               (N, S, M, D)        float32 | float64 | float16 | bfloat16 (T)
    spatial_shapes      (L, 2) rows (H, W)  static: a tuple, list or NumPy array of ints
    level_start_index   (L,)                static, prefix sums of H*W
    sampling_locations  (N, Lq, M, L, P, 2) T (float32 with a half T: mixed precision),
                                            (x, y) normalized to [0, 1]
    attention_weights   (N, Lq, M, L, P)    T (or float32 with a half T)
    align_corners       bool, static
    points_per_level    None, or L static counts: the flattened layout,
                        sampling_locations (N, Lq, M, P_total, 2), attention_weights
                        (N, Lq, M, P_total)
    mode                "bilinear" or "discrete", static
    deterministic       bool, static: on CUDA, a bitwise-reproducible backward (grad_value
                        gathered instead of summed with atomics; slower). The CPU backward
                        is always deterministic.
    returns             (N, Lq, M*D) of dtype T

    Gradients flow to value, sampling_locations and attention_weights, each in its own
    dtype. Under vmap the batch axes are folded into N (one kernel call). Bad shapes and
    dtypes raise ValueError / TypeError when the call is traced, with msdacore's messages.
    """
    options = _dispatch.op_options(align_corners, deterministic, mode, points_per_level)
    ss = _static_index(spatial_shapes, "spatial_shapes")
    lsi = _static_index(level_start_index, "level_start_index")
    value, loc, attn = (jnp.asarray(x) for x in (value, sampling_locations, attention_weights))
    _ffi.check_shapes(value, ss, lsi, loc, attn, options)
    _ffi.library()  # the handlers built and registered before the call is lowered
    counts = options.points_per_level
    if counts is None:  # the uniform layout (N, Lq, M, L, P, 2), checked above
        counts = (loc.shape[4],) * loc.shape[3]
    static = _Static(tuple(int(x) for x in ss.reshape(-1)), tuple(int(x) for x in lsi),
                     tuple(counts), options)
    return _ms_deform_attn(static, value, loc, attn)
