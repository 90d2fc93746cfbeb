"""Points per level (the flattened layout of RT-DETRv2, D-FINE, DEIM) and the sampling
modes ("bilinear", "discrete"), SPEC "Points per level, and the flattened layout" and
"Sampling modes".

Two parts:
- the float64 NumPy reference (python/msdacore/reference.py) against a second,
  independent implementation written here with plain loops straight from SPEC, and
  against itself across the two layouts; these run everywhere;
- msdacore's public API (NumPy and msdacore.torch) against that reference, with SPEC's
  tolerances (max|a-b| / max|ref|: float64 1e-12, float32 5e-5), bit-for-bit equality of
  the layouts and of thread counts, finite differences, torch gradcheck and the errors.
  These are skipped, with the reason, where the installed msdacore does not take
  points_per_level and mode yet.

Comparisons below float64 follow test_core_ops.py: the reference runs on the rounded inputs,
max|ref| is floored at one typical term, the bilinear location gradient is compared only
away from integer pixel coordinates; and since discrete sampling jumps at every rounding
boundary (y*H + 0.5 an integer, i.e. y*H - 0.5 an integer), float32 discrete problems keep
their points farther than MARGIN from one.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import (
    INTEGER_MARGIN,
    LevelSizes,
    assert_close,
    central_difference,
    comparison_floors,
    level_start_index,
    load_reference,
    make_locations,
)

ref = load_reference()

RESULT_NAMES = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
MARGIN = 1e-3  # pixels; float32 coordinates carry about W*eps of error

# ----------------------------------------------------------------------------- the API under test


def _takes_new_arguments(fn):
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "points_per_level" in params and "mode" in params


try:
    import msdacore
except ImportError as error:  # the reference tests run without the extension
    msdacore = None
    _NO_API = f"msdacore cannot be imported ({error})"
else:
    _NO_API = None
    for _fn in (msdacore.ms_deform_attn, msdacore.ms_deform_attn_backward):
        if not _takes_new_arguments(_fn):
            _NO_API = (f"the installed msdacore.{_fn.__name__} does not take points_per_level "
                       "and mode yet")
            break

needs_api = pytest.mark.skipif(_NO_API is not None, reason=_NO_API or "")

try:
    import torch
except ImportError:
    torch = None
_NO_TORCH = None
if torch is None:
    _NO_TORCH = "torch is not installed"
elif _NO_API is not None:
    _NO_TORCH = _NO_API
else:
    import msdacore.torch as mt

    if not _takes_new_arguments(mt.ms_deform_attn):
        _NO_TORCH = "msdacore.torch.ms_deform_attn does not take points_per_level and mode yet"

needs_torch = pytest.mark.skipif(_NO_TORCH is not None, reason=_NO_TORCH or "")


# ----------------------------------------------------------------------------- problems


@dataclass(frozen=True)
class LayoutCase(LevelSizes):
    N: int
    levels: tuple  # ((H, W), ...)
    counts: tuple  # points per level, each >= 1
    uniform: bool  # pass the uniform layout (counts all equal) with points_per_level=None
    M: int
    D: int
    Lq: int
    mode: str
    align_corners: bool
    dtype: type
    seed: int
    special_fraction: float  # borders, integer pixel coordinates (rounding boundaries)
    nonfinite_fraction: float  # NaN / +-inf coordinates
    far_fraction: float  # coordinates far outside: -5, 7, +-1e20

    @property
    def P_total(self):
        return sum(self.counts)

    @property
    def points_per_level(self):
        return None if self.uniform else list(self.counts)


@st.composite
def layout_cases(draw, max_N=2, max_L=4, max_HW=7, max_M=3, max_D=24, max_P=6, max_Lq=8,
                 modes=("bilinear", "discrete"), dtypes=(np.float64, np.float32),
                 uniform=(False, True), min_N=0, min_Lq=0, special=True, equal_counts=False):
    L = draw(st.integers(1, max_L))
    # Small sizes, with 1-pixel axes (and 1x1 levels) well represented.
    side = st.one_of(st.just(1), st.integers(1, max_HW))
    levels = tuple(draw(st.tuples(side, side)) for _ in range(L))
    if equal_counts:
        counts = (draw(st.integers(1, max_P)),) * L
    else:
        counts = tuple(draw(st.lists(st.one_of(st.just(1), st.integers(1, max_P)),
                                     min_size=L, max_size=L)))
    is_uniform = len(set(counts)) == 1 and draw(st.sampled_from(uniform))
    mode = draw(st.sampled_from(modes))
    align_corners = draw(st.booleans()) if mode == "bilinear" else False

    def size(low, high):
        if low == 0 and draw(st.integers(0, 9)) == 9:
            return 0
        return draw(st.integers(max(low, 1), high))

    return LayoutCase(
        N=size(min_N, max_N), levels=levels, counts=counts, uniform=is_uniform,
        M=draw(st.integers(1, max_M)), D=draw(st.integers(1, max_D)), Lq=size(min_Lq, max_Lq),
        mode=mode, align_corners=align_corners, dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**32 - 1)),
        special_fraction=draw(st.sampled_from((0.0, 0.1, 0.3, 1.0))) if special else 0.0,
        nonfinite_fraction=draw(st.sampled_from((0.0, 0.0, 0.05, 0.2))) if special else 0.0,
        far_fraction=draw(st.sampled_from((0.0, 0.05))) if special else 0.0,
    )


def _per_point(levels, counts):
    """(H, W) of every point of the flattened layout, each (P_total,) float64."""
    shapes = np.asarray(levels, dtype=np.float64).reshape(-1, 2)
    return np.repeat(shapes[:, 0], counts), np.repeat(shapes[:, 1], counts)


def pixel_coordinates_flat(loc, levels, counts, align_corners):
    """float64 (h, w), each (N, Lq, M, P_total), of flattened-layout locations, as SPEC
    writes them for bilinear mode (align_corners=False: y*H - 0.5, whose integers are
    also discrete mode's rounding boundaries)."""
    loc = np.asarray(loc, dtype=np.float64)
    H, W = _per_point(levels, counts)
    with np.errstate(invalid="ignore", over="ignore"):
        if align_corners:
            return loc[..., 1] * (H - 1), loc[..., 0] * (W - 1)
        return loc[..., 1] * H - 0.5, loc[..., 0] * W - 0.5


def near_integers_flat(loc, levels, counts, align_corners, margin):
    """(N, Lq, M, P_total) bool: a finite pixel coordinate of moderate size within margin
    of an integer, on an axis that the coordinate moves (not a 1-pixel axis with
    align_corners)."""
    h, w = pixel_coordinates_flat(loc, levels, counts, align_corners)
    H, W = _per_point(levels, counts)
    moves_h = (H > 1) | (not align_corners)
    moves_w = (W > 1) | (not align_corners)
    with np.errstate(invalid="ignore"):
        near_h = (np.abs(h - np.round(h)) <= margin) & (np.abs(h) < 1e6) & moves_h
        near_w = (np.abs(w - np.round(w)) <= margin) & (np.abs(w) < 1e6) & moves_w
    return near_h | near_w


def move_off_integers_flat(loc, levels, counts, align_corners, rng, margin):
    """Redraw, in place, points near integer pixel coordinates (see near_integers_flat)."""
    for _ in range(1000):
        near = near_integers_flat(loc, levels, counts, align_corners, margin)
        if not near.any():
            return loc
        loc[near] = rng.uniform(-0.3, 1.3, size=(int(near.sum()), 2))
    raise RuntimeError("could not move the sampling locations off integer pixel coordinates")


def make_flat_locations(rng, N, Lq, M, levels, counts, align_corners, special_fraction=0.0,
                        nonfinite_fraction=0.0, far_fraction=0.0):
    """(N, Lq, M, P_total, 2) float64: each level's points drawn as strategies.make_locations
    draws them for that level, then a share moved far outside."""
    parts = []
    for (H, W), P in zip(levels, counts):
        part = make_locations(rng, N, Lq, M, [(H, W)], P, align_corners, special_fraction,
                              nonfinite_fraction)
        parts.append(part.reshape(N, Lq, M, P, 2))
    loc = np.concatenate(parts, axis=3)
    if far_fraction > 0:
        mask = rng.random(loc.shape) < far_fraction
        loc[mask] = rng.choice(np.array([-5.0, 7.0, -1e20, 1e20]), int(mask.sum()))
    return loc


def make_layout_inputs(case):
    """float64 arrays in the flattened layout (value, spatial_shapes, level_start_index,
    sampling_locations, attention_weights, grad_output); float32 discrete problems keep
    their points off the rounding boundaries."""
    rng = np.random.default_rng(case.seed)
    N, M, D, Lq = case.N, case.M, case.D, case.Lq
    value = rng.standard_normal((N, case.S, M, D))
    loc = make_flat_locations(rng, N, Lq, M, case.levels, case.counts, case.align_corners,
                              case.special_fraction, case.nonfinite_fraction, case.far_fraction)
    if case.mode == "discrete" and np.dtype(case.dtype) != np.float64:
        move_off_integers_flat(loc, case.levels, case.counts, False, rng, MARGIN)
    attn = rng.uniform(-0.5, 1.0, size=(N, Lq, M, case.P_total))
    grad_output = rng.standard_normal((N, Lq, M * D))
    return dict(value=value, spatial_shapes=np.asarray(case.levels, dtype=np.int64).reshape(-1, 2),
                level_start_index=level_start_index(case.levels), sampling_locations=loc,
                attention_weights=attn, grad_output=grad_output)


def to_uniform(inputs, L):
    """The same data in the uniform layout (counts all equal)."""
    loc, attn = inputs["sampling_locations"], inputs["attention_weights"]
    N, Lq, M, Pt = attn.shape
    return dict(inputs, sampling_locations=loc.reshape(N, Lq, M, L, Pt // L, 2),
                attention_weights=attn.reshape(N, Lq, M, L, Pt // L))


def placed(inputs, case, dtype):
    """Float arrays in dtype, in the case's layout (uniform or flattened)."""
    out = {k: (v.astype(dtype) if v.dtype == np.float64 else v) for k, v in inputs.items()}
    return to_uniform(out, case.L) if case.uniform else out


def as64(inputs):
    return {k: (np.asarray(v, np.float64) if np.asarray(v).dtype.kind == "f" else v)
            for k, v in inputs.items()}


def _args(x):
    return (x["value"], x["spatial_shapes"], x["level_start_index"], x["sampling_locations"],
            x["attention_weights"])


def ref_run(x, points_per_level=None, mode="bilinear", align_corners=False):
    """Reference (output, grad_value, grad_sampling_locations, grad_attention_weights)."""
    out = ref.ms_deform_attn(*_args(x), align_corners, points_per_level=points_per_level,
                             mode=mode)
    grads = ref.ms_deform_attn_backward(*_args(x), x["grad_output"], align_corners,
                                        points_per_level=points_per_level, mode=mode)
    return (out,) + tuple(grads)


def lib_run(x, points_per_level=None, mode="bilinear", align_corners=False, deterministic=False):
    """msdacore (output, grad_value, grad_sampling_locations, grad_attention_weights)."""
    out = msdacore.ms_deform_attn(*_args(x), align_corners=align_corners,
                                  points_per_level=points_per_level, mode=mode)
    grads = msdacore.ms_deform_attn_backward(*_args(x), x["grad_output"],
                                             align_corners=align_corners,
                                             deterministic=deterministic,
                                             points_per_level=points_per_level, mode=mode)
    assert isinstance(grads, tuple) and len(grads) == 3
    return (out,) + tuple(grads)


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return (a.dtype == b.dtype and a.shape == b.shape
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def assert_same_bits(a, b, what):
    for name, x, y in zip(RESULT_NAMES, a, b):
        assert same_bits(x, y), f"{what}: {name} differs"


def assert_matches_reference(results, x, case, dtype):
    """SPEC's tolerance against the reference run on the rounded inputs x (as float64)."""
    x64 = as64(x)
    expected = ref_run(x64, case.points_per_level, case.mode, case.align_corners)
    floors = comparison_floors(x64, dtype)
    keep = None
    if np.dtype(dtype) != np.float64 and case.mode == "bilinear":
        flat = x64["sampling_locations"].reshape(case.N, case.Lq, case.M, case.P_total, 2)
        keep = ~near_integers_flat(flat, case.levels, case.counts, case.align_corners,
                                   INTEGER_MARGIN)
        keep = keep.reshape(x64["attention_weights"].shape)
    shapes = (None, x64["value"].shape, x64["sampling_locations"].shape,
              x64["attention_weights"].shape)
    for name, got, exp, shape in zip(RESULT_NAMES, results, expected, shapes):
        if shape is not None:
            assert np.shape(got) == shape, f"{name}: shape {np.shape(got)}, expected {shape}"
        mask = keep if name == "grad_sampling_locations" else None
        assert_close(got, exp, dtype, name, mask=mask, floor=floors[name])


# ============================================================================= a second reference
# Plain loops over every sample, straight from SPEC, in the flattened layout.


def loop_reference(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, grad_output, counts, mode="bilinear", align_corners=False):
    value = np.asarray(value, np.float64)
    loc = np.asarray(sampling_locations, np.float64)
    attn = np.asarray(attention_weights, np.float64)
    G = np.asarray(grad_output, np.float64)
    N, S, M, D = value.shape
    Lq = loc.shape[1]
    out = np.zeros((N, Lq, M * D))
    grad_value = np.zeros_like(value)
    grad_loc = np.zeros_like(loc)
    grad_attn = np.zeros_like(attn)
    levels = [(int(h), int(w)) for h, w in np.asarray(spatial_shapes).reshape(-1, 2)]
    starts = [int(s) for s in np.asarray(level_start_index).reshape(-1)]
    for n in range(N):
        for q in range(Lq):
            for m in range(M):
                g = G[n, q, m * D:(m + 1) * D]
                p = 0
                for l, (H, W) in enumerate(levels):
                    for _ in range(counts[l]):
                        x, y = (float(c) for c in loc[n, q, m, p])
                        A = float(attn[n, q, m, p])
                        # (token, weight) pairs of the pixels read; None: skipped
                        if mode == "discrete":
                            reads = _discrete_reads(x, y, H, W)
                        else:
                            reads = _bilinear_reads(x, y, H, W, align_corners)
                        if reads is not None:
                            pixels, dw, dh = reads
                            B = np.zeros(D)
                            for (i, j), weight in pixels:
                                if 0 <= i < H and 0 <= j < W:
                                    token = starts[l] + i * W + j
                                    B += weight * value[n, token, m]
                                    grad_value[n, token, m] += A * weight * g
                            out[n, q, m * D:(m + 1) * D] += A * B
                            grad_attn[n, q, m, p] = g @ B
                            if mode == "bilinear":
                                sx, sy = (W - 1, H - 1) if align_corners else (W, H)
                                dB_dw = sum(c * _v(value, n, m, starts[l], H, W, i, j)
                                            for (i, j), c in dw)
                                dB_dh = sum(c * _v(value, n, m, starts[l], H, W, i, j)
                                            for (i, j), c in dh)
                                grad_loc[n, q, m, p, 0] = A * sx * (g @ dB_dw)
                                grad_loc[n, q, m, p, 1] = A * sy * (g @ dB_dh)
                        p += 1
    return out, grad_value, grad_loc, grad_attn


def _v(value, n, m, start, H, W, i, j):
    if 0 <= i < H and 0 <= j < W:
        return value[n, start + i * W + j, m]
    return np.zeros(value.shape[-1])


def _bilinear_reads(x, y, H, W, align_corners):
    if align_corners:
        h, w = y * (H - 1), x * (W - 1)
    else:
        h, w = y * H - 0.5, x * W - 0.5
    if not (-1 < h < H and -1 < w < W):  # False for NaN and inf
        return None
    h0, w0 = math.floor(h), math.floor(w)
    lh, lw = h - h0, w - w0
    hh, hw = 1 - lh, 1 - lw
    pixels = [((h0, w0), hh * hw), ((h0, w0 + 1), hh * lw),
              ((h0 + 1, w0), lh * hw), ((h0 + 1, w0 + 1), lh * lw)]
    dw = [((h0, w0), -hh), ((h0, w0 + 1), hh), ((h0 + 1, w0), -lh), ((h0 + 1, w0 + 1), lh)]
    dh = [((h0, w0), -hw), ((h0, w0 + 1), -lw), ((h0 + 1, w0), hw), ((h0 + 1, w0 + 1), lw)]
    return pixels, dw, dh


def _discrete_reads(x, y, H, W):
    if not (math.isfinite(x) and math.isfinite(y)):
        return None

    def index(t, size):  # clamp(floor(t), 0, size - 1); t may overflow to +-inf
        if t >= size - 1:
            return size - 1
        if t <= 0:
            return 0
        return math.floor(t)

    i = index(y * H + 0.5, H)
    j = index(x * W + 0.5, W)
    return [((i, j), 1.0)], None, None


def _close(got, exp, tol=1e-12, what=""):
    got, exp = np.asarray(got), np.asarray(exp)
    assert got.shape == exp.shape, f"{what}: shape {got.shape}, expected {exp.shape}"
    scale = float(np.max(np.abs(exp), initial=0.0)) or 1.0
    err = float(np.max(np.abs(got - exp), initial=0.0)) / scale
    assert err <= tol, f"{what}: relative error {err:.3e} > {tol:.1e}"


# ============================================================================= the reference


@given(case=layout_cases(max_N=2, max_L=3, max_HW=5, max_M=2, max_D=4, max_P=5, max_Lq=4,
                         dtypes=(np.float64,), uniform=(False,)))
def test_reference_matches_loops(case):
    x = make_layout_inputs(case)
    got = ref_run(x, list(case.counts), case.mode, case.align_corners)
    exp = loop_reference(*_args(x), x["grad_output"], case.counts, case.mode, case.align_corners)
    for name, a, b in zip(RESULT_NAMES, got, exp):
        _close(a, b, what=name)
    if case.mode == "discrete":
        np.testing.assert_array_equal(got[2], 0.0)


@given(case=layout_cases(dtypes=(np.float64,), uniform=(False,), equal_counts=True))
def test_reference_layouts_agree_bit_for_bit(case):
    x = make_layout_inputs(case)
    flat = ref_run(x, list(case.counts), case.mode, case.align_corners)
    uni = ref_run(to_uniform(x, case.L), None, case.mode, case.align_corners)
    P = case.counts[0]
    for name, a, b in zip(RESULT_NAMES, flat, uni):
        if name == "grad_sampling_locations":
            assert b.shape == (case.N, case.Lq, case.M, case.L, P, 2)
        if name == "grad_attention_weights":
            assert b.shape == (case.N, case.Lq, case.M, case.L, P)
        assert same_bits(a, np.reshape(b, np.shape(a))), name


@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
def test_reference_gradients_in_the_layout_given(mode):
    x = make_layout_inputs(LayoutCase(2, ((3, 4), (1, 1), (2, 5)), (3, 6, 3), False, 2, 5, 4,
                                      mode, False, np.float64, 3, 0.1, 0.05, 0.05))
    out, gv, gl, ga = ref_run(x, [3, 6, 3], mode)
    assert out.shape == (2, 4, 10) and gv.shape == x["value"].shape
    assert gl.shape == (2, 4, 2, 12, 2) and ga.shape == (2, 4, 2, 12)


def test_reference_discrete_hand_examples():
    # One 2x3 level, v(i, j) = 10*i + j; discrete: i = clamp(floor(y*2 + 0.5), 0, 1),
    # j = clamp(floor(x*3 + 0.5), 0, 2).
    H, W = 2, 3
    value = np.array([10.0 * i + j for i in range(H) for j in range(W)]).reshape(1, H * W, 1, 1)
    pts = [
        ((0.0, 0.0), 0.0),  # j = floor(0.5) = 0, i = floor(0.5) = 0
        ((0.2, 0.2), 1.0),  # j = floor(1.1) = 1, i = floor(0.9) = 0
        ((1.0, 1.0), 12.0),  # j = floor(3.5) = 3 -> 2, i = floor(2.5) = 2 -> 1
        ((-5.0, 0.7), 10.0),  # j = floor(-14.5) -> 0, i = floor(1.9) = 1
        ((1e20, -1e20), 2.0),  # j clamped to 2, i clamped to 0
        ((0.5 / 3, 0.25), 11.0),  # x*3 + 0.5 = 1 exactly: j = 1; y*2 + 0.5 = 1: i = 1
        ((np.nan, 0.5), 0.0),  # skipped
        ((0.5, np.inf), 0.0),  # skipped
        ((-np.inf, 0.5), 0.0),  # skipped
    ]
    loc = np.array([p for p, _ in pts]).reshape(1, len(pts), 1, 1, 2)
    attn = np.full((1, len(pts), 1, 1), 2.0)
    out = ref.ms_deform_attn(value, [[H, W]], [0], loc, attn, points_per_level=[1],
                             mode="discrete")
    np.testing.assert_array_equal(out.ravel(), [2.0 * e for _, e in pts])
    go = np.ones((1, len(pts), 1))
    gv, gl, ga = ref.ms_deform_attn_backward(value, [[H, W]], [0], loc, attn, go,
                                             points_per_level=[1], mode="discrete")
    np.testing.assert_array_equal(gl, 0.0)
    np.testing.assert_array_equal(ga.ravel(), [e for _, e in pts])
    # tokens read, once each with weight 2: 0, 1, 5, 3, 2, 4
    expected_gv = np.zeros(H * W)
    for token in (0, 1, 5, 3, 2, 4):
        expected_gv[token] += 2.0
    np.testing.assert_array_equal(gv.ravel(), expected_gv)


def test_reference_uneven_counts_by_hand():
    # Two levels: 1x1 holding 5, 1x2 holding (1, 3); points_per_level [1, 2].
    value = np.array([5.0, 1.0, 3.0]).reshape(1, 3, 1, 1)
    loc = np.array([[0.5, 0.5], [0.25, 0.5], [0.75, 0.5]]).reshape(1, 1, 1, 3, 2)
    attn = np.array([1.0, 10.0, 100.0]).reshape(1, 1, 1, 3)
    # level 1, bilinear: x = 0.25 -> w = 0 (pixel 0), x = 0.75 -> w = 1 (pixel 1);
    # discrete: j = floor(0.25*2 + 0.5) = 1, floor(0.75*2 + 0.5) = 2 -> clamped to 1.
    for mode, expected in (("bilinear", 5.0 + 10.0 * 1.0 + 100.0 * 3.0),
                           ("discrete", 5.0 + 10.0 * 3.0 + 100.0 * 3.0)):
        out = ref.ms_deform_attn(value, [[1, 1], [1, 2]], [0, 1], loc, attn,
                                 points_per_level=[1, 2], mode=mode)
        assert out.ravel().tolist() == [expected], mode


@pytest.mark.parametrize("align_corners", [False, True])
def test_reference_flattened_finite_differences(align_corners):
    rng = np.random.default_rng(11 + align_corners)
    levels, counts = [(3, 4), (1, 1), (2, 5)], [3, 1, 2]
    x = make_layout_inputs(LayoutCase(2, tuple(levels), tuple(counts), False, 2, 3, 3,
                                      "bilinear", align_corners, np.float64, 11, 0.0, 0.0, 0.0))
    move_off_integers_flat(x["sampling_locations"], levels, counts, align_corners, rng, 1e-2)
    _check_finite_differences(lambda y: ref.ms_deform_attn(
        *_args(y), align_corners, points_per_level=counts),
        ref_run(x, counts, "bilinear", align_corners), x)


def _check_finite_differences(forward, results, x):
    """The analytic gradients of results against central differences of
    <grad_output, forward(x)> (float64, points off integer pixel coordinates)."""
    go = x["grad_output"]
    f = lambda: float(np.sum(np.asarray(forward(x), np.float64) * go))  # noqa: E731
    _, gv, gl, ga = results
    for name, key, analytic, step in (("value", "value", gv, 1e-3),
                                      ("attention_weights", "attention_weights", ga, 1e-3),
                                      ("sampling_locations", "sampling_locations", gl, 1e-6)):
        arr = x[key]
        numeric = np.zeros_like(arr)
        for index in np.ndindex(arr.shape):
            numeric[index] = central_difference(f, arr, index, step)
        analytic = np.asarray(analytic, np.float64)
        scale = np.max(np.abs(analytic))
        assert scale > 0, name
        err = np.max(np.abs(numeric - analytic)) / scale
        assert err < 1e-7, f"{name}: finite-difference relative error {err:.2e}"


def _bad_inputs():
    """(description, kwargs changes, arrays changes) of bad calls with points_per_level /
    mode, on a flattened problem with counts [2, 3] (P_total 5)."""
    return [
        ("too few counts", dict(points_per_level=[5]), {}),
        ("too many counts", dict(points_per_level=[2, 2, 1]), {}),
        ("a count of 0", dict(points_per_level=[0, 5]), {}),
        ("a negative count", dict(points_per_level=[-1, 6]), {}),
        ("sum too small", dict(points_per_level=[2, 2]), {}),
        ("sum too large", dict(points_per_level=[3, 3]), {}),
        ("attention_weights of another P_total", {}, dict(attention_weights=(1, 2, 1, 4))),
        ("uniform arrays with points_per_level", {}, "uniform"),
        ("flattened arrays without points_per_level", dict(points_per_level=None), {}),
        ("unknown mode", dict(mode="nearest"), {}),
        ("unknown mode (case)", dict(mode="Bilinear"), {}),
        ("empty mode", dict(mode=""), {}),
        ("discrete with align_corners", dict(mode="discrete", align_corners=True), {}),
    ]


def _bad_problem(dtype=np.float64):
    rng = np.random.default_rng(0)
    x = dict(value=rng.standard_normal((1, 6, 1, 2)),
             spatial_shapes=np.array([[2, 2], [1, 2]]),
             level_start_index=np.array([0, 4]),
             sampling_locations=rng.uniform(0, 1, (1, 2, 1, 5, 2)),
             attention_weights=rng.uniform(0, 1, (1, 2, 1, 5)),
             grad_output=rng.standard_normal((1, 2, 2)))
    return {k: (v.astype(dtype) if v.dtype == np.float64 else v) for k, v in x.items()}


def _apply_bad(x, kwargs_changes, array_changes):
    kw = dict(points_per_level=[2, 3], mode="bilinear", align_corners=False)
    kw.update(kwargs_changes)
    x = dict(x)
    if array_changes == "uniform":  # counts [2, 3] have no uniform layout
        x["sampling_locations"] = np.zeros((1, 2, 1, 2, 2, 2), x["value"].dtype)
        x["attention_weights"] = np.zeros((1, 2, 1, 2, 2), x["value"].dtype)
    else:
        for k, shape in array_changes.items():
            x[k] = np.zeros(shape, x["value"].dtype)
    return x, kw


@pytest.mark.parametrize("what,kwargs_changes,array_changes", _bad_inputs(),
                         ids=[b[0] for b in _bad_inputs()])
def test_reference_bad_inputs(what, kwargs_changes, array_changes):
    x, kw = _apply_bad(_bad_problem(), kwargs_changes, array_changes)
    ac = kw.pop("align_corners")
    with pytest.raises(ValueError):
        ref.ms_deform_attn(*_args(x), ac, **kw)
    with pytest.raises(ValueError):
        ref.ms_deform_attn_backward(*_args(x), x["grad_output"], ac, **kw)


def test_reference_default_is_unchanged():
    """points_per_level=None and mode="bilinear" are the defaults: the same numbers as
    calling without them."""
    x = make_layout_inputs(LayoutCase(2, ((3, 4), (2, 2)), (2, 2), True, 2, 3, 5, "bilinear",
                                      False, np.float64, 5, 0.1, 0.05, 0.0))
    u = to_uniform(x, 2)
    a = (ref.ms_deform_attn(*_args(u)),) + tuple(
        ref.ms_deform_attn_backward(*_args(u), u["grad_output"]))
    b = ref_run(u)
    assert_same_bits(a, b, "defaults")


# ============================================================================= msdacore (NumPy)


@needs_api
@given(case=layout_cases())
def test_matches_reference(case):
    x = placed(make_layout_inputs(case), case, case.dtype)
    saved = {k: v.copy() for k, v in x.items()}
    results = lib_run(x, case.points_per_level, case.mode, case.align_corners)
    assert_matches_reference(results, x, case, case.dtype)
    for k, v in saved.items():
        assert np.array_equal(x[k], v, equal_nan=True), f"{k} was modified"
    if case.mode == "discrete":
        assert np.all(results[2] == 0), "discrete grad_sampling_locations is not zero"


@needs_api
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True),
                                                ("discrete", False)])
@pytest.mark.parametrize("levels,counts", [
    (((6, 7), (3, 4), (2, 2)), (3, 6, 3)),  # RT-DETRv2's num_points_list
    (((5, 5), (1, 1)), (1, 4)),
    (((1, 1),), (1,)),
    (((1, 7), (7, 1), (1, 1), (4, 3)), (1, 2, 1, 5)),
])
def test_uneven_counts(dtype, mode, align_corners, levels, counts):
    case = LayoutCase(2, levels, counts, False, 3, 9, 11, mode, align_corners, dtype, sum(counts),
                      0.2, 0.05, 0.05)
    x = placed(make_layout_inputs(case), case, dtype)
    for deterministic in (False, True):
        results = lib_run(x, list(counts), mode, align_corners, deterministic)
        assert_matches_reference(results, x, case, dtype)


@needs_api
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_points_per_level_as_tuple(dtype):
    case = LayoutCase(1, ((3, 3), (2, 1)), (2, 3), False, 2, 4, 5, "bilinear", False, dtype, 1,
                      0.0, 0.0, 0.0)
    x = placed(make_layout_inputs(case), case, dtype)
    assert_same_bits(lib_run(x, (2, 3)), lib_run(x, [2, 3]), "tuple vs list")


@needs_api
@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
def test_strided_flattened_inputs(mode):
    """Flattened arrays with doubled strides give the contiguous arrays' bits."""
    case = LayoutCase(2, ((4, 3), (1, 1), (2, 5)), (3, 6, 3), False, 2, 5, 6, mode, False,
                      np.float64, 12, 0.1, 0.05, 0.05)
    x = make_layout_inputs(case)
    strided = {k: (np.stack([v, v], -1)[..., 0] if v.dtype == np.float64 else v)
               for k, v in x.items()}
    assert not strided["sampling_locations"].flags.c_contiguous
    assert_same_bits(lib_run(strided, [3, 6, 3], mode), lib_run(x, [3, 6, 3], mode), "strided")


@needs_api
@given(case=layout_cases(equal_counts=True, uniform=(False,)))
def test_layouts_agree_bit_for_bit(case):
    """points_per_level=[P]*L on flattened arrays gives exactly the uniform layout's
    numbers (gradients reshaped), in both modes."""
    x = placed(make_layout_inputs(case), case, case.dtype)
    flat = lib_run(x, list(case.counts), case.mode, case.align_corners)
    u = to_uniform(x, case.L)
    uni = lib_run(u, None, case.mode, case.align_corners)
    assert uni[2].shape == u["sampling_locations"].shape
    assert uni[3].shape == u["attention_weights"].shape
    assert flat[2].shape == x["sampling_locations"].shape
    assert flat[3].shape == x["attention_weights"].shape
    reshaped = (uni[0], uni[1], uni[2].reshape(flat[2].shape), uni[3].reshape(flat[3].shape))
    assert_same_bits(flat, reshaped, "flattened vs uniform")


@needs_api
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
def test_default_mode_and_layout(dtype, mode):
    """mode="bilinear" and points_per_level=None are the defaults."""
    case = LayoutCase(2, ((4, 5), (2, 3)), (3, 3), True, 2, 6, 7, "bilinear", False, dtype, 4,
                      0.1, 0.05, 0.0)
    x = placed(make_layout_inputs(case), case, dtype)
    args = _args(x)
    plain = (msdacore.ms_deform_attn(*args),) + tuple(
        msdacore.ms_deform_attn_backward(*args, x["grad_output"]))
    assert_same_bits(plain, lib_run(x, None, "bilinear"), "defaults")
    # and the flattened layout equals it too
    flat = dict(x, sampling_locations=x["sampling_locations"].reshape(2, 7, 2, 6, 2),
                attention_weights=x["attention_weights"].reshape(2, 7, 2, 6))
    got = lib_run(flat, [3, 3], mode)
    exp = lib_run(x, None, mode)
    assert_same_bits(got, (exp[0], exp[1], exp[2].reshape(got[2].shape),
                           exp[3].reshape(got[3].shape)), "flattened vs uniform")


@needs_api
@given(case=layout_cases(modes=("discrete",), min_N=1, min_Lq=1))
def test_discrete_location_gradient_is_exactly_zero(case):
    x = placed(make_layout_inputs(case), case, case.dtype)
    for deterministic in (False, True):
        _, grad_loc = msdacore.ms_deform_attn_backward(
            *_args(x), x["grad_output"], deterministic=deterministic,
            points_per_level=case.points_per_level, mode="discrete")[:2]
        assert grad_loc.shape == x["sampling_locations"].shape
        assert grad_loc.dtype == np.dtype(case.dtype)
        np.testing.assert_array_equal(grad_loc, 0.0)


@needs_api
@given(case=layout_cases(min_N=1, min_Lq=1))
def test_nonfinite_points_are_skipped(case):
    """Every point with a NaN or infinite coordinate: output exactly zero, location and
    weight gradients exactly zero, grad_value zero; whatever the (finite) weights."""
    x = placed(make_layout_inputs(case), case, case.dtype)
    loc = x["sampling_locations"]
    rng = np.random.default_rng(case.seed)
    bad = rng.choice(np.array([np.nan, np.inf, -np.inf]), loc.shape[:-1])
    axis = rng.integers(0, 2, loc.shape[:-1])
    loc = loc.copy()
    loc[..., 0] = np.where(axis == 0, bad, loc[..., 0])
    loc[..., 1] = np.where(axis == 1, bad, loc[..., 1])
    x["sampling_locations"] = loc.astype(case.dtype)
    out, gv, gl, ga = lib_run(x, case.points_per_level, case.mode, case.align_corners)
    for name, r in (("output", out), ("grad_value", gv), ("grad_sampling_locations", gl),
                    ("grad_attention_weights", ga)):
        np.testing.assert_array_equal(r, 0.0, err_msg=name)


@needs_api
@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
def test_border_points(mode):
    """Points exactly on the borders 0 and 1 and on pixel centres and edges, float64."""
    levels, counts = ((1, 1), (2, 3), (4, 1)), (2, 4, 3)
    case = LayoutCase(2, levels, counts, False, 2, 3, 9, mode, False, np.float64, 8, 1.0, 0.0, 0.0)
    x = make_layout_inputs(case)
    assert_matches_reference(lib_run(x, list(counts), mode), x, case, np.float64)
    # every coordinate on a border
    rng = np.random.default_rng(1)
    x["sampling_locations"] = rng.choice(np.array([0.0, 1.0]), x["sampling_locations"].shape)
    assert_matches_reference(lib_run(x, list(counts), mode), x, case, np.float64)


@needs_api
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_discrete_huge_finite_coordinates_are_clamped(dtype):
    """SPEC: only a NaN or infinite coordinate skips a discrete sample; a finite one is
    clamped, even where loc*size overflows the dtype (the largest finite numbers)."""
    big = float(np.finfo(dtype).max)
    H, W = 2, 3
    value = np.arange(1.0, 1.0 + H * W).reshape(1, H * W, 1, 1)
    pts = [(big, big), (-big, -big), (big, -big), (-big, big), (0.5, big), (big, 0.5)]
    loc = np.array(pts).reshape(1, len(pts), 1, 1, 2)
    attn = np.ones((1, len(pts), 1, 1))
    x = dict(value=value, spatial_shapes=np.array([[H, W]]), level_start_index=np.array([0]),
             sampling_locations=loc, attention_weights=attn,
             grad_output=np.ones((1, len(pts), 1)))
    x = {k: (v.astype(dtype) if v.dtype == np.float64 else v) for k, v in x.items()}
    expected = ref_run(as64(x), [1], "discrete")
    # pixels (1, 2), (0, 0), (0, 2), (1, 0), (1, 2), (1, 2): values 6, 1, 3, 4, 6, 6
    # (x = 0.5: j = floor(2.0) = 2; y = 0.5: i = floor(1.5) = 1)
    assert expected[0].ravel().tolist() == [6.0, 1.0, 3.0, 4.0, 6.0, 6.0]
    got = lib_run(x, [1], "discrete")
    for name, a, b in zip(RESULT_NAMES, got, expected):
        np.testing.assert_array_equal(np.asarray(a, np.float64), np.reshape(b, np.shape(a)),
                                      err_msg=name)


@needs_api
@pytest.mark.parametrize("N,Lq", [(0, 3), (2, 0), (0, 0)])
@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
def test_empty(N, Lq, mode):
    case = LayoutCase(N, ((3, 2), (1, 1)), (1, 3), False, 2, 3, Lq, mode, False, np.float64, 0,
                      0.0, 0.0, 0.0)
    x = make_layout_inputs(case)
    out, gv, gl, ga = lib_run(x, [1, 3], mode)
    assert out.shape == (N, Lq, 6) and gv.shape == x["value"].shape
    assert gl.shape == (N, Lq, 2, 4, 2) and ga.shape == (N, Lq, 2, 4)
    np.testing.assert_array_equal(gv, 0.0)


@needs_api
@pytest.mark.parametrize("align_corners", [False, True])
def test_flattened_finite_differences(align_corners):
    """The library's flattened bilinear gradients against central differences of its own
    forward (float64, points at least 1e-2 pixel off integers)."""
    rng = np.random.default_rng(21 + align_corners)
    levels, counts = [(3, 4), (1, 1), (2, 5), (1, 3)], [3, 1, 2, 1]
    x = make_layout_inputs(LayoutCase(2, tuple(levels), tuple(counts), False, 2, 3, 3,
                                      "bilinear", align_corners, np.float64, 21, 0.0, 0.0, 0.0))
    move_off_integers_flat(x["sampling_locations"], levels, counts, align_corners, rng, 1e-2)
    _check_finite_differences(lambda y: msdacore.ms_deform_attn(
        *_args(y), align_corners=align_corners, points_per_level=counts),
        lib_run(x, counts, "bilinear", align_corners), x)


@needs_api
def test_discrete_finite_differences():
    """Discrete mode away from rounding boundaries: value and weight gradients match
    central differences, and the output does not move with the locations."""
    rng = np.random.default_rng(31)
    levels, counts = [(3, 4), (1, 1), (2, 5)], [2, 1, 3]
    x = make_layout_inputs(LayoutCase(2, tuple(levels), tuple(counts), False, 2, 3, 3,
                                      "discrete", False, np.float64, 31, 0.0, 0.0, 0.05))
    move_off_integers_flat(x["sampling_locations"], levels, counts, False, rng, 1e-2)
    results = lib_run(x, counts, "discrete")
    assert np.all(results[2] == 0)
    go = x["grad_output"]

    def f():
        out = msdacore.ms_deform_attn(*_args(x), points_per_level=counts, mode="discrete")
        return float(np.sum(out * go))

    for key, analytic in (("value", results[1]), ("attention_weights", results[3])):
        arr = x[key]
        numeric = np.zeros_like(arr)
        for index in np.ndindex(arr.shape):
            numeric[index] = central_difference(f, arr, index, 1e-3)
        err = np.max(np.abs(numeric - analytic)) / np.max(np.abs(analytic))
        assert err < 1e-9, f"{key}: finite-difference relative error {err:.2e}"
    loc = x["sampling_locations"]
    for index in np.ndindex(loc.shape):
        assert central_difference(f, loc, index, 1e-6) == 0.0


MEDIUM_LEVELS = ((20, 24), (10, 12), (5, 6))


@needs_api
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True),
                                                ("discrete", False)])
