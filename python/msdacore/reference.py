"""Plain float64 NumPy reference of multi-scale deformable attention.

Written directly from the operator contract (docs/conventions.md), independently of the C++
kernels, so that tests and the demo can check the library against it. Needs only
NumPy. Every input is converted to float64 (index arrays to int64) and every
result is float64, whatever the input dtype.

Shapes (see docs/conventions.md):

    value               (N, S, M, D)            float
    spatial_shapes      (L, 2) rows (H_l, W_l)  int, each >= 1
    level_start_index   (L,)                    int, prefix sums of H_l*W_l
    sampling_locations  (N, Lq, M, L, P, 2)     float, last axis (x, y) in [0, 1]
    attention_weights   (N, Lq, M, L, P)        float (not assumed normalized)
    output / grad_output (N, Lq, M*D)           float

Points per level (points_per_level=[P_0, ..., P_{L-1}], each >= 1, P_total = sum): the
flattened layout of the RT-DETRv2 family,

    sampling_locations  (N, Lq, M, P_total, 2)  level l's points at offsets sum_{j<l} P_j ..
    attention_weights   (N, Lq, M, P_total)

and gradients come back in the layout given. points_per_level=None is the uniform layout
above; [P] * L on the same data gives the same numbers.

Sampling modes: mode="bilinear" (default) interpolates with zero padding; mode="discrete"
(RT-DETRv2's deployment variant) reads the nearest pixel with border clamping,

    i = clamp(floor(y*H_l + 0.5), 0, H_l - 1),  j = clamp(floor(x*W_l + 0.5), 0, W_l - 1)

and skips samples with a NaN or infinite coordinate; its location gradient is zero and
align_corners=True is an error with it.

The work is vectorised per level: temporaries hold N*Lq*M*P_l*D float64 numbers,
which is fine for test sizes and for a subset of queries of real sizes.
"""

from __future__ import annotations

import operator

import numpy as np

__all__ = ["ms_deform_attn", "ms_deform_attn_backward", "MODES"]

MODES = ("bilinear", "discrete")


def _check_mode(mode, align_corners):
    if not isinstance(mode, str) or mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "discrete" and align_corners:
        raise ValueError("align_corners=True does not apply to mode='discrete' "
                         "(set align_corners=False)")


def _point_counts(points_per_level, L):
    """points_per_level as a list of L ints >= 1."""
    try:
        counts = [operator.index(p) for p in points_per_level]
    except TypeError:
        raise TypeError(
            f"points_per_level must be a sequence of ints, got {points_per_level!r}"
        ) from None
    if len(counts) != L:
        raise ValueError(f"points_per_level must have L = {L} entries (one per level), "
                         f"got {len(counts)}: {counts}")
    if any(p < 1 for p in counts):
        raise ValueError(f"points_per_level must be >= 1 each, got {counts}")
    return counts


