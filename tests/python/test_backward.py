"""Backward: msdacore against the float64 NumPy reference on random problems.

float64 compares every gradient element. In float32 the gradient with respect to
the sampling locations is discontinuous at integer pixel coordinates (one-sided
floor) and at the -1 / H skip boundaries (integers too), where float32 rounding
may legitimately pick the other side: it is compared only at points whose float64
pixel coordinates lie farther than INTEGER_MARGIN from an integer. float32 errors
are also measured against at least one typical term (strategies.term_scales), as
max|ref| can be tiny when every sample sits by a skip boundary.
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
    away_from_integers,
    backward_args,
    cases,
    comparison_floors,
    copies,
    load_reference,
    make_inputs,
    pixel_coordinates,
)

ref = load_reference()


@given(case=cases())
def test_backward_matches_reference(case):
    inputs = make_inputs(case)
    saved = copies(inputs)
    kw = dict(align_corners=case.align_corners)
    grads = msdacore.ms_deform_attn_backward(*backward_args(inputs), **kw)
    expected = ref.ms_deform_attn_backward(*backward_args(inputs), **kw)

    assert isinstance(grads, tuple) and len(grads) == 3
    grad_value, grad_loc, grad_attn = grads
    for name, got, key in (("grad_value", grad_value, "value"),
                           ("grad_sampling_locations", grad_loc, "sampling_locations"),
                           ("grad_attention_weights", grad_attn, "attention_weights")):
        assert isinstance(got, np.ndarray), name
        assert got.shape == inputs[key].shape, name
        assert got.dtype == np.dtype(case.dtype), name
        assert got.flags.c_contiguous, name

    floors = comparison_floors(inputs, case.dtype)
    assert_close(grad_value, expected[0], case.dtype, "grad_value", floor=floors["grad_value"])
    assert_close(grad_attn, expected[2], case.dtype, "grad_attention_weights",
                 floor=floors["grad_attention_weights"])
    if np.dtype(case.dtype) == np.float64:
        assert_close(grad_loc, expected[1], case.dtype, "grad_sampling_locations")
    else:
        keep = away_from_integers(inputs["sampling_locations"], case.levels, case.align_corners)
        assert_close(grad_loc, expected[1], case.dtype, "grad_sampling_locations", mask=keep,
                     floor=floors["grad_sampling_locations"])
    assert_unchanged(inputs, saved)


@given(case=cases(min_N=1, min_Lq=1))
def test_skipped_points_have_zero_gradients(case):
    """Points with a NaN/Inf or out-of-range coordinate get exactly zero
    location and weight gradients."""
    inputs = make_inputs(case)
    kw = dict(align_corners=case.align_corners)
    _, grad_loc, grad_attn = msdacore.ms_deform_attn_backward(*backward_args(inputs), **kw)
    h, w = pixel_coordinates(inputs["sampling_locations"], case.levels, case.align_corners)
    H = np.array([hh for hh, _ in case.levels])[:, None]  # broadcast over (L, P)
    W = np.array([ww for _, ww in case.levels])[:, None]
    with np.errstate(invalid="ignore"):
        kept = (h > -1) & (h < H) & (w > -1) & (w < W)
    if np.dtype(case.dtype) == np.float32:
        # float32 may decide points within rounding of the boundary differently.
        kept |= ~away_from_integers(inputs["sampling_locations"], case.levels, case.align_corners)
    np.testing.assert_array_equal(grad_attn[~kept], 0.0)
    np.testing.assert_array_equal(grad_loc[~kept], 0.0)


@given(case=cases(min_N=1, min_Lq=1, special=False))
def test_backward_is_linear_in_grad_output(case):
    """Independent of the reference: scaling grad_output by 2 scales every
    gradient by exactly 2."""
    inputs = make_inputs(case)
    kw = dict(align_corners=case.align_corners)
    args = backward_args(inputs)
    once = msdacore.ms_deform_attn_backward(*args, **kw)
    twice = msdacore.ms_deform_attn_backward(*args[:5], 2 * args[5], **kw)
    for a, b in zip(once, twice):
        np.testing.assert_array_equal(b, 2 * a)


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("D", [32, 64, 67])
def test_backward_larger_problem(D, dtype, align_corners):
    """Channel counts past one register chunk (and odd remainders), bigger levels."""
    case = Case(N=2, levels=((12, 17), (6, 9), (3, 5), (1, 2)), M=4, D=D, P=4, Lq=60,
                align_corners=align_corners, dtype=dtype, seed=D, special_fraction=0.1,
                nonfinite_fraction=0.02)
    inputs = make_inputs(case)
    kw = dict(align_corners=align_corners)
    got = msdacore.ms_deform_attn_backward(*backward_args(inputs), **kw)
    expected = ref.ms_deform_attn_backward(*backward_args(inputs), **kw)
    floors = comparison_floors(inputs, dtype)
    keep = None
    if np.dtype(dtype) == np.float32:
        keep = away_from_integers(inputs["sampling_locations"], case.levels, align_corners)
    for name, g, e, mask in (("grad_value", got[0], expected[0], None),
                             ("grad_sampling_locations", got[1], expected[1], keep),
                             ("grad_attention_weights", got[2], expected[2], None)):
        assert_close(g, e, dtype, name, mask=mask, floor=floors[name])
