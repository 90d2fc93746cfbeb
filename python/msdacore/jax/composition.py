"""Multi-scale deformable attention written in plain JAX: the bilinear gather that JAX
models use when they have no kernel (as scenic's Deformable DETR does). It is the baseline
msdacore.jax is benchmarked against (msdacore.bench.jax) and an independent check of its
gradients (JAX differentiates this composition itself). Uniform layout, bilinear mode."""

from __future__ import annotations

import jax.numpy as jnp


def _corner(value_l, H, W, h_index, w_index, weight):
    """weight * value_l at (h_index, w_index), zero outside the level.
    value_l (N, M, H*W, D); indices and weight (N, M, Lq*P) -> (N, M, Lq*P, D)."""
    inside = (h_index >= 0) & (h_index < H) & (w_index >= 0) & (w_index < W)
    token = jnp.clip(h_index, 0, H - 1) * W + jnp.clip(w_index, 0, W - 1)
    sampled = jnp.take_along_axis(value_l, token[..., None], axis=2)
    return sampled * jnp.where(inside, weight, 0)[..., None]


def ms_deform_attn_composition(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights, *, align_corners=False):
    """value (N, S, M, D), sampling_locations (N, Lq, M, L, P, 2), attention_weights
    (N, Lq, M, L, P), all of one float dtype; spatial_shapes (L, 2) and level_start_index
    (L,) static (tuples or NumPy arrays). Returns (N, Lq, M*D), as msdacore.ms_deform_attn
    (docs/conventions.md: zero padding, samples with h or w outside (-1, size) skipped)."""
    N, _, M, D = value.shape
    _, Lq, _, L, P, _ = sampling_locations.shape
    out = jnp.zeros((N, M, Lq * P, D), value.dtype)
    for level in range(L):
        H, W = (int(x) for x in spatial_shapes[level])
        start = int(level_start_index[level])
        value_l = jnp.transpose(value[:, start:start + H * W], (0, 2, 1, 3))  # (N, M, HW, D)
        # (N, Lq, M, P, 2) -> (N, M, Lq*P, 2)
        loc = jnp.transpose(sampling_locations[:, :, :, level], (0, 2, 1, 3, 4))
        loc = loc.reshape(N, M, Lq * P, 2)
        attn = jnp.transpose(attention_weights[:, :, :, level], (0, 2, 1, 3))
        attn = attn.reshape(N, M, Lq * P)
        if align_corners:
            w, h = loc[..., 0] * (W - 1), loc[..., 1] * (H - 1)
        else:
            w, h = loc[..., 0] * W - 0.5, loc[..., 1] * H - 0.5
        sampled = (h > -1) & (h < H) & (w > -1) & (w < W)  # False for NaN too
        a = jnp.where(sampled, attn, 0)
        h, w = jnp.where(sampled, h, -1), jnp.where(sampled, w, -1)  # no NaN past here
        h0, w0 = jnp.floor(h), jnp.floor(w)
        lh, lw = h - h0, w - w0
        hh, hw = 1 - lh, 1 - lw
        h0, w0 = h0.astype(jnp.int32), w0.astype(jnp.int32)
        out = out + (_corner(value_l, H, W, h0, w0, a * hh * hw)
                     + _corner(value_l, H, W, h0, w0 + 1, a * hh * lw)
                     + _corner(value_l, H, W, h0 + 1, w0, a * lh * hw)
                     + _corner(value_l, H, W, h0 + 1, w0 + 1, a * lh * lw))
    out = out.reshape(N, M, Lq, P, D).sum(axis=3)  # (N, M, Lq, D)
    return jnp.transpose(out, (0, 2, 1, 3)).reshape(N, Lq, M * D)
