"""The operator, forward and backward, on every device and dtype (torchvision's test_ops
style): each test runs for ("cpu", "cuda") x the dtypes of that device (float32/float64
on the CPU; float16/bfloat16/float32/float64 on CUDA; CUDA cases skip with the reason
where no GPU is visible, see conftest.py).

Results are compared with the float64 NumPy reference run on the numbers the backend
computes on (the inputs rounded to their dtype), with SPEC's tolerances (max|a-b| /
max|ref|: float64 1e-12, float32 5e-5, float16 1e-2, bfloat16 5e-2), and on CUDA the
float32/float64 results with the CPU backend too. Random problems cover empty batches and
query sets, 1-pixel levels, odd D; locations over [-0.3, 1.3] with some exactly on the
borders 0 and 1, on integer pixel coordinates, and NaN/Inf. Below float64, max|ref| is
floored at one typical term (strategies.term_scales), since a small problem whose samples
all sit within rounding of a skip boundary has a tiny max|ref| the rounded coordinates
cannot resolve; and the location gradient, discontinuous at integer pixel coordinates
(one-sided floor) and at the -1 / H skip boundaries, is compared only at points whose
float64 pixel coordinates lie farther than strategies.INTEGER_MARGIN from an integer.
"""

from __future__ import annotations

import numpy as np
import pytest
from devices import (
    CPU_DTYPES,
    NAMES,
    RESULTS,
    assert_results_close,
    assert_same_bits,
    backward,
    capped_examples,
    check_kind,
    contended_inputs,
    data_address,
    device_dtypes,
    forward,
    host64,
    is_contiguous,
    place,
    problem,
    reference,
    restrided,
    rounded,
    run,
)
from hypothesis import given
from hypothesis import strategies as st
from strategies import (
    Case,
    assert_unchanged,
    away_from_integers,
    cases,
    central_difference,
    level_start_index,
    make_locations,
    move_off_integers,
    pixel_coordinates,
)

ALL = device_dtypes()
FLOAT64 = device_dtypes(cpu=("float64",), cuda=("float64",))
# Case.dtype is float64: make_inputs draws float64 numbers, place() rounds them.
CASES = dict(max_D=70, dtypes=(np.float64,))


def _check(results, placed, inputs64, case, dtype, which="both", what=""):
    """Kind and shapes; closeness to the reference, and on CUDA to the CPU backend for the
    dtypes it has."""
    names = NAMES[which]
    check_kind(results, placed, dtype, names)
    expected = [("reference: ", reference(inputs64, case.align_corners, which))]
    if not isinstance(placed["value"], np.ndarray) and dtype in CPU_DTYPES:
        cpu = place(inputs64, "cpu", dtype)
        expected.append(("CPU backend: ", run(cpu, case.align_corners, which=which)))
    for source, exp in expected:
        assert_results_close(results, exp, inputs64, case.levels, case.align_corners, dtype,
                             what + source, names)


def _exactly_scaled(got, base, factor, dtype, what):
    """got == factor * base exactly. A float16 result below 2^-13 is left out: rounding a
    float32 sum to a float16 subnormal does not commute with doubling."""
    got, want = host64(got), factor * host64(base)
    if dtype == "float16":
        keep = np.abs(want) >= 2.0 ** -13
        got, want = got[keep], want[keep]
    np.testing.assert_array_equal(got, want, err_msg=what)


# ----------------------------------------------------------------------------- forward

@pytest.mark.parametrize("device,dtype", ALL)
@capped_examples
@given(case=cases(**CASES))
def test_forward_matches_reference(device, dtype, case):
    placed, inputs64 = problem(case, device, dtype)
    out = forward(placed, case.align_corners)
    _check([out], placed, inputs64, case, dtype, "forward")
    assert_unchanged(rounded(placed), inputs64)