@pytest.mark.parametrize("counts", [(3, 6, 3), (4, 4, 4)])
def test_thread_count_does_not_change_results(restore_threads, dtype, mode, align_corners,
                                              counts):
    case = LayoutCase(2, MEDIUM_LEVELS, counts, counts == (4, 4, 4), 4, 16, 300, mode,
                      align_corners, dtype, 2024, 0.1, 0.01, 0.01)
    x = placed(make_layout_inputs(case), case, dtype)
    msdacore.set_num_threads(1)
    one = lib_run(x, case.points_per_level, mode, align_corners)
    msdacore.set_num_threads(2)
    two = lib_run(x, case.points_per_level, mode, align_corners)
    again = lib_run(x, case.points_per_level, mode, align_corners)
    assert_same_bits(one, two, "1 vs 2 threads")
    assert_same_bits(two, again, "run to run")


@needs_api
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("what,kwargs_changes,array_changes", _bad_inputs(),
                         ids=[b[0] for b in _bad_inputs()])
def test_bad_inputs(dtype, what, kwargs_changes, array_changes):
    x, kw = _apply_bad(_bad_problem(dtype), kwargs_changes, array_changes)
    with pytest.raises(ValueError):
        msdacore.ms_deform_attn(*_args(x), **kw)
    with pytest.raises(ValueError):
        msdacore.ms_deform_attn_backward(*_args(x), x["grad_output"], **kw)


