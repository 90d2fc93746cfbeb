"""Shared hypothesis strategies, input builders and comparison helpers.

A hypothesis example is a small ``Case`` (sizes, dtype, align_corners, a seed and
how many special locations to plant); ``make_inputs`` turns it into arrays with a
NumPy generator, so shrinking works on the sizes and the arrays stay cheap to make.
"""

from __future__ import annotations

import importlib.util
import pathlib
import sys
from dataclasses import dataclass

import numpy as np
from hypothesis import strategies as st

_REPO = pathlib.Path(__file__).resolve().parents[2]
_REFERENCE_PATH = _REPO / "python" / "msdacore" / "reference.py"

# SPEC tolerances, as max|a - b| / max|ref|, by dtype name.
TOLERANCE = {"float64": 1e-12, "float32": 5e-5, "float16": 1e-2, "bfloat16": 5e-2}

# float32 pixel coordinates closer than this to an integer may pick the other cell
# (or the other side of a -1 / H skip boundary) than float64 does.
INTEGER_MARGIN = 1e-3


def load_reference():
    """The reference module of this source tree, importable without the C++ extension."""
    name = "_msdacore_reference_under_test"
    if name in sys.modules:
        return sys.modules[name]
    if _REFERENCE_PATH.is_file():
        spec = importlib.util.spec_from_file_location(name, _REFERENCE_PATH)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    from msdacore import reference  # installed package without the source tree

    return reference


class LevelSizes:
    """L and S of a case's `levels` ((H, W), ...) (mixed into the case classes)."""

    @property
    def L(self):
        return len(self.levels)

    @property
    def S(self):
        return sum(h * w for h, w in self.levels)


@dataclass(frozen=True)
class Case(LevelSizes):
    N: int
    levels: tuple  # ((H, W), ...)
    M: int
    D: int
    P: int
    Lq: int
    align_corners: bool
    dtype: type
    seed: int
    special_fraction: float  # share of coordinates replaced by borders / integer pixels
    nonfinite_fraction: float  # share of points given a NaN or infinite coordinate


def _size_or_empty(draw, low, high):
    """A size in [low, high]; 0 (when allowed) about one time in ten, so that empty
    problems are covered without crowding out the others."""
    if low == 0 and draw(st.integers(0, 9)) == 9:
        return 0
    return draw(st.integers(max(low, 1), high))


@st.composite
def cases(draw, max_N=3, max_L=4, max_HW=9, max_M=4, max_D=40, max_P=4, max_Lq=20,
          min_N=0, min_Lq=0, dtypes=(np.float32, np.float64), align_corners=(False, True),
          special=True):
    """Random sizes within the bounds, dtype, align_corners and a seed."""
    levels = draw(st.lists(st.tuples(st.integers(1, max_HW), st.integers(1, max_HW)),
                           min_size=1, max_size=max_L))
    return Case(
        N=_size_or_empty(draw, min_N, max_N),
        levels=tuple(levels),
        M=draw(st.integers(1, max_M)),
        D=draw(st.integers(1, max_D)),
        P=draw(st.integers(1, max_P)),
        Lq=_size_or_empty(draw, min_Lq, max_Lq),
        align_corners=draw(st.sampled_from(align_corners)),
        dtype=draw(st.sampled_from(dtypes)),
        seed=draw(st.integers(0, 2**32 - 1)),
        special_fraction=draw(st.sampled_from((0.0, 0.1, 0.3, 1.0))) if special else 0.0,
        nonfinite_fraction=draw(st.sampled_from((0.0, 0.0, 0.05, 0.2))) if special else 0.0,
    )


def level_start_index(levels):
    starts, s = [], 0
    for h, w in levels:
        starts.append(s)
        s += h * w
    return np.asarray(starts, dtype=np.int64)


def _special_coordinates(rng, size, count, align_corners):
    """count normalized coordinates on a level of this size (W for x, H for y):
    the borders 0 and 1, or integer pixel positions including -1 and size."""
    j = rng.integers(-1, size + 1, count)
    if align_corners:
        pixel = j / (size - 1) if size > 1 else rng.uniform(-0.3, 1.3, count)
    else:
        pixel = (j + 0.5) / size
    border = rng.choice(np.array([0.0, 1.0]), count)
    return np.where(rng.random(count) < 0.25, border, pixel)


