"""Large tensors: element offsets past 2^31 (and 2^32) are computed in 64 bits.

No 16 GB allocation: value is a NumPy memmap of a sparse temporary file (untouched
pages read as zeros and cost no disk or memory), or an as_strided view of one with a
huge token stride. A few known values are written at offsets past 2^31 elements, the
sampling locations hit exactly those pixels (pixel centres: the bilinear weights are
exactly 1 and 0), and the results must be exactly the written values. A 32-bit offset
would wrap and read one of the zeros elsewhere instead.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import msdacore

GiB = 1 << 30


def _sparse_file(directory, nbytes):
    """A sparse file of nbytes, or pytest.skip with the reason it cannot be made."""
    st = os.statvfs(directory)
    if st.f_bavail * st.f_frsize < 256 << 20:
        pytest.skip(f"{directory} has less than 256 MiB free")
    path = os.path.join(directory, "sparse-value.bin")
    try:
        with open(path, "wb") as f:
            f.truncate(nbytes)
    except OSError as e:
        pytest.skip(f"cannot make a {nbytes >> 30} GiB sparse file in {directory}: {e}")
    if os.stat(path).st_blocks * 512 > 16 << 20:
        os.remove(path)
        pytest.skip(f"the filesystem of {directory} does not support sparse files")
    return path


@pytest.fixture
def sparse_dir(tmp_path):
    yield str(tmp_path)
    for name in os.listdir(tmp_path):
        os.remove(os.path.join(tmp_path, name))


def _pixel_centre(i, size):
    """Normalized coordinate of pixel i's centre (align_corners=False): exact in float32
    for power-of-two sizes."""
    return (i + 0.5) / size


def test_contiguous_value_past_2_31_elements(sparse_dir):
    """value (1, S, 1, 4) float32 with S = 2^30 + 4 tokens: 2^32 + 16 elements (16 GiB,
    sparse). Level 0 is 2^15 x 2^15; level 1 (2 x 2) starts at token 2^30, element 2^32.
    Forward only (grad_value would be 16 GiB)."""
    H = W = 1 << 15
    S = H * W + 4
    D = 4
    path = _sparse_file(sparse_dir, S * D * 4)
    value = np.memmap(path, dtype=np.float32, mode="r+", shape=(1, S, 1, D))
    # Known values at tokens whose element offsets pass 2^31 and 2^32.
    targets = [  # (level, h, w)
        (0, H - 1, W - 1),          # token 2^30 - 1: element ~2^32 - 4
        (0, (3 * H) // 4, 17),      # element ~3 * 2^30
        (0, H // 2 + 1, W // 2),    # element ~2^31 + 2^17 (just past 2^31)
        (1, 1, 0),                  # level 1: tokens 2^30 + 2, element 2^32 + 8
    ]
    levels = [(H, W), (2, 2)]
    starts = [0, H * W]
    for k, (l, h, w) in enumerate(targets):
        token = starts[l] + h * levels[l][1] + w
        value[0, token, 0, :] = np.arange(1, D + 1, dtype=np.float32) * (k + 1) * 1.5
        assert token * D >= 2**31
    Lq, L, P = len(targets), 2, 1
    loc = np.full((1, Lq, 1, L, P, 2), -5.0, np.float32)  # other level: skipped
    attn = np.zeros((1, Lq, 1, L, P), np.float32)
    for q, (l, h, w) in enumerate(targets):
        Hl, Wl = levels[l]
        loc[0, q, 0, l, 0] = (_pixel_centre(w, Wl), _pixel_centre(h, Hl))
        attn[0, q, 0, l, 0] = 2.0
    spatial_shapes = np.array(levels, np.int64)
    level_start_index = np.array(starts, np.int64)

    out = msdacore.ms_deform_attn(value, spatial_shapes, level_start_index, loc, attn)
    expected = np.stack([2.0 * np.arange(1, D + 1) * (k + 1) * 1.5
                         for k in range(len(targets))]).astype(np.float32)
    np.testing.assert_array_equal(out[0], expected)
    del value


def test_strided_value_offsets_past_2_32_forward_and_backward(sparse_dir):
    """value (2, 64, 2, 3) float64 as an as_strided view of a sparse file: token stride
    2^26 elements, batch stride 2^32 + 8, head stride 5, channel stride -1 (negative), so
    element offsets reach ~2^33. grad_value is small (2*64*2*3): the backward is
    checked too, exactly."""
    N, Hl, Wl, M, D = 2, 8, 8, 2, 3
    S = Hl * Wl
    token_stride = 1 << 26
    batch_stride = (1 << 32) + 8
    head_stride = 5
    span = (N - 1) * batch_stride + (S - 1) * token_stride + (M - 1) * head_stride + D
    path = _sparse_file(sparse_dir, span * 8)
    base = np.memmap(path, dtype=np.float64, mode="r+", shape=(span,))
    # Element (n, s, m, d) at n*batch_stride + s*token_stride + m*head_stride + (D-1-d).
    value = np.lib.stride_tricks.as_strided(
        base[D - 1:], shape=(N, S, M, D),
        strides=(8 * batch_stride, 8 * token_stride, 8 * head_stride, -8))
    picks = [(0, 6, 5, 1), (1, 7, 7, 0), (1, 3, 2, 1), (0, 0, 0, 0)]  # (n, h, w, m)
    for k, (n, h, w, m) in enumerate(picks):
        value[n, h * Wl + w, m, :] = [10.0 * (k + 1) + d for d in range(D)]
    assert max(n * batch_stride + (h * Wl + w) * token_stride for n, h, w, _ in picks) > 2**32

    Lq, L, P = 2, 1, 1
    loc = np.full((N, Lq, M, L, P, 2), 7.0)  # skipped unless set below
    attn = np.zeros((N, Lq, M, L, P))
    for k, (n, h, w, m) in enumerate(picks):
        q = k % Lq
        loc[n, q, m, 0, 0] = (_pixel_centre(w, Wl), _pixel_centre(h, Hl))
        attn[n, q, m, 0, 0] = 0.5 + k
    shapes, starts = np.array([[Hl, Wl]]), np.array([0])
    out = msdacore.ms_deform_attn(value, shapes, starts, loc, attn)
    expected = np.zeros((N, Lq, M * D))
    for k, (n, _h, _w, m) in enumerate(picks):
        expected[n, k % Lq, m * D:(m + 1) * D] = (0.5 + k) * (10.0 * (k + 1) + np.arange(D))
    np.testing.assert_array_equal(out, expected)

    grad_output = np.arange(1.0, 1.0 + N * Lq * M * D).reshape(N, Lq, M * D)
    gv, gl, ga = msdacore.ms_deform_attn_backward(value, shapes, starts, loc, attn, grad_output)
    exp_gv = np.zeros((N, S, M, D))
    exp_gl = np.zeros((N, Lq, M, L, P, 2))
    exp_ga = np.zeros((N, Lq, M, L, P))
    for k, (n, h, w, m) in enumerate(picks):
        q = k % Lq
        g = grad_output[n, q, m * D:(m + 1) * D]
        v = 10.0 * (k + 1) + np.arange(D)
        A = 0.5 + k
        exp_gv[n, h * Wl + w, m] = A * g
        exp_ga[n, q, m, 0, 0] = g @ v
        # At a pixel centre lh = lw = 0: dB/dw = v(h, w+1) - v(h, w), dB/dh = v(h+1, w) -
        # v(h, w); the neighbours are zeros (untouched pages) or outside the level.
        exp_gl[n, q, m, 0, 0] = (A * Wl * -(g @ v), A * Hl * -(g @ v))
    np.testing.assert_array_equal(gv, exp_gv)
    np.testing.assert_array_equal(ga, exp_ga)
    np.testing.assert_array_equal(gl, exp_gl)
    del value, base