@needs_api
@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
@pytest.mark.parametrize("changes", [
    dict(value=np.float32), dict(sampling_locations=np.float32),
    dict(attention_weights=np.float32), dict(grad_output=np.float32), dict(value=np.int32),
    dict(value=np.int64, sampling_locations=np.int64, attention_weights=np.int64,
         grad_output=np.int64),
], ids=["value32", "loc32", "attn32", "grad32", "value-int32", "all-int64"])
def test_bad_dtypes(mode, changes):
    x = _bad_problem(np.float64)
    for k, dtype in changes.items():
        x[k] = x[k].astype(dtype)
    kw = dict(points_per_level=[2, 3], mode=mode)
    if "grad_output" not in changes or len(changes) > 1:
        with pytest.raises(TypeError):
            msdacore.ms_deform_attn(*_args(x), **kw)
    with pytest.raises(TypeError):
        msdacore.ms_deform_attn_backward(*_args(x), x["grad_output"], **kw)


@needs_api
def test_bad_error_messages_name_the_problem():
    x = _bad_problem()
    with pytest.raises(ValueError, match="points_per_level"):
        msdacore.ms_deform_attn(*_args(x), points_per_level=[5])
    with pytest.raises(ValueError, match="points_per_level"):
        msdacore.ms_deform_attn(*_args(x), points_per_level=[0, 5])
    with pytest.raises(ValueError, match="mode"):
        msdacore.ms_deform_attn(*_args(x), points_per_level=[2, 3], mode="nearest")
    with pytest.raises(ValueError, match="align_corners"):
        msdacore.ms_deform_attn(*_args(x), points_per_level=[2, 3], mode="discrete",
                                align_corners=True)