def make_locations(rng, N, Lq, M, levels, P, align_corners, special_fraction=0.0,
                   nonfinite_fraction=0.0):
    """(N, Lq, M, L, P, 2) float64 locations spread over [-0.3, 1.3]."""
    L = len(levels)
    loc = rng.uniform(-0.3, 1.3, size=(N, Lq, M, L, P, 2))
    if special_fraction > 0:
        for l, (H, W) in enumerate(levels):
            for axis, size in ((0, W), (1, H)):
                view = loc[:, :, :, l, :, axis]
                mask = rng.random(view.shape) < special_fraction
                view[mask] = _special_coordinates(rng, size, int(mask.sum()), align_corners)
    if nonfinite_fraction > 0:
        mask = rng.random(loc.shape) < nonfinite_fraction / 2
        loc[mask] = rng.choice(np.array([np.nan, np.inf, -np.inf]), int(mask.sum()))
    return loc


def make_inputs(case, rng=None):
    """Arrays for a case, float arrays in case.dtype, index arrays int64.

    Returns dict with value, spatial_shapes, level_start_index, sampling_locations,
    attention_weights, grad_output.
    """
    if rng is None:
        rng = np.random.default_rng(case.seed)
    dtype = np.dtype(case.dtype)
    N, M, D, P, Lq = case.N, case.M, case.D, case.P, case.Lq
    value = rng.standard_normal((N, case.S, M, D))
    loc = make_locations(rng, N, Lq, M, case.levels, P, case.align_corners,
                         case.special_fraction, case.nonfinite_fraction)
    # Not normalized, some negative.
    attn = rng.uniform(-0.5, 1.0, size=(N, Lq, M, case.L, P))
    grad_output = rng.standard_normal((N, Lq, M * D))
    return dict(
        value=value.astype(dtype),
        spatial_shapes=np.asarray(case.levels, dtype=np.int64).reshape(case.L, 2),
        level_start_index=level_start_index(case.levels),
        sampling_locations=loc.astype(dtype),
        attention_weights=attn.astype(dtype),
        grad_output=grad_output.astype(dtype),
    )


def forward_args(inputs):
    return (inputs["value"], inputs["spatial_shapes"], inputs["level_start_index"],
            inputs["sampling_locations"], inputs["attention_weights"])


def backward_args(inputs):
    return forward_args(inputs) + (inputs["grad_output"],)


def pixel_coordinates(sampling_locations, levels, align_corners):
    """float64 (h, w) pixel coordinates, each (N, Lq, M, L, P), computed as SPEC writes them."""
    loc = np.asarray(sampling_locations, dtype=np.float64)
    shapes = np.asarray(levels, dtype=np.int64).reshape(-1, 2)
    H = shapes[:, 0].astype(np.float64)[:, None]  # broadcast over (L, P)
    W = shapes[:, 1].astype(np.float64)[:, None]
    with np.errstate(invalid="ignore", over="ignore"):
        if align_corners:
            h = loc[..., 1] * (H - 1)
            w = loc[..., 0] * (W - 1)
        else:
            h = loc[..., 1] * H - 0.5
            w = loc[..., 0] * W - 0.5
    return h, w


def away_from_integers(sampling_locations, levels, align_corners, margin=INTEGER_MARGIN):
    """(N, Lq, M, L, P) bool: both pixel coordinates farther than margin from an
    integer, or non-finite (skipped in any precision)."""
    h, w = pixel_coordinates(sampling_locations, levels, align_corners)
    with np.errstate(invalid="ignore"):
        near = (np.abs(h - np.round(h)) <= margin) | (np.abs(w - np.round(w)) <= margin)
    return ~near


def relative_error(got, ref, mask=None, floor=0.0):
    """max|got - ref| / max(max|ref|, floor) (over mask); a zero denominator reads as 1.

    NaN anywhere in got (where ref is finite) gives an infinite error."""
    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if mask is not None:
        got = got[mask]
        ref = ref[mask]
    if ref.size == 0:
        return 0.0
    diff = np.abs(got - ref)
    if not np.all(np.isfinite(diff)):
        return float("inf")
    scale = max(float(np.max(np.abs(ref))), floor)
    return float(np.max(diff)) / (scale if scale > 0 else 1.0)