@pytest.mark.parametrize("device,dtype", ALL)
@capped_examples
@given(case=cases(min_N=1, min_Lq=1, special=False, **CASES))
def test_forward_is_linear_in_value_and_weights(device, dtype, case):
    """Independent of the reference: doubling value or attention_weights doubles the
    output exactly (a power of two), negating either negates it."""
    placed, _ = problem(case, device, dtype)
    v, a = placed["value"], placed["attention_weights"]
    out = forward(placed, case.align_corners)
    for changes, factor in (({"value": 2 * v}, 2), ({"attention_weights": 2 * a}, 2),
                            ({"value": -v}, -1), ({"attention_weights": -a}, -1)):
        got = forward(dict(placed, **changes), case.align_corners)
        _exactly_scaled(got, out, factor, dtype, f"{list(changes)} x {factor}")


@pytest.mark.parametrize("device,dtype", ALL)
def test_forward_skips_nonfinite_and_out_of_range_points(device, dtype):
    """Only skipped samples: the output is exactly zero, whatever the weights. The last
    point sits on w = -1 exactly (W = 3), which only float64 coordinates can say."""
    points = [[np.nan, 0.5], [0.5, np.inf], [-np.inf, -np.inf], [-2.0, 0.5], [0.5, 7.0]]
    if dtype == "float64":
        points.append([-1 / 6, 0.5])
    Lq = len(points)
    inputs = dict(value=np.ones((1, 6, 1, 3)), spatial_shapes=np.array([[2, 3]]),
                  level_start_index=np.array([0]),
                  sampling_locations=np.array(points).reshape(1, Lq, 1, 1, 1, 2),
                  attention_weights=np.full((1, Lq, 1, 1, 1), 3.0))
    out = forward(place(inputs, device, dtype))
    np.testing.assert_array_equal(host64(out), 0.0)


# ----------------------------------------------------------------------------- backward

@pytest.mark.parametrize("device,dtype", ALL)
@capped_examples
@given(case=cases(**CASES), deterministic=st.booleans())
def test_backward_matches_reference(device, dtype, case, deterministic):
    placed, inputs64 = problem(case, device, dtype)
    grads = backward(placed, case.align_corners, deterministic)
    assert isinstance(grads, tuple) and len(grads) == 3
    _check(grads, placed, inputs64, case, dtype, "backward")
    assert_unchanged(rounded(placed), inputs64)


@pytest.mark.parametrize("device,dtype", ALL)
@capped_examples
@given(case=cases(min_N=1, min_Lq=1, **CASES))
def test_skipped_points_have_zero_gradients(device, dtype, case):
    """Points with a NaN/Inf or out-of-range coordinate get exactly zero location and
    weight gradients."""
    placed, inputs64 = problem(case, device, dtype)
    _, grad_loc, grad_attn = backward(placed, case.align_corners)
    loc = inputs64["sampling_locations"]
    h, w = pixel_coordinates(loc, case.levels, case.align_corners)
    H = np.array([hh for hh, _ in case.levels])[:, None]  # broadcast over (L, P)
    W = np.array([ww for _, ww in case.levels])[:, None]
    with np.errstate(invalid="ignore"):
        kept = (h > -1) & (h < H) & (w > -1) & (w < W)
    if dtype != "float64":
        # Coordinates computed in float32 may decide points within rounding of the
        # boundary differently.
        kept |= ~away_from_integers(loc, case.levels, case.align_corners)
    np.testing.assert_array_equal(host64(grad_attn)[~kept], 0.0)
    np.testing.assert_array_equal(host64(grad_loc)[~kept], 0.0)


@pytest.mark.parametrize("device,dtype", ALL)
@capped_examples
@given(case=cases(min_N=1, min_Lq=1, special=False, **CASES))
def test_backward_is_linear_in_grad_output(device, dtype, case):
    """Independent of the reference: scaling grad_output by 2 scales every gradient by
    exactly 2 (deterministic mode: CUDA's atomic additions have no fixed order)."""
    placed, _ = problem(case, device, dtype)
    once = backward(placed, case.align_corners, deterministic=True)
    twice = backward(dict(placed, grad_output=2 * placed["grad_output"]), case.align_corners,
                     deterministic=True)
    for name, a, b in zip(RESULTS[1:], once, twice):
        _exactly_scaled(b, a, 2, dtype, name)


# ----------------------------------------------------------------------------- both, by shape

