"""The call forms existing deformable-attention code uses, backed by msdacore.

Two signatures are in common use:

- four arguments, as the pure-PyTorch fallbacks of mmcv (``multi_scale_deformable_attn_pytorch``)
  and Deformable DETR (``ms_deform_attn_core_pytorch``) take them::

      multi_scale_deformable_attn(value, value_spatial_shapes, sampling_locations,
                                  attention_weights)

- six arguments, as the autograd functions of Deformable DETR (``MSDeformAttnFunction``)
  and mmcv (``MultiScaleDeformableAttnFunction``) take them::

      multi_scale_deformable_attn(value, spatial_shapes, level_start_index,
                                  sampling_locations, attention_weights, im2col_step)

Both return (N, Lq, M*D). ``im2col_step`` is accepted and ignored: msdacore has no batch
chunking and no divisibility rule. All names below are the same function (or, for the
``*Function`` classes, a class whose ``apply`` is that function), so switching is a
change of import.
"""

from __future__ import annotations

from torch import Tensor

from .api import ms_deform_attn

__all__ = [
    "multi_scale_deformable_attn",
    "multi_scale_deformable_attn_pytorch",
    "ms_deform_attn_core_pytorch",
    "MSDeformAttnFunction",
    "MultiScaleDeformableAttnFunction",
]

_LSI_NAMES = ("level_start_index", "value_level_start_index", "input_level_start_index")
_SHAPES_NAMES = ("value_spatial_shapes", "spatial_shapes", "input_spatial_shapes")


def _pop_one(kwargs: dict, names) -> tuple:
    """(found, value) for the first of `names` present in kwargs (removing it)."""
    present = [n for n in names if n in kwargs]
    if len(present) > 1:
        raise TypeError(f"multi_scale_deformable_attn got both {present[0]} and {present[1]}")
    if present:
        return True, kwargs.pop(present[0])
    return False, None


def multi_scale_deformable_attn(value: Tensor, *args, **kwargs) -> Tensor:
    """``(value, value_spatial_shapes, sampling_locations, attention_weights)`` or
    ``(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
    im2col_step)``, positionally or by those names; returns (N, Lq, M*D).

    value (N, S, M, D); spatial_shapes (L, 2) tensor or list of (H, W);
    level_start_index (L,) or None; sampling_locations (N, Lq, M, L, P, 2);
    attention_weights (N, Lq, M, L, P). ``im2col_step`` is ignored. Keyword
    ``align_corners`` (default False, the convention of both libraries) is passed on.
    """
    kwargs = dict(kwargs)
    align_corners = kwargs.pop("align_corners", False)
    kwargs.pop("im2col_step", None)
    args = list(args)

    found, shapes = _pop_one(kwargs, _SHAPES_NAMES)
    if not found:
        if not args:
            raise TypeError("multi_scale_deformable_attn() missing the spatial_shapes argument")
        shapes = args.pop(0)
    found_lsi, level_start_index = _pop_one(kwargs, _LSI_NAMES)
    if len(args) >= 3 and not found_lsi:
        # (level_start_index, sampling_locations, attention_weights[, im2col_step])
        level_start_index = args.pop(0)
    if len(args) == 3:
        args.pop()  # im2col_step
    names = ["sampling_locations", "attention_weights"]
    for name in names:
        if name in kwargs:
            args.append(kwargs.pop(name))
    if len(args) != 2 or kwargs:
        extra = f"; unexpected keywords {sorted(kwargs)}" if kwargs else ""
        raise TypeError(
            "multi_scale_deformable_attn() takes (value, value_spatial_shapes, "
            "sampling_locations, attention_weights) or (value, spatial_shapes, "
            "level_start_index, sampling_locations, attention_weights, im2col_step)" + extra)
    sampling_locations, attention_weights = args
    return ms_deform_attn(value, shapes, level_start_index, sampling_locations,
                          attention_weights, align_corners=align_corners)


# mmcv's and Deformable DETR's names for the four-argument form.
multi_scale_deformable_attn_pytorch = multi_scale_deformable_attn
ms_deform_attn_core_pytorch = multi_scale_deformable_attn


class MSDeformAttnFunction:
    """Stand-in for Deformable DETR's ``MSDeformAttnFunction`` (and mmcv's
    ``MultiScaleDeformableAttnFunction``): ``apply(value, spatial_shapes,
    level_start_index, sampling_locations, attention_weights, im2col_step)`` returns
    (N, Lq, M*D) with autograd. ``im2col_step`` is ignored."""

    @staticmethod
    def apply(value: Tensor, spatial_shapes, level_start_index, sampling_locations: Tensor,
              attention_weights: Tensor, im2col_step: int = 64) -> Tensor:
        del im2col_step
        return ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)


MultiScaleDeformableAttnFunction = MSDeformAttnFunction