def _rms(x):
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(np.sqrt(np.mean(x * x))) if x.size else 0.0


def term_scales(inputs):
    """The size of one typical sample's contribution to each result, from the RMS of
    the inputs: {"output", "grad_value", "grad_sampling_locations",
    "grad_attention_weights"}.

    float32 pixel coordinates carry about W*eps of error, so a float32 result is
    accurate relative to the terms it sums, not to the sum: when every sample of a
    small problem sits within rounding of a skip boundary (-1 or H), max|ref| is
    tiny while the float32 result may legitimately have kept or dropped it. Used
    as a floor under max|ref| for float32 only; it changes nothing unless max|ref|
    is smaller than one typical term."""
    a = _rms(inputs["attention_weights"])
    v = _rms(inputs["value"])
    g = _rms(inputs["grad_output"])
    D = np.asarray(inputs["value"]).shape[-1]
    return {
        "output": a * v,
        "grad_value": a * g,
        "grad_sampling_locations": a * np.sqrt(D) * g * v,
        "grad_attention_weights": np.sqrt(D) * g * v,
    }


def assert_close(got, ref, dtype, name, mask=None, tol=None, floor=0.0):
    """Check dtype and shape of got, then the SPEC relative error against ref:
    max|got - ref| / max|ref| (max|ref| floored at floor)."""
    dtype = np.dtype(dtype)
    ref = np.asarray(ref)
    got_arr = np.asarray(got)
    assert got_arr.dtype == dtype, f"{name}: dtype {got_arr.dtype}, expected {dtype}"
    assert got_arr.shape == ref.shape, f"{name}: shape {got_arr.shape}, expected {ref.shape}"
    tol = TOLERANCE[dtype.name] if tol is None else tol
    err = relative_error(got_arr, ref, mask, floor)
    scale = float(np.max(np.abs(ref), initial=0.0))
    assert err <= tol, (f"{name}: relative error {err:.3e} > {tol:.1e} "
                        f"(max|ref| {scale:.3e}, floor {floor:.3e})")


def copies(inputs):
    return {k: np.array(v, copy=True) for k, v in inputs.items()}


def assert_unchanged(inputs, saved):
    for k, v in saved.items():
        assert np.array_equal(np.asarray(inputs[k]), v, equal_nan=True), f"{k} was modified"


def move_off_integers(loc, levels, align_corners, rng, margin=1e-2, max_rounds=1000):
    """Redraw (in place, uniform over [-0.3, 1.3]) the points whose float64 pixel
    coordinates lie within margin of an integer, so that finite differences stay in
    one bilinear cell. Axes that do not move the coordinate (a 1-pixel axis with
    align_corners) are ignored. Non-finite points are left alone. Returns loc."""
    shapes = np.asarray(levels, dtype=np.int64).reshape(-1, 2)
    scale_h = (shapes[:, 0] - 1) if align_corners else shapes[:, 0]
    scale_w = (shapes[:, 1] - 1) if align_corners else shapes[:, 1]
    for _ in range(max_rounds):
        h, w = pixel_coordinates(loc, levels, align_corners)
        with np.errstate(invalid="ignore"):
            near_h = (np.abs(h - np.round(h)) <= margin) & (scale_h[:, None] > 0)
            near_w = (np.abs(w - np.round(w)) <= margin) & (scale_w[:, None] > 0)
        near = near_h | near_w
        if not near.any():
            return loc
        loc[near] = rng.uniform(-0.3, 1.3, size=(int(near.sum()), 2))
    raise RuntimeError("could not move the sampling locations off integer pixel coordinates")


def comparison_floors(inputs, dtype):
    """term_scales for float32, zeros for float64 (compared by max|ref| alone)."""
    scales = term_scales(inputs)
    if np.dtype(dtype) == np.float32:
        return scales
    return {k: 0.0 for k in scales}


def central_difference(f, x, index, step):
    """(f(x + step e) - f(x - step e)) / (2 step) for the entry x[index], which is restored."""
    saved = x[index]
    x[index] = saved + step
    up = f()
    x[index] = saved - step
    down = f()
    x[index] = saved
    return (up - down) / (2 * step)