def _check_both_modes(case, device, dtype, what=""):
    placed, inputs64 = problem(case, device, dtype)
    for deterministic in (False, True):
        results = run(placed, case.align_corners, deterministic)
        _check(results, placed, inputs64, case, dtype, what=f"{what}deterministic={deterministic} ")


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("D", [32, 64, 67])
@pytest.mark.parametrize("device,dtype", ALL)
def test_larger_problem(device, dtype, D, align_corners):
    """Channel counts past one register chunk (and odd remainders), bigger levels."""
    case = Case(N=2, levels=((12, 17), (6, 9), (3, 5), (1, 2)), M=4, D=D, P=4, Lq=60,
                align_corners=align_corners, dtype=np.float64, seed=D, special_fraction=0.1,
                nonfinite_fraction=0.02)
    _check_both_modes(case, device, dtype)


@pytest.mark.parametrize("D", [1, 3, 8, 33, 129, 300])
@pytest.mark.parametrize("device,dtype", ALL)
def test_any_channel_count(device, dtype, D):
    case = Case(N=1, levels=((7, 5), (2, 3)), M=2, D=D, P=2, Lq=9, align_corners=False,
                dtype=np.float64, seed=D, special_fraction=0.1, nonfinite_fraction=0.0)
    _check_both_modes(case, device, dtype, f"D={D} ")


@pytest.mark.parametrize("device,dtype", ALL)
def test_many_levels(device, dtype):
    """More than 8 levels (CUDA keeps up to 8 in constant memory, more in a device table)."""
    levels = tuple((1 + l % 4, 2 + l % 3) for l in range(11))
    case = Case(N=2, levels=levels, M=2, D=8, P=2, Lq=7, align_corners=False,
                dtype=np.float64, seed=9, special_fraction=0.1, nonfinite_fraction=0.05)
    _check_both_modes(case, device, dtype, "11 levels: ")


@pytest.mark.parametrize("N,Lq", [(0, 5), (2, 0), (0, 0)])
@pytest.mark.parametrize("device,dtype", ALL)
def test_empty_batch_or_queries(device, dtype, N, Lq):
    case = Case(N=N, levels=((4, 5), (3, 3), (1, 1), (2, 6)), M=3, D=7, P=3, Lq=Lq,
                align_corners=False, dtype=np.float64, seed=11, special_fraction=0.1,
                nonfinite_fraction=0.05)
    placed, inputs64 = problem(case, device, dtype)
    for deterministic in (False, True):
        results = run(placed, deterministic=deterministic)
        check_kind(results, placed, dtype)
        np.testing.assert_array_equal(host64(results[1]), 0.0)  # nothing samples the values
    assert_unchanged(rounded(placed), inputs64)


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("layout", ["value_transposed", "all_doubled", "misaligned"])
@pytest.mark.parametrize("device,dtype", ALL)
def test_strided_inputs(device, dtype, layout, deterministic):
    """value as a (N, M, S, D) array seen as (N, S, M, D); every float input with doubled
    strides; or value starting one element into its buffer (no 16-byte vector loads)."""
    case = Case(N=2, levels=((5, 6), (3, 4)), M=3, D=16, P=3, Lq=11, align_corners=True,
                dtype=np.float64, seed=3, special_fraction=0.1, nonfinite_fraction=0.05)
    placed, inputs64 = problem(case, device, dtype)
    if layout == "misaligned":
        placed["value"] = restrided(placed["value"], "misaligned")
        assert data_address(placed["value"]) % 16 != 0
    else:
        placed["value"] = restrided(placed["value"], "transposed")
        assert not is_contiguous(placed["value"])
    if layout == "all_doubled":
        for key in ("sampling_locations", "attention_weights", "grad_output"):
            placed[key] = restrided(placed[key], "doubled")
            assert not is_contiguous(placed[key])
    results = run(placed, case.align_corners, deterministic)
    _check(results, placed, inputs64, case, dtype, what=f"{layout}: ")


# ----------------------------------------------------------------------------- determinism

@pytest.mark.parametrize("device,dtype", ALL)
def test_forward_is_reproducible(device, dtype):
    _, inputs = contended_inputs()
    placed = place(inputs, device, dtype)
    assert_same_bits([forward(placed)], [forward(placed)], "forward run to run")