# ============================================================================= msdacore.torch


def _torch_inputs(x, requires_grad=True):
    t = {k: torch.tensor(v) for k, v in x.items()}
    for k in ("value", "sampling_locations", "attention_weights"):
        t[k].requires_grad_(requires_grad)
    return t


def torch_run(t, points_per_level, mode, align_corners, deterministic=False, starts=True,
              shapes=None):
    out = mt.ms_deform_attn(t["value"], t["spatial_shapes"] if shapes is None else shapes,
                            t["level_start_index"] if starts else None,
                            t["sampling_locations"], t["attention_weights"],
                            align_corners=align_corners, deterministic=deterministic,
                            points_per_level=points_per_level, mode=mode)
    grads = torch.autograd.grad(out, (t["value"], t["sampling_locations"],
                                      t["attention_weights"]), t["grad_output"])
    return tuple(r.detach().numpy() for r in (out,) + tuple(grads))


@needs_torch
@settings(max_examples=60)
@given(case=layout_cases(max_N=2, max_L=3, max_HW=5, max_Lq=6))
def test_torch_matches_reference(case):
    x = placed(make_layout_inputs(case), case, case.dtype)
    results = torch_run(_torch_inputs(x), case.points_per_level, case.mode, case.align_corners)
    assert_matches_reference(results, x, case, case.dtype)
    if case.mode == "discrete":
        assert np.all(results[2] == 0)


