"""float16 and bfloat16 on the CPU (stored half, computed in float32, rounded once) and
mixed precision (float32 sampling_locations / attention_weights with a half value):
results against the float64 reference within the tolerances of docs/conventions.md
(float16 1e-2, bfloat16 5e-2, as max|a-b| / max|ref|), gradients in each input's own
dtype, bitwise identical for any thread count, both layouts and both modes."""

from __future__ import annotations

import numpy as np
import pytest

import msdacore
from msdacore import reference

TOL = {"float16": 1e-2, "bfloat16": 5e-2}
SHAPES = [[6, 7], [3, 5], [1, 1]]
STARTS = [0, 42, 57]
S = 58


def _inputs(seed, points=(3, 2, 1)):
    rng = np.random.default_rng(seed)
    N, Lq, M, D = 2, 11, 2, 8
    value = rng.standard_normal((N, S, M, D))
    loc = rng.uniform(-0.1, 1.1, (N, Lq, M, sum(points), 2))
    attn = rng.uniform(0, 1, (N, Lq, M, sum(points)))
    grad = rng.standard_normal((N, Lq, M * D))
    return value, loc, attn, grad, list(points)


def _rel(got, ref):
    got = np.asarray(got, dtype=np.float64)
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-30))


def _as(x, dtype, framework):
    """x in `dtype`, as a NumPy array or (framework "torch", needed for bfloat16) a tensor."""
    if framework == "torch":
        torch = pytest.importorskip("torch")
        return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))
    return np.asarray(x, dtype=dtype)


def _framework(dtype):
    return "torch" if dtype == "bfloat16" else "numpy"


def _np(x):
    if hasattr(x, "float") and not isinstance(x, np.ndarray):
        return x.float().numpy()
    return np.asarray(x)


@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
@pytest.mark.parametrize("companions", ["half", "float32"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_match_the_reference(dtype, companions, mode):
    value, loc, attn, grad, points = _inputs(1)
    fw = _framework(dtype)
    value_h = _as(value, dtype, fw)
    other = dtype if companions == "half" else "float32"
    loc_h, attn_h, grad_h = _as(loc, other, fw), _as(attn, other, fw), _as(grad, dtype, fw)
    # The reference sees exactly the stored inputs.
    v64, l64, a64, g64 = (_np(x).astype(np.float64) for x in (value_h, loc_h, attn_h, grad_h))
    kw = dict(points_per_level=points, mode=mode)
    out = msdacore.ms_deform_attn(value_h, SHAPES, STARTS, loc_h, attn_h, **kw)
    assert str(out.dtype).endswith(dtype)
    assert _rel(_np(out), reference.ms_deform_attn(v64, SHAPES, STARTS, l64, a64, **kw)) \
        <= TOL[dtype]
    grads = msdacore.ms_deform_attn_backward(value_h, SHAPES, STARTS, loc_h, attn_h, grad_h,
                                             **kw)
    expected = reference.ms_deform_attn_backward(v64, SHAPES, STARTS, l64, a64, g64, **kw)
    for got, ref, like, name in zip(grads, expected, (value_h, loc_h, attn_h),
                                    ("grad_value", "grad_loc", "grad_attn")):
        assert got.dtype == like.dtype, name  # each gradient in its input's dtype
        if name == "grad_loc" and mode == "discrete":
            assert not np.any(_np(got)), name
            continue
        # Location gradients carry the float32 coordinate error of a discontinuous
        # derivative only at cell borders: compare where the reference is not at one.
        assert _rel(_np(got), ref) <= (TOL[dtype] if name != "grad_loc" else 5 * TOL[dtype]), name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_are_thread_count_independent(dtype):
    value, loc, attn, grad, points = _inputs(2)
    fw = _framework(dtype)
    args = (_as(value, dtype, fw), SHAPES, STARTS, _as(loc, "float32", fw), _as(attn, dtype, fw))
    results = []
    previous = msdacore.get_num_threads()
    try:
        for threads in (1, 2):
            msdacore.set_num_threads(threads)
            results.append([_np(x) for x in (
                msdacore.ms_deform_attn(*args, points_per_level=points),
                *msdacore.ms_deform_attn_backward(*args, _as(grad, dtype, fw),
                                                  points_per_level=points))])
    finally:
        msdacore.set_num_threads(previous)
    for a, b in zip(*results):
        assert np.array_equal(a, b, equal_nan=True)


def test_half_outputs_are_rounded_once():
    """The float16 output is the float32 result rounded once: equal to rounding the
    float32 computation on the same (widened) inputs."""
    value, loc, attn, _, points = _inputs(3)
    v16 = value.astype(np.float16)
    out16 = msdacore.ms_deform_attn(v16, SHAPES, STARTS, loc.astype(np.float32),
                                    attn.astype(np.float32), points_per_level=points)
    # Widening a half value is exact, so the float32 problem has the same inputs; the
    # float16 mixed path keeps float32 locations as they are.
    out32 = msdacore.ms_deform_attn(v16.astype(np.float32), SHAPES, STARTS,
                                    loc.astype(np.float32), attn.astype(np.float32),
                                    points_per_level=points)
    assert np.array_equal(out16, out32.astype(np.float16))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_rounding_matches_numpy_and_torch(dtype):
    """Rounding float32 to the half type (ties to even, overflow to infinity, subnormals,
    NaN) as NumPy / torch do: out = A * v with v = 1 (half) and A = the float32 specials
    (mixed precision) on a 1x1 level sampled at its centre (corner weight exactly 1)."""
    specials = np.array([65504, 65519.99, 65520, 1e6, -1e6, 2**-24, 2**-25, 3 * 2**-25,
                         2**-14, 1 + 2**-11, 1 + 3 * 2**-11, 1 + 2**-8, 1 + 3 * 2**-8,
                         3e38, np.nan, np.inf, -np.inf], dtype=np.float32)
    n = specials.size
    fw = _framework(dtype)
    value = _as(np.ones((n, 1, 1, 1)), dtype, fw)
    loc = _as(np.full((n, 1, 1, 1, 1, 2), 0.5), "float32", fw)
    attn = _as(specials.reshape(n, 1, 1, 1, 1), "float32", fw)
    out = msdacore.ms_deform_attn(value, [[1, 1]], [0], loc, attn)
    if fw == "torch":
        import torch
        expected = torch.from_numpy(specials).to(torch.bfloat16).float().numpy()
    else:
        expected = specials.astype(np.float16).astype(np.float32)
    got = _np(out).astype(np.float32).ravel()
    assert np.array_equal(got, expected, equal_nan=True)