def _prepare(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
             points_per_level, mode, align_corners):
    """Convert the inputs and check the shapes the reference relies on.

    Returns value, shapes, starts, loc, attn, levels where loc (N, Lq, M, P_total, 2) and
    attn (N, Lq, M, P_total) are in the flattened layout (a reshape of the uniform one)
    and levels lists (H, W, token start, first point, point count) per level."""
    _check_mode(mode, align_corners)
    value = np.asarray(value, dtype=np.float64)
    shapes = np.asarray(spatial_shapes, dtype=np.int64)
    starts = np.asarray(level_start_index, dtype=np.int64)
    loc = np.asarray(sampling_locations, dtype=np.float64)
    attn = np.asarray(attention_weights, dtype=np.float64)

    if value.ndim != 4:
        raise ValueError(f"value must have shape (N, S, M, D), got {value.shape}")
    N, S, M, D = value.shape
    if shapes.ndim != 2 or shapes.shape[1] != 2:
        raise ValueError(f"spatial_shapes must have shape (L, 2), got {shapes.shape}")
    L = shapes.shape[0]
    if starts.shape != (L,):
        raise ValueError(f"level_start_index must have shape (L,) = ({L},), got {starts.shape}")

    if points_per_level is None:  # uniform layout
        if (loc.ndim != 6 or loc.shape[0] != N or loc.shape[2] != M or loc.shape[3] != L
                or loc.shape[5] != 2):
            raise ValueError(
                f"sampling_locations must have shape (N, Lq, M, L, P, 2) with N={N}, M={M}, "
                f"L={L}, got {loc.shape}")
        Lq, P = loc.shape[1], loc.shape[4]
        if attn.shape != (N, Lq, M, L, P):
            raise ValueError(f"attention_weights must have shape (N, Lq, M, L, P) = "
                             f"{(N, Lq, M, L, P)}, got {attn.shape}")
        counts = [P] * L
        loc = loc.reshape(N, Lq, M, L * P, 2)
        attn = attn.reshape(N, Lq, M, L * P)
    else:  # flattened layout
        counts = _point_counts(points_per_level, L)
        P_total = sum(counts)
        if (loc.ndim != 5 or loc.shape[0] != N or loc.shape[2] != M or loc.shape[3] != P_total
                or loc.shape[4] != 2):
            raise ValueError(
                f"sampling_locations must have shape (N, Lq, M, P_total, 2) with N={N}, M={M}, "
                f"P_total={P_total} (sum of points_per_level {counts}), got {loc.shape}")
        Lq = loc.shape[1]
        if attn.shape != (N, Lq, M, P_total):
            raise ValueError(f"attention_weights must have shape (N, Lq, M, P_total) = "
                             f"{(N, Lq, M, P_total)}, got {attn.shape}")

    if np.any(shapes < 1):
        raise ValueError(f"spatial_shapes must be >= 1, got {shapes.tolist()}")
    sizes = shapes[:, 0] * shapes[:, 1]
    expected_starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    if not np.array_equal(starts, expected_starts):
        raise ValueError(
            f"level_start_index must be {expected_starts.tolist()}, got {starts.tolist()}"
        )
    if int(sizes.sum()) != S:
        raise ValueError(f"sum of H_l*W_l is {int(sizes.sum())} but value has S={S}")

    levels, first = [], 0
    for l in range(L):
        levels.append((int(shapes[l, 0]), int(shapes[l, 1]), int(starts[l]), first, counts[l]))
        first += counts[l]
    return value, shapes, starts, loc, attn, levels


def _gather(value_l, token):
    """value_l[n, token[n, q, m, p], m, :] as (N, Lq, M, P, D)."""
    N, Lq, M, P = token.shape
    n_idx = np.arange(N, dtype=np.int64).reshape(N, 1, 1, 1)
    m_idx = np.arange(M, dtype=np.int64).reshape(1, 1, M, 1)
    return value_l[n_idx, token, m_idx]