@needs_torch
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True),
                                                ("discrete", False)])
def test_torch_argument_forms(mode, align_corners):
    """level_start_index None and spatial_shapes as a list give the same bits, and match
    the NumPy API."""
    levels, counts = ((4, 5), (1, 1), (2, 3)), (3, 6, 3)
    case = LayoutCase(2, levels, counts, False, 2, 5, 6, mode, align_corners, np.float64, 9,
                      0.1, 0.05, 0.05)
    x = make_layout_inputs(case)
    full = torch_run(_torch_inputs(x), list(counts), mode, align_corners)
    no_starts = torch_run(_torch_inputs(x), list(counts), mode, align_corners, starts=False)
    as_list = torch_run(_torch_inputs(x), counts, mode, align_corners, starts=False,
                        shapes=[list(s) for s in levels])
    numpy_api = lib_run(x, list(counts), mode, align_corners)
    assert_same_bits(full, no_starts, "level_start_index=None")
    assert_same_bits(full, as_list, "spatial_shapes as a list")
    assert_same_bits(full, numpy_api, "torch vs NumPy API")


@needs_torch
@pytest.mark.parametrize("mode,align_corners", [("bilinear", False), ("bilinear", True),
                                                ("discrete", False)])
@pytest.mark.parametrize("counts", [(2, 1), (1, 3)])
def test_torch_gradcheck(mode, align_corners, counts):
    rng = np.random.default_rng(sum(counts) + align_corners)
    levels = ((3, 2), (1, 2))
    case = LayoutCase(1, levels, counts, False, 2, 2, 2, mode, align_corners, np.float64, 41,
                      0.0, 0.0, 0.0)
    x = make_layout_inputs(case)
    move_off_integers_flat(x["sampling_locations"], levels, counts,
                           align_corners if mode == "bilinear" else False, rng, 1e-2)
    t = _torch_inputs(x)
    shapes, starts = t["spatial_shapes"], t["level_start_index"]

    def f(value, loc, attn):
        return mt.ms_deform_attn(value, shapes, starts, loc, attn, align_corners=align_corners,
                                 points_per_level=list(counts), mode=mode)

    assert torch.autograd.gradcheck(
        f, (t["value"], t["sampling_locations"], t["attention_weights"]), eps=1e-6, atol=1e-7)


