"""DAT-style deformable attention (Vision Transformer with Deformable Attention) on msdacore.

Every query attends densely to a small set of keys and values sampled at deformed
points: a uniform reference grid, r times coarser than the feature map, moved by
offsets that a light network predicts from the queries. The sampling (and the optional
relative position bias lookup) runs through msdacore with ``align_corners=True``, one
level, one point, the channel groups as heads.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .api import ms_deform_attn

__all__ = ["DeformableAttention2d", "DAttention"]


class _ChannelLayerNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm = nn.LayerNorm(channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _pair(v) -> Tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    h, w = v
    return (int(h), int(w))


class DeformableAttention2d(nn.Module):
    """Deformable attention over a (B, C, H, W) feature map, as in DAT.

    Args:
        dim: channels C of the input and the output.
        n_heads: attention heads; C must be divisible by n_heads.
        n_groups: offset groups G; C and n_heads must be divisible by G. Each group
            (C/G channels, n_heads/G heads) gets its own deformed points.
        stride: the factor r between the feature map and the reference grid: the
            grid has ceil(H/r) x ceil(W/r) points, the number of sampled keys per group.
        offset_range_factor: bound on the offsets, in reference-grid cells: each
            offset is tanh(o) * offset_range_factor cells (a cell is 1/ceil(H/r) of
            the height and 1/ceil(W/r) of the width). Non-positive: unbounded offsets.
        kernel_size: odd size k of the offset network's depthwise convolution
            (default: r + 1 for even r, r for odd r, at least 3).
        use_rpb: add a relative position bias, looked up (bilinearly) in a learned
            table of shape (n_heads, 2*H_max - 1, 2*W_max - 1) at the displacement
            between each query pixel and each deformed key point.
        q_size: (H_max, W_max), the largest feature map the bias table covers; needed
            when use_rpb. Displacements outside the table get a zero bias.
        qkv_bias: bias in the query, key and value projections.
        attn_drop: dropout on the attention probabilities (training only).
        proj_drop: dropout after the output projection.

    Submodules: ``proj_q``, ``proj_k``, ``proj_v``, ``proj_out`` (1x1 convolutions,
    C -> C); ``conv_offset``, the offset network applied to each group's C/G query
    channels (shared by the groups): depthwise k x k convolution with stride r,
    LayerNorm over channels, GELU, 1x1 convolution to 2 channels (x, y), no bias;
    ``rpe_table`` (with use_rpb).

    forward(x) -> (B, C, H, W); forward(x, return_positions=True) also returns the
    sampled points (B, G, Hk, Wk, 2) and the reference grid (Hk, Wk, 2), both (x, y)
    in [0, 1] with align_corners=True (pixel = coordinate * (size - 1)).
    """

    def __init__(self, dim: int, n_heads: int = 8, n_groups: int = 4, stride: int = 4,
                 offset_range_factor: float = 2.0, kernel_size: Optional[int] = None,
                 use_rpb: bool = True, q_size=None, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % n_heads != 0:
            raise ValueError(f"dim must be divisible by n_heads, got dim={dim}, n_heads={n_heads}")
        if dim % n_groups != 0 or n_heads % n_groups != 0:
            raise ValueError("dim and n_heads must be divisible by n_groups, got "
                             f"dim={dim}, n_heads={n_heads}, n_groups={n_groups}")
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        if kernel_size is None:
            kernel_size = max(3, stride + 1 if stride % 2 == 0 else stride)
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if use_rpb and q_size is None:
            raise ValueError("use_rpb=True needs q_size=(H_max, W_max), the size of the "
                             "largest feature map the position bias covers")
        self.dim = dim
        self.n_heads = n_heads
        self.n_groups = n_groups
        self.stride = stride
        self.offset_range_factor = float(offset_range_factor)
        self.kernel_size = kernel_size
        self.use_rpb = use_rpb
        self.q_size = _pair(q_size) if q_size is not None else None
        self.head_channels = dim // n_heads
        self.group_channels = dim // n_groups
        self.scale = self.head_channels ** -0.5

        gc = self.group_channels
        self.conv_offset = nn.Sequential(
            nn.Conv2d(gc, gc, kernel_size, stride, kernel_size // 2, groups=gc),
            _ChannelLayerNorm(gc),
            nn.GELU(),
            nn.Conv2d(gc, 2, 1, bias=False),
        )
        self.proj_q = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.proj_k = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.proj_v = nn.Conv2d(dim, dim, 1, bias=qkv_bias)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)
        if use_rpb:
            hm, wm = self.q_size
            self.rpe_table = nn.Parameter(torch.empty(n_heads, 2 * hm - 1, 2 * wm - 1))
            nn.init.trunc_normal_(self.rpe_table, std=0.01)
        else:
            self.register_parameter("rpe_table", None)

    @staticmethod
    def reference_grid(Hk: int, Wk: int, dtype, device) -> Tensor:
        """(Hk, Wk, 2) cell centres (x, y) = ((j + 0.5) / Wk, (i + 0.5) / Hk)."""
        ys = (torch.arange(Hk, dtype=dtype, device=device) + 0.5) / Hk
        xs = (torch.arange(Wk, dtype=dtype, device=device) + 0.5) / Wk
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([gx, gy], dim=-1)

    def _sample(self, x: Tensor, positions: Tensor) -> Tensor:
        """x (B, C, H, W) sampled at positions (B, G, Hk, Wk, 2) -> (B, C, Hk, Wk)."""
        B, C, H, W = x.shape
        G, gc = self.n_groups, self.group_channels
        _, _, Hk, Wk, _ = positions.shape
        value = x.reshape(B, G, gc, H * W).permute(0, 3, 1, 2)  # (B, HW, G, gc)
        locations = positions.reshape(B, G, Hk * Wk, 2).permute(0, 2, 1, 3)[:, :, :, None, None]
        weights = positions.new_ones(B, Hk * Wk, G, 1, 1)
        out = ms_deform_attn(value, [(H, W)], [0], locations, weights, align_corners=True)
        return out.transpose(1, 2).reshape(B, C, Hk, Wk)  # channel g*gc + c

    def _position_bias(self, positions: Tensor, H: int, W: int) -> Tensor:
        """(B, n_heads, H*W, Ns) bias: the table read at query pixel - key pixel."""
        B, G, Hk, Wk, _ = positions.shape
        Ns = Hk * Wk
        hm, wm = self.q_size
        th, tw = 2 * hm - 1, 2 * wm - 1
        dtype, device = positions.dtype, positions.device
        qy = torch.arange(H, dtype=dtype, device=device)
        qx = torch.arange(W, dtype=dtype, device=device)
        qy, qx = torch.meshgrid(qy, qx, indexing="ij")
        q = torch.stack([qx, qy], dim=-1).reshape(1, 1, H * W, 1, 2)
        k = positions.reshape(B, G, 1, Ns, 2) * positions.new_tensor([W - 1, H - 1])
        # Table pixel of the displacement, then align_corners=True normalisation.
        t = (q - k) + positions.new_tensor([wm - 1, hm - 1])
        t = t / positions.new_tensor([max(tw - 1, 1), max(th - 1, 1)])  # (B, G, HW, Ns, 2)
        heads_per_group = self.n_heads // G
        # Table as value: (1, th*tw, G, heads per group); head g*hpg + j.
        table = self.rpe_table.reshape(self.n_heads, th * tw).t()
        table = table.reshape(1, th * tw, G, heads_per_group)
        locations = t.permute(0, 2, 3, 1, 4).reshape(1, B * H * W * Ns, G, 1, 1, 2)
        weights = t.new_ones(1, B * H * W * Ns, G, 1, 1)
        bias = ms_deform_attn(table.to(dtype), [(th, tw)], [0], locations, weights,
                              align_corners=True)  # (1, B*HW*Ns, n_heads)
        return bias.reshape(B, H * W, Ns, self.n_heads).permute(0, 3, 1, 2)

    def forward(self, x: Tensor, return_positions: bool = False):
        B, C, H, W = x.shape
        G, gc, nh, hc = self.n_groups, self.group_channels, self.n_heads, self.head_channels

        q = self.proj_q(x)
        offsets = self.conv_offset(q.reshape(B * G, gc, H, W))  # (B*G, 2, Hk, Wk)
        Hk, Wk = offsets.shape[-2:]
        offsets = offsets.permute(0, 2, 3, 1).reshape(B, G, Hk, Wk, 2)
        if self.offset_range_factor > 0:
            cell = offsets.new_tensor([1.0 / Wk, 1.0 / Hk])
            offsets = offsets.tanh() * (cell * self.offset_range_factor)
        reference = self.reference_grid(Hk, Wk, x.dtype, x.device)
        positions = reference + offsets  # (B, G, Hk, Wk, 2)

        sampled = self._sample(x, positions)  # (B, C, Hk, Wk)
        Ns = Hk * Wk
        k = self.proj_k(sampled).reshape(B, nh, hc, Ns).transpose(-1, -2)  # (B, nh, Ns, hc)
        v = self.proj_v(sampled).reshape(B, nh, hc, Ns).transpose(-1, -2)
        qh = q.reshape(B, nh, hc, H * W).transpose(-1, -2)  # (B, nh, HW, hc)

        bias = self._position_bias(positions, H, W) if self.use_rpb else None
        out = F.scaled_dot_product_attention(
            qh, k, v, attn_mask=bias, dropout_p=self.attn_drop if self.training else 0.0,
            scale=self.scale)  # (B, nh, HW, hc)
        out = out.transpose(-1, -2).reshape(B, C, H, W)
        y = self.proj_drop(self.proj_out(out))
        if return_positions:
            return y, positions, reference
        return y

    def extra_repr(self) -> str:
        return (f"dim={self.dim}, n_heads={self.n_heads}, n_groups={self.n_groups}, "
                f"stride={self.stride}, offset_range_factor={self.offset_range_factor}, "
                f"kernel_size={self.kernel_size}, use_rpb={self.use_rpb}, q_size={self.q_size}")


# The name the DAT paper's code gives its module.
DAttention = DeformableAttention2d
