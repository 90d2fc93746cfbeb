"""Forward: msdacore against the float64 NumPy reference on random problems.

Sizes cover empty batches and query sets, 1-pixel levels, odd D; locations spread
over [-0.3, 1.3] with some exactly on the borders 0 and 1, on integer pixel
coordinates, and NaN/Inf. Tolerances are SPEC's (max|a-b| / max|ref|); in float32
max|ref| is floored at one typical term (strategies.term_scales), since a small
problem whose samples all sit within rounding of a skip boundary has a tiny max|ref|
that float32 coordinates cannot resolve.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given

import msdacore
from strategies import (
    Case,
    assert_close,
    assert_unchanged,
    cases,
    comparison_floors,
    copies,
    forward_args,
    load_reference,
    make_inputs,
)

ref = load_reference()


@given(case=cases())
def test_forward_matches_reference(case):
    inputs = make_inputs(case)
    saved = copies(inputs)
    out = msdacore.ms_deform_attn(*forward_args(inputs), align_corners=case.align_corners)
    expected = ref.ms_deform_attn(*forward_args(inputs), align_corners=case.align_corners)

    assert isinstance(out, np.ndarray)
    assert out.shape == (case.N, case.Lq, case.M * case.D)
    assert out.dtype == np.dtype(case.dtype)
    assert out.flags.c_contiguous
    floor = comparison_floors(inputs, case.dtype)["output"]
    assert_close(out, expected, case.dtype, "output", floor=floor)
    assert_unchanged(inputs, saved)


@given(case=cases(min_N=1, min_Lq=1, special=False))
def test_forward_is_linear_in_value_and_weights(case):
    """Independent of the reference: doubling value or attention_weights doubles
    the output exactly (a power of two), negating either negates it."""
    inputs = make_inputs(case)
    v, ss, lsi, loc, attn = forward_args(inputs)
    kw = dict(align_corners=case.align_corners)
    out = msdacore.ms_deform_attn(v, ss, lsi, loc, attn, **kw)
    np.testing.assert_array_equal(msdacore.ms_deform_attn(2 * v, ss, lsi, loc, attn, **kw), 2 * out)
    np.testing.assert_array_equal(msdacore.ms_deform_attn(v, ss, lsi, loc, -attn, **kw), -out)


def test_forward_skips_nonfinite_and_out_of_range_points():
    """Only skipped samples: the output is exactly zero, whatever the weights."""
    value = np.ones((1, 6, 1, 3))
    loc = np.array([[np.nan, 0.5], [0.5, np.inf], [-np.inf, -np.inf], [-2.0, 0.5], [0.5, 7.0],
                    [-1 / 6, 0.5]]).reshape(1, 6, 1, 1, 1, 2)  # last: w = -1 exactly on W = 3
    attn = np.full((1, 6, 1, 1, 1), 3.0)
    out = msdacore.ms_deform_attn(value, np.array([[2, 3]]), np.array([0]), loc, attn)
    np.testing.assert_array_equal(out, 0.0)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [32, 64, 67])
def test_forward_larger_problem(D, dtype, align_corners):
    """Channel counts past one register chunk (and odd remainders), bigger levels."""
    case = Case(N=2, levels=((12, 17), (6, 9), (3, 5), (1, 2)), M=4, D=D, P=4, Lq=60,
                align_corners=align_corners, dtype=dtype, seed=D, special_fraction=0.1,
                nonfinite_fraction=0.02)
    inputs = make_inputs(case)
    out = msdacore.ms_deform_attn(*forward_args(inputs), align_corners=align_corners)
    expected = ref.ms_deform_attn(*forward_args(inputs), align_corners=align_corners)
    assert_close(out, expected, dtype, "output", floor=comparison_floors(inputs, dtype)["output"])