@needs_torch
def test_torch_gradients_in_the_layout_given():
    x = make_layout_inputs(LayoutCase(2, ((3, 3), (2, 2)), (2, 2), False, 2, 3, 4, "bilinear",
                                      False, np.float64, 2, 0.0, 0.0, 0.0))
    flat = torch_run(_torch_inputs(x), [2, 2], "bilinear", False)
    assert flat[2].shape == (2, 4, 2, 4, 2) and flat[3].shape == (2, 4, 2, 4)
    u = to_uniform(x, 2)
    uni = torch_run(_torch_inputs(u), None, "bilinear", False)
    assert uni[2].shape == (2, 4, 2, 2, 2, 2) and uni[3].shape == (2, 4, 2, 2, 2)
    assert_same_bits(flat, (uni[0], uni[1], uni[2].reshape(flat[2].shape),
                            uni[3].reshape(flat[3].shape)), "flattened vs uniform")


@needs_torch
@pytest.mark.parametrize("what,kwargs_changes,array_changes", _bad_inputs(),
                         ids=[b[0] for b in _bad_inputs()])
def test_torch_bad_inputs(what, kwargs_changes, array_changes):
    x, kw = _apply_bad(_bad_problem(), kwargs_changes, array_changes)
    t = _torch_inputs(x, requires_grad=False)
    with pytest.raises(ValueError):
        mt.ms_deform_attn(*_args(t), **kw)


@needs_torch
def test_torch_bad_dtype():
    x = _bad_problem()
    t = _torch_inputs(x, requires_grad=False)
    t["sampling_locations"] = t["sampling_locations"].float()
    with pytest.raises(TypeError):
        mt.ms_deform_attn(*_args(t), points_per_level=[2, 3], mode="discrete")