@pytest.mark.parametrize("device,dtype", ALL)
def test_deterministic_keyword(device, dtype):
    """The location and weight gradients do not depend on the mode, bitwise; grad_value
    is bitwise the same on the CPU (always deterministic) and within the SPEC tolerance on
    CUDA (atomic additions in another order)."""
    case, inputs = contended_inputs()
    placed = place(inputs, device, dtype)
    atomic = backward(placed, deterministic=False)
    ordered = backward(placed, deterministic=True)
    assert_same_bits(atomic[1:], ordered[1:], "deterministic=False vs True")
    if device == "cpu":
        assert_same_bits(atomic, ordered, "deterministic=False vs True")
    assert_results_close(atomic[:1], ordered[:1], rounded(placed), case.levels, False, dtype,
                         "atomic vs deterministic: ", names=RESULTS[1:2])


# ----------------------------------------------------------------------------- finite differences

FD_CONFIGS = [
    # (N, levels, M, D, P, Lq)
    (1, ((3, 4),), 1, 1, 1, 3),
    (2, ((3, 4), (1, 1), (2, 5)), 2, 3, 2, 4),
    (1, ((4, 1), (1, 6), (2, 2)), 3, 5, 3, 2),
]
# Entries of value / attention_weights to probe per config (all of them when fewer).
MAX_PROBES = 60


def _fd_problem(rng, N, levels, M, D, P, Lq, align_corners):
    S = sum(h * w for h, w in levels)
    loc = make_locations(rng, N, Lq, M, levels, P, align_corners)
    move_off_integers(loc, levels, align_corners, rng, margin=1e-2)
    return dict(
        value=rng.standard_normal((N, S, M, D)),
        spatial_shapes=np.asarray(levels, dtype=np.int64),
        level_start_index=level_start_index(levels),
        sampling_locations=loc,
        attention_weights=rng.uniform(-0.5, 1.0, size=(N, Lq, M, len(levels), P)),
        grad_output=rng.standard_normal((N, Lq, M * D)),
    )


def _probe_indices(rng, shape, limit):
    every = list(np.ndindex(shape))
    if len(every) <= limit:
        return every
    picks = rng.choice(len(every), size=limit, replace=False)
    return [every[i] for i in picks]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("config", FD_CONFIGS,
                         ids=lambda c: f"N{c[0]}L{len(c[1])}M{c[2]}D{c[3]}P{c[4]}Lq{c[5]}")
@pytest.mark.parametrize("device,dtype", FLOAT64)
def test_gradients_match_finite_differences(device, dtype, config, align_corners):
    """Central differences in float64 through the backend's own forward, against its
    backward (no reference involved). The loss <grad_output, out> is linear in value and
    attention_weights, and inside one bilinear cell linear in each pixel coordinate, so
    central differences are exact up to rounding once the points sit away from integer
    pixel coordinates (and so from the -1 / H skip boundaries)."""
    rng = np.random.default_rng(hash((config, align_corners)) % 2**32)
    p = _fd_problem(rng, *config, align_corners)

    def loss():
        out = forward(place(p, device, dtype), align_corners)
        return float(np.sum(host64(out) * p["grad_output"]))

    grads = backward(place(p, device, dtype), align_corners)
    analytic = dict(zip(("value", "sampling_locations", "attention_weights"), map(host64, grads)))

    # A 1e-6 step moves a pixel coordinate by at most 6e-6, well inside the 1e-2 margin
    # kept from integers.
    for name, step, limit in (("value", 1e-3, MAX_PROBES),
                              ("attention_weights", 1e-3, MAX_PROBES),
                              ("sampling_locations", 1e-6, None)):
        x = p[name]
        indices = _probe_indices(rng, x.shape, limit if limit is not None else x.size)
        numeric = np.array([central_difference(loss, x, index, step) for index in indices])
        got = np.array([analytic[name][index] for index in indices])
        scale = max(np.max(np.abs(got)), np.max(np.abs(numeric)))
        assert scale > 0, f"{name}: all probed gradients are zero"
        err = np.max(np.abs(numeric - got)) / scale
        assert err < 1e-7, f"{name}: finite-difference relative error {err:.2e}"