def _sample_level(value_l, H, W, loc_l, align_corners):
    """Bilinear sampling of one level, following docs/conventions.md literally.

    value_l: (N, H*W, M, D) float64; loc_l: (N, Lq, M, P, 2) float64.
    Returns (valid, (hh, hw, lh, lw), corners), where valid and the four weights
    are (N, Lq, M, P) and corners is a list of four (token, weight, v, read) for the
    corners (h0, w0), (h0, w0+1), (h0+1, w0), (h0+1, w0+1): token (N, Lq, M, P)
    int64 clamped into [0, H*W), weight (N, Lq, M, P) float64 already zero for
    out-of-bounds corners and skipped samples, v (N, Lq, M, P, D) float64 (zero
    for out-of-bounds corners and skipped samples), read (N, Lq, M, P) bool: the
    corner is in bounds and its sample kept (only those take part in grad_value).
    """
    x = loc_l[..., 0]
    y = loc_l[..., 1]
    # NaN/Inf coordinates (and Inf*0 for 1-pixel levels with align_corners) must
    # fail the in-range test quietly.
    with np.errstate(invalid="ignore", over="ignore"):
        if align_corners:
            h = y * (H - 1)
            w = x * (W - 1)
        else:
            h = y * H - 0.5
            w = x * W - 0.5
        valid = (h > -1) & (h < H) & (w > -1) & (w < W)
    # Skipped samples get harmless coordinates; their weights are zeroed below.
    h = np.where(valid, h, 0.0)
    w = np.where(valid, w, 0.0)
    h0f = np.floor(h)
    w0f = np.floor(w)
    lh = h - h0f
    lw = w - w0f
    hh = 1.0 - lh
    hw = 1.0 - lw
    h0 = h0f.astype(np.int64)
    w0 = w0f.astype(np.int64)

    corners = []
    for di, dj, cw in ((0, 0, hh * hw), (0, 1, hh * lw), (1, 0, lh * hw), (1, 1, lh * lw)):
        i = h0 + di
        j = w0 + dj
        inside = valid & (i >= 0) & (i < H) & (j >= 0) & (j < W)
        token = np.clip(i, 0, H - 1) * W + np.clip(j, 0, W - 1)
        v = np.where(inside[..., None], _gather(value_l, token), 0.0)  # (N, Lq, M, P, D)
        corners.append((token, np.where(inside, cw, 0.0), v, inside))
    return valid, (hh, hw, lh, lw), corners


def _sample_level_discrete(value_l, H, W, loc_l):
    """Discrete (nearest pixel, border-clamped) sampling of one level.

    Same return convention as _sample_level, with a single "corner" (the pixel read,
    weight 1 for kept samples, 0 for skipped ones) and no interpolation weights."""
    x = loc_l[..., 0]
    y = loc_l[..., 1]
    valid = np.isfinite(x) & np.isfinite(y)
    x = np.where(valid, x, 0.0)
    y = np.where(valid, y, 0.0)
    with np.errstate(over="ignore"):  # |y| near the float64 limit: y*H is infinite, clamped
        # Clamped as floats, before the conversion to integers.
        i = np.clip(np.floor(y * H + 0.5), 0, H - 1).astype(np.int64)
        j = np.clip(np.floor(x * W + 0.5), 0, W - 1).astype(np.int64)
    token = i * W + j
    v = np.where(valid[..., None], _gather(value_l, token), 0.0)
    return valid, None, [(token, np.where(valid, 1.0, 0.0), v, valid)]


def _sample(value_l, H, W, loc_l, align_corners, mode):
    if mode == "discrete":
        return _sample_level_discrete(value_l, H, W, loc_l)
    return _sample_level(value_l, H, W, loc_l, align_corners)


def _combine(corners):
    """B = sum of corner weight * corner value, (N, Lq, M, P, D)."""
    out = None
    for _, cw, v, _ in corners:
        term = cw[..., None] * v
        out = term if out is None else out + term
    return out


# ms_deform_attn
#   value               (N, S, M, D)          float  -> float64
#   spatial_shapes      (L, 2)                int (or list)
#   level_start_index   (L,)                  int (or list)
#   sampling_locations  (N, Lq, M, L, P, 2)   float  -> float64
#                       or (N, Lq, M, P_total, 2) with points_per_level
#   attention_weights   (N, Lq, M, L, P)      float  -> float64
#                       or (N, Lq, M, P_total) with points_per_level
#   points_per_level    None (uniform layout) or L ints >= 1 (flattened layout)
#   mode                "bilinear" or "discrete"
#   returns out         (N, Lq, M*D)          float64
def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, align_corners=False, *, points_per_level=None,
                   mode="bilinear"):
    """Forward: out[n, q, m*D + d] = sum_l sum_p A[n,q,m,l,p] * B_l(n, m, d; h, w)."""
    value, shapes, starts, loc, attn, levels = _prepare(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        points_per_level, mode, align_corners)
    N, S, M, D = value.shape
    Lq = loc.shape[1]
    out = np.zeros((N, Lq, M, D), dtype=np.float64)
    for H, W, start, first, count in levels:
        points = slice(first, first + count)
        value_l = value[:, start:start + H * W]
        valid, _, corners = _sample(value_l, H, W, loc[:, :, :, points], align_corners, mode)
        a = np.where(valid, attn[:, :, :, points], 0.0)  # skipped samples contribute nothing
        out += np.sum(a[..., None] * _combine(corners), axis=3)
    return out.reshape(N, Lq, M * D)


