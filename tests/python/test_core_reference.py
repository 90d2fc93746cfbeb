"""Checks of the float64 NumPy reference itself (python/msdacore/reference.py).

These need neither the C++ extension nor torch: the reference is checked by hand
examples and float64 finite differences, and, where torch is installed, against
torch.nn.functional.grid_sample.
"""

from __future__ import annotations

import numpy as np
import pytest
from strategies import (
    central_difference,
    level_start_index,
    load_reference,
    make_locations,
    move_off_integers,
)

ref = load_reference()


def _random_problem(rng, N, levels, M, D, P, Lq, align_corners, off_integers=True):
    S = sum(h * w for h, w in levels)
    value = rng.standard_normal((N, S, M, D))
    loc = make_locations(rng, N, Lq, M, levels, P, align_corners)
    if off_integers:
        move_off_integers(loc, levels, align_corners, rng)
    attn = rng.uniform(-0.5, 1.0, size=(N, Lq, M, len(levels), P))
    grad_output = rng.standard_normal((N, Lq, M * D))
    shapes = np.asarray(levels, dtype=np.int64)
    return value, shapes, level_start_index(levels), loc, attn, grad_output


# ---------------------------------------------------------------------------
# Hand examples


def test_pixel_centres_return_the_values():
    H, W = 2, 3
    value = np.arange(H * W * 2, dtype=np.float64).reshape(1, H * W, 1, 2)
    locs = [((j + 0.5) / W, (i + 0.5) / H) for i in range(H) for j in range(W)]
    loc = np.array(locs).reshape(1, H * W, 1, 1, 1, 2)
    attn = np.ones((1, H * W, 1, 1, 1))
    out = ref.ms_deform_attn(value, [[H, W]], [0], loc, attn)
    np.testing.assert_allclose(out.reshape(H * W, 2), value.reshape(H * W, 2), rtol=0, atol=1e-14)


def test_align_corners_corners_and_midpoints():
    H, W = 2, 2
    v = np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 4, 1, 1)  # v(0,0)=1 v(0,1)=2 v(1,0)=3 v(1,1)=4
    loc = np.array([[0, 0], [1, 0], [0, 1], [1, 1], [0.5, 0.5], [0.5, 0.0]], dtype=np.float64)
    loc = loc.reshape(1, 6, 1, 1, 1, 2)
    attn = np.full((1, 6, 1, 1, 1), 2.0)
    out = ref.ms_deform_attn(v, [[H, W]], [0], loc, attn, align_corners=True)
    np.testing.assert_allclose(out.ravel(), 2.0 * np.array([1, 2, 3, 4, 2.5, 1.5]), rtol=0,
                               atol=1e-14)


def test_zero_padding_and_skip_rule():
    # One 1x1 level holding 8; align_corners=False: h = y - 0.5, w = x - 0.5.
    value = np.full((1, 1, 1, 1), 8.0)
    pts = [
        (0.5, 0.5, 8.0),  # centre
        (0.0, 0.5, 4.0),  # w = -0.5: half of it from the zero padding
        (0.0, 0.0, 2.0),  # h = w = -0.5
        (1.25, 0.5, 2.0),  # w = 0.75
        (-0.5, 0.5, 0.0),  # w = -1: skipped (not -1 < w)
        (1.5, 0.5, 0.0),  # w = 1 = W: skipped
        (np.nan, 0.5, 0.0),
        (0.5, np.inf, 0.0),
        (-np.inf, 0.5, 0.0),
    ]
    loc = np.array([p[:2] for p in pts]).reshape(1, len(pts), 1, 1, 1, 2)
    attn = np.ones((1, len(pts), 1, 1, 1))
    out = ref.ms_deform_attn(value, [[1, 1]], [0], loc, attn)
    np.testing.assert_array_equal(out.ravel(), [p[2] for p in pts])
    gv, gl, ga = ref.ms_deform_attn_backward(value, [[1, 1]], [0], loc, attn,
                                             np.ones((1, len(pts), 1)))
    assert np.all(np.isfinite(gv)) and np.all(np.isfinite(gl)) and np.all(np.isfinite(ga))
    np.testing.assert_array_equal(gl[0, 4:], 0.0)
    np.testing.assert_array_equal(ga[0, 4:], 0.0)
    # centre: h = w = 0, cell (0, 0) chosen by floor, so dB/dw = -v00 + v01 = -8
    # (one-sided, v01 is padding) and grad = A * W * dB/dw.
    np.testing.assert_array_equal(gl[0, 0, 0, 0, 0], [-8.0, -8.0])


def test_skipped_samples_ignore_nonfinite_weights():
    value = np.ones((1, 4, 1, 1))
    loc = np.array([np.nan, 0.5, 2.0, 0.5]).reshape(1, 2, 1, 1, 1, 2)
    attn = np.array([np.nan, np.inf]).reshape(1, 2, 1, 1, 1)
    out = ref.ms_deform_attn(value, [[2, 2]], [0], loc, attn)
    np.testing.assert_array_equal(out, 0.0)


def test_empty_batch_and_queries():
    rng = np.random.default_rng(0)
    for N, Lq in ((0, 5), (2, 0), (0, 0)):
        value, shapes, starts, loc, attn, go = _random_problem(rng, N, [(3, 2), (1, 1)], 2, 3, 2,
                                                               Lq, False)
        out = ref.ms_deform_attn(value, shapes, starts, loc, attn)
        assert out.shape == (N, Lq, 6) and out.dtype == np.float64
        gv, gl, ga = ref.ms_deform_attn_backward(value, shapes, starts, loc, attn, go)
        assert gv.shape == value.shape and gl.shape == loc.shape and ga.shape == attn.shape
        np.testing.assert_array_equal(gv, 0.0)


