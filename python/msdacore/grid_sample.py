"""Multi-scale deformable attention composed from torch.nn.functional.grid_sample.

This is how models compute the op without a custom kernel: one grid_sample per
level, then a weighted sum. It is the baseline msdacore is compared against, and a
second, independent implementation of docs/conventions.md for align_corners False and True.
torch is imported inside the function so the package imports without it.
"""

from __future__ import annotations

__all__ = ["ms_deform_attn_grid_sample"]


def _level_shapes(spatial_shapes) -> list:
    """spatial_shapes: (L, 2) tensor / array / sequence of (H, W) -> list of (int, int)."""
    if hasattr(spatial_shapes, "tolist"):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn_grid_sample(value, spatial_shapes, sampling_locations, attention_weights,
                               align_corners=False):
    """Deformable attention via grid_sample (differentiable through autograd).

    value               (N, S, M, D)          float tensor
    spatial_shapes      (L, 2)                rows (H, W); tensor, array or list
    sampling_locations  (N, Lq, M, L, P, 2)   same dtype, normalised (x, y)
    attention_weights   (N, Lq, M, L, P)      same dtype
    returns             (N, Lq, M*D)          same dtype, contiguous

    Bilinear, zero padding; align_corners selects the pixel convention of docs/conventions.md.
    """
    import torch
    import torch.nn.functional as F

    shapes = _level_shapes(spatial_shapes)
    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    if len(shapes) != L:
        raise ValueError(f"spatial_shapes has {len(shapes)} levels, sampling_locations has {L}")
    if sum(h * w for h, w in shapes) != S:
        raise ValueError(f"sum of H*W over spatial_shapes is {sum(h * w for h, w in shapes)}, "
                         f"value has S = {S}")

    value_levels = value.split([h * w for h, w in shapes], dim=1)
    grids = 2.0 * sampling_locations - 1.0
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value_levels[lvl].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2)
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(N * M, Lq, P, 2)
        # -> (N*M, D, Lq, P)
        sampled.append(F.grid_sample(v, g, mode="bilinear", padding_mode="zeros",
                                     align_corners=align_corners))
    # (N*M, D, Lq, L, P) -> (N*M, D, Lq, L*P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)
    # (N, Lq, M, L, P) -> (N*M, 1, Lq, L*P)
    weights = attention_weights.transpose(1, 2).reshape(N * M, 1, Lq, L * P)
    out = (stacked * weights).sum(-1)  # (N*M, D, Lq)
    return out.view(N, M * D, Lq).transpose(1, 2).contiguous()