# ms_deform_attn_backward
#   value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
#   points_per_level, mode
#                       as for ms_deform_attn
#   grad_output         (N, Lq, M*D)          float  -> float64
#   returns (grad_value (N, S, M, D), grad_sampling_locations, grad_attention_weights),
#           all float64, the last two in the layout (shape) of sampling_locations and
#           attention_weights
def ms_deform_attn_backward(value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, grad_output, align_corners=False, *,
                            points_per_level=None, mode="bilinear"):
    """Backward of ms_deform_attn for the loss <grad_output, out>."""
    loc_shape = np.shape(sampling_locations)
    attn_shape = np.shape(attention_weights)
    value, shapes, starts, loc, attn, levels = _prepare(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
        points_per_level, mode, align_corners)
    N, S, M, D = value.shape
    Lq = loc.shape[1]
    G = np.asarray(grad_output, dtype=np.float64)
    if G.shape != (N, Lq, M * D):
        raise ValueError(
            f"grad_output must have shape (N, Lq, M*D) = {(N, Lq, M * D)}, got {G.shape}")
    g = G.reshape(N, Lq, M, 1, D)  # broadcast over points

    grad_value = np.zeros_like(value)
    grad_loc = np.zeros_like(loc)  # flattened layout; reshaped to the caller's at the end
    grad_attn = np.zeros_like(attn)
    n_idx = np.arange(N, dtype=np.int64).reshape(N, 1, 1, 1)
    m_idx = np.arange(M, dtype=np.int64).reshape(1, 1, M, 1)

    for H, W, start, first, count in levels:
        points = slice(first, first + count)
        value_l = value[:, start:start + H * W]
        valid, weights, corners = _sample(
            value_l, H, W, loc[:, :, :, points], align_corners, mode)
        a = np.where(valid, attn[:, :, :, points], 0.0)

        # grad_attention_weights = <g, B>
        B = _combine(corners)
        grad_attn[:, :, :, points] = np.where(valid, np.sum(g * B, axis=-1), 0.0)

        # grad_sampling_locations on the cell chosen by floor() (zero in discrete mode)
        if mode == "bilinear":
            hh, hw, lh, lw = weights
            sx, sy = (W - 1, H - 1) if align_corners else (W, H)
            v00, v01, v10, v11 = (c[2] for c in corners)
            dB_dw = (-hh[..., None] * v00 + hh[..., None] * v01
                     - lh[..., None] * v10 + lh[..., None] * v11)
            dB_dh = (-hw[..., None] * v00 - lw[..., None] * v01
                     + hw[..., None] * v10 + lw[..., None] * v11)
            grad_loc[:, :, :, points, 0] = np.where(
                valid, a * sx * np.sum(g * dB_dw, axis=-1), 0.0)
            grad_loc[:, :, :, points, 1] = np.where(
                valid, a * sy * np.sum(g * dB_dh, axis=-1), 0.0)

        # grad_value: every in-bounds corner of every kept sample scatters A * weight * g
        # (a NaN in g reaches exactly those tokens, even where A * weight is 0)
        for token, cw, _, read in corners:
            contrib = np.where(read[..., None], (a * cw)[..., None] * g, 0.0)
            np.add.at(grad_value, (n_idx, start + token, m_idx), contrib)

    return grad_value, grad_loc.reshape(loc_shape), grad_attn.reshape(attn_shape)
