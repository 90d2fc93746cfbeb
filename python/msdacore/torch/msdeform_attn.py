"""Deformable DETR's multi-scale deformable attention module on msdacore.

Same constructor, parameters (names and shapes, so state dicts load unchanged),
initialisation and forward interface as the module of the Deformable DETR paper;
``n_levels=1`` gives the single-scale deformable attention module.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .api import ms_deform_attn

__all__ = ["MSDeformAttn"]


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Deformable DETR).

    Args:
        d_model: channels of queries, values and output (divisible by n_heads).
        n_levels: feature levels L; 1 is single-scale deformable attention.
        n_heads: attention heads M; each has d_model // n_heads channels.
        n_points: sampling points P per head and level.

    Parameters (as in Deformable DETR): ``sampling_offsets`` Linear(d_model, M*L*P*2),
    ``attention_weights`` Linear(d_model, M*L*P), ``value_proj`` and ``output_proj``
    Linear(d_model, d_model). Initialisation: offset weights zero and offset biases on a
    ring, head m pointing at angle 2*pi*m/M with point p at distance p+1 (in units of the
    level's pixels for 2-coordinate reference points); attention logits zero (uniform
    weights); value and output projections Xavier-uniform with zero bias.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8,
                 n_points: int = 4):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"d_model must be divisible by n_heads, got d_model={d_model} "
                             f"and n_heads={n_heads}")
        for name, v in (("d_model", d_model), ("n_levels", n_levels), ("n_heads", n_heads),
                        ("n_points", n_points)):
            if v < 1:
                raise ValueError(f"{name} must be >= 1, got {v}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        # Kept for compatibility with code that reads it; msdacore does not chunk batches.
        self.im2col_step = 64

        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2), (x, y)
        # Scale each direction so that its larger coordinate is 1 (points on a square ring).
        directions = directions / directions.abs().max(dim=-1, keepdim=True).values
        distances = torch.arange(1, self.n_points + 1, dtype=torch.float32)  # (P,)
        ring = directions[:, None, None, :] * distances[None, None, :, None]  # (M, 1, P, 2)
        ring = ring.expand(self.n_heads, self.n_levels, self.n_points, 2)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(ring.reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        nn.init.xavier_uniform_(self.value_proj.weight)
        nn.init.zeros_(self.value_proj.bias)
        nn.init.xavier_uniform_(self.output_proj.weight)
        nn.init.zeros_(self.output_proj.bias)

    def forward(self, query: Tensor, reference_points: Tensor, input_flatten: Tensor,
                input_spatial_shapes: Union[Tensor, Sequence[Sequence[int]]],
                input_level_start_index: Optional[Union[Tensor, Sequence[int]]] = None,
                input_padding_mask: Optional[Tensor] = None) -> Tensor:
        """
        query                   (N, Lq, C)
        reference_points        (N, Lq, L, 2): (x, y) in [0, 1], top-left (0, 0);
                                or (N, Lq, L, 4): boxes (cx, cy, w, h), the offsets then
                                scale with the box. (N, Lq, 2|4) is broadcast over levels.
        input_flatten           (N, S, C), S = sum_l H_l*W_l
        input_spatial_shapes    (L, 2) rows (H_l, W_l), tensor or list of pairs (a list
                                avoids a device-to-host copy on the GPU)
        input_level_start_index (L,) prefix sums of H_l*W_l, or None (derived)
        input_padding_mask      (N, S) bool, True at padding tokens (their values are zeroed)
        returns                 (N, Lq, C)
        """
        N, Lq, _ = query.shape
        _, S, _ = input_flatten.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points

        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            value = value.masked_fill(input_padding_mask[..., None], 0.0)
        value = value.view(N, S, M, self.d_model // M)

        offsets = self.sampling_offsets(query).view(N, Lq, M, L, P, 2)
        weights = self.attention_weights(query).view(N, Lq, M, L * P)
        weights = weights.softmax(-1).view(N, Lq, M, L, P)

        if reference_points.dim() == 3:
            reference_points = reference_points[:, :, None, :].expand(-1, -1, L, -1)
        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by (W_l, H_l).
            if isinstance(input_spatial_shapes, Tensor):
                sizes = input_spatial_shapes.to(device=query.device, dtype=offsets.dtype)
            else:
                sizes = torch.tensor(input_spatial_shapes, dtype=offsets.dtype,
                                     device=query.device)
            normalizer = sizes.flip(-1)  # (L, 2) as (W, H)
            locations = (reference_points[:, :, None, :, None, :]
                         + offsets / normalizer[None, None, None, :, None, :])
        elif reference_points.shape[-1] == 4:
            # Offsets in units of half the box size divided by P.
            centre = reference_points[:, :, None, :, None, :2]
            size = reference_points[:, :, None, :, None, 2:]
            locations = centre + offsets / P * size * 0.5
        else:
            raise ValueError("reference_points must end in 2 (points) or 4 (boxes) coordinates, "
                             f"got shape {tuple(reference_points.shape)}")

        output = ms_deform_attn(value, input_spatial_shapes, input_level_start_index,
                                locations, weights)
        return self.output_proj(output)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, n_levels={self.n_levels}, n_heads={self.n_heads}, "
                f"n_points={self.n_points}")