def test_inputs_not_modified_and_float32_accepted():
    rng = np.random.default_rng(1)
    args = _random_problem(rng, 2, [(4, 3), (2, 5)], 2, 5, 3, 7, False)
    args32 = [a.astype(np.float32) if a.dtype == np.float64 else a for a in args]
    saved = [a.copy() for a in args32]
    out = ref.ms_deform_attn(*args32[:5])
    grads = ref.ms_deform_attn_backward(*args32)
    assert out.dtype == np.float64 and all(g.dtype == np.float64 for g in grads)
    for a, b in zip(args32, saved):
        np.testing.assert_array_equal(a, b)
    out64 = ref.ms_deform_attn(*[np.asarray(a, np.float64) for a in args32[:5]])
    np.testing.assert_array_equal(out, out64)


# ---------------------------------------------------------------------------
# Finite differences (float64)

FD_LEVELS = [(3, 4), (2, 2), (1, 5), (4, 1)]


def _loss(value, shapes, starts, loc, attn, go, align_corners):
    return float(np.sum(ref.ms_deform_attn(value, shapes, starts, loc, attn, align_corners) * go))


@pytest.mark.parametrize("align_corners", [False, True])
def test_finite_differences(align_corners):
    rng = np.random.default_rng(7 + align_corners)
    value, shapes, starts, loc, attn, go = _random_problem(
        rng, 2, FD_LEVELS, 2, 3, 2, 4, align_corners)
    gv, gl, ga = ref.ms_deform_attn_backward(value, shapes, starts, loc, attn, go, align_corners)
    f = lambda: _loss(value, shapes, starts, loc, attn, go, align_corners)  # noqa: E731

    # Points moved at least 1e-2 pixel off integers; a 1e-6 step moves them at most
    # 5e-6 pixel, inside one cell, where the loss is linear in each coordinate.
    for name, x, analytic, step in (("value", value, gv, 1e-3),
                                    ("attention_weights", attn, ga, 1e-3),
                                    ("sampling_locations", loc, gl, 1e-6)):
        numeric = np.zeros_like(x)
        for index in np.ndindex(x.shape):
            numeric[index] = central_difference(f, x, index, step)
        scale = np.max(np.abs(analytic))
        assert scale > 0, name
        err = np.max(np.abs(numeric - analytic)) / scale
        assert err < 1e-7, f"{name}: finite-difference relative error {err:.2e}"


# ---------------------------------------------------------------------------
# torch.nn.functional.grid_sample


def _grid_sample_composition(torch, value, shapes, loc, attn, align_corners):
    """out (N, Lq, M*D) from one grid_sample per level; all inputs float64 tensors."""
    import torch.nn.functional as F

    N, S, M, D = value.shape
    _, Lq, _, L, P, _ = loc.shape
    total = torch.zeros((N * M, D, Lq), dtype=value.dtype)
    start = 0
    for l, (H, W) in enumerate(shapes):
        v = value[:, start:start + H * W].permute(0, 2, 3, 1).reshape(N * M, D, H, W)
        start += H * W
        grid = 2 * loc[:, :, :, l].permute(0, 2, 1, 3, 4).reshape(N * M, Lq, P, 2) - 1
        sampled = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros",
                                align_corners=align_corners)  # (N*M, D, Lq, P)
        a = attn[:, :, :, l].permute(0, 2, 1, 3).reshape(N * M, 1, Lq, P)
        total = total + (sampled * a).sum(-1)
    return total.reshape(N, M * D, Lq).transpose(1, 2).contiguous()


def _torch_available():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.skipif(not _torch_available(), reason="torch is not installed")
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_torch_grid_sample(align_corners, seed):
    import torch

    rng = np.random.default_rng(100 + seed)
    levels = [(5, 7), (1, 1), (3, 1), (1, 4), (6, 6)]
    value, shapes, starts, loc, attn, go = _random_problem(
        rng, 2, levels, 3, 5, 3, 11, align_corners, off_integers=False)
    # Keep clear of the h = -1 / w = -1 boundaries, where grid_sample and SPEC may
    # legitimately differ (measure zero, but keep the check honest).
    h_scale = np.array([h - 1 if align_corners else h for h, _ in levels], dtype=np.float64)
    w_scale = np.array([w - 1 if align_corners else w for _, w in levels], dtype=np.float64)
    for axis, scale in ((1, h_scale), (0, w_scale)):
        offset = 0.0 if align_corners else 0.5
        pix = loc[..., axis] * scale[:, None] - offset
        assert not np.any(np.abs(pix + 1) < 1e-9)

    out = ref.ms_deform_attn(value, shapes, starts, loc, attn, align_corners)
    gv, gl, ga = ref.ms_deform_attn_backward(value, shapes, starts, loc, attn, go, align_corners)

    tv = torch.tensor(value, requires_grad=True)
    tl = torch.tensor(loc, requires_grad=True)
    ta = torch.tensor(attn, requires_grad=True)
    tout = _grid_sample_composition(torch, tv, levels, tl, ta, align_corners)
    tout.backward(torch.tensor(go))

    for name, mine, theirs in (("output", out, tout.detach().numpy()),
                               ("grad_value", gv, tv.grad.numpy()),
                               ("grad_sampling_locations", gl, tl.grad.numpy()),
                               ("grad_attention_weights", ga, ta.grad.numpy())):
        scale = np.max(np.abs(theirs))
        assert scale > 0, name
        err = np.max(np.abs(mine - theirs)) / scale
        assert err < 1e-12, f"{name}: relative error against grid_sample {err:.2e}"
