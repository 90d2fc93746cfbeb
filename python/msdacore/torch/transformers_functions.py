"""transformers' deformable attention sampling, computed by msdacore.

Each function here has the signature of the transformers code it stands in for and
returns the same result for the same arguments (transformers 5.x; see docs/torch.md):

- :func:`multi_scale_deformable_attention_forward`: ``MultiScaleDeformableAttention.forward``
  (without ``self``), the parameter-free module of Deformable DETR, Grounding DINO,
  MM Grounding DINO, OmDet-Turbo, RT-DETR, LW-DETR, RF-DETR and PP-DocLayout V2/V3/V4.
- :func:`multi_scale_deformable_attention`: the module-level function of Mask2Former and
  OneFormer's pixel decoders.
- :func:`multi_scale_deformable_attention_v2`: the module-level function of RT-DETRv2,
  D-FINE and DEIMv2 (points per level, ``method`` "default" or "discrete").

:mod:`msdacore.torch.transformers_patch` routes a model's calls here.
"""

from __future__ import annotations

from torch import Tensor

from .api import ms_deform_attn

__all__ = [
    "multi_scale_deformable_attention_forward",
    "multi_scale_deformable_attention",
    "multi_scale_deformable_attention_v2",
]


def _levels(spatial_shapes):
    """The levels as msdacore takes them: a list of (H, W) pairs, or the (L, 2) tensor."""
    if isinstance(spatial_shapes, Tensor):
        return spatial_shapes
    return [tuple(pair) for pair in spatial_shapes]


def multi_scale_deformable_attention_forward(value: Tensor, value_spatial_shapes,
                                             value_spatial_shapes_list=None,
                                             level_start_index=None,
                                             sampling_locations: Tensor = None,
                                             attention_weights: Tensor = None,
                                             im2col_step=None) -> Tensor:
    """transformers' ``MultiScaleDeformableAttention.forward(value, value_spatial_shapes,
    value_spatial_shapes_list, level_start_index, sampling_locations, attention_weights,
    im2col_step)``: sampling_locations (N, Lq, M, L, P, 2), attention_weights
    (N, Lq, M, L, P), returns (N, Lq, M*D).

    As transformers does, the levels are read from the Python list (no device-to-host
    copy) and the start offsets are derived from it; ``im2col_step`` is ignored.
    """
    shapes = value_spatial_shapes if value_spatial_shapes_list is None \
        else value_spatial_shapes_list
    return ms_deform_attn(value, _levels(shapes), None, sampling_locations, attention_weights)


def multi_scale_deformable_attention(value: Tensor, value_spatial_shapes,
                                     sampling_locations: Tensor,
                                     attention_weights: Tensor) -> Tensor:
    """Mask2Former's and OneFormer's ``multi_scale_deformable_attention(value,
    value_spatial_shapes, sampling_locations, attention_weights)``: value_spatial_shapes
    a list of (H, W) or an (L, 2) tensor; the uniform layout; returns (N, Lq, M*D)."""
    return ms_deform_attn(value, _levels(value_spatial_shapes), None, sampling_locations,
                          attention_weights)


_METHODS = {"default": "bilinear", "discrete": "discrete"}


def multi_scale_deformable_attention_v2(value: Tensor, value_spatial_shapes,
                                        sampling_locations: Tensor, attention_weights: Tensor,
                                        num_points_list, method="default") -> Tensor:
    """RT-DETRv2's, D-FINE's and DEIMv2's ``multi_scale_deformable_attention_v2(value,
    value_spatial_shapes, sampling_locations, attention_weights, num_points_list,
    method="default")``: the flattened layout, sampling_locations (N, Lq, M, P_total, 2)
    and attention_weights (N, Lq, M, P_total) with level l's num_points_list[l] points
    one after the other; returns (N, Lq, M*D).

    ``method="default"`` is bilinear sampling (``grid_sample``, zero padding);
    ``"discrete"`` is msdacore's ``mode="discrete"`` (nearest pixel, clamped to the
    border). transformers' discrete path converts the locations to integers, so no
    gradient reaches them; the locations are detached here to match (their gradient
    would be zero anyway).
    """
    mode = _METHODS.get(method) if isinstance(method, str) else None
    if mode is None:
        raise ValueError(f"multi_scale_deformable_attention_v2: method must be \"default\" or "
                         f"\"discrete\", got {method!r}")
    if mode == "discrete":
        sampling_locations = sampling_locations.detach()
    return ms_deform_attn(value, _levels(value_spatial_shapes), None, sampling_locations,
                          attention_weights, points_per_level=[int(p) for p in num_points_list],
                          mode=mode)
