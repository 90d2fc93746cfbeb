"""Every SPEC error case gets a clear ValueError / TypeError, and inputs are never
modified, not even by a failing call."""

from __future__ import annotations

import re

import numpy as np
import pytest
from devices import FLOATS
from strategies import Case, copies, make_inputs

import msdacore

# N=2, S=20+9+4=33, M=3, D=5, Lq=7, L=3, P=2; level starts [0, 20, 29].
BASE = Case(N=2, levels=((4, 5), (3, 3), (2, 2)), M=3, D=5, P=2, Lq=7, align_corners=False,
            dtype=np.float64, seed=3, special_fraction=0.0, nonfinite_fraction=0.0)
ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights")


def _inputs(**changes):
    inputs = make_inputs(BASE)
    inputs.update(changes)
    return inputs


def _call(inputs, backward):
    args = [inputs[k] for k in ARGS]
    if backward:
        return msdacore.ms_deform_attn_backward(*args, inputs["grad_output"])
    return msdacore.ms_deform_attn(*args)


def _shape(shape):
    """A shape as the messages print it: Python tuple style, "(3,)" for one axis."""
    return str(tuple(int(s) for s in shape))


def _raises(exc, inputs, match, backward_too=True):
    """The call raises exc matching match (forward and backward), inputs unchanged.
    Returns the last error message."""
    saved = copies({k: v for k, v in inputs.items() if isinstance(v, np.ndarray)})
    message = None
    for backward in ((False, True) if backward_too else (True,)):
        with pytest.raises(exc, match=match) as info:
            _call(inputs, backward)
        message = str(info.value)
        for k, v in saved.items():
            assert np.array_equal(inputs[k], v, equal_nan=True), f"{k} was modified"
    return message


def _assert_shape_error(inputs, arg, symbols, expected, got, backward_too=True):
    """ValueError naming the argument, the symbolic shape, the numbers it implies
    (when known) and the received shape."""
    message = _raises(ValueError, inputs, rf"\b{arg}\b", backward_too)
    assert f"({symbols})" in message, message
    if expected is not None:
        assert _shape(expected) in message, message
    assert f"got {_shape(got)}" in message, message


# ---------------------------------------------------------------------------
# Wrong rank or shape


def test_spec_example_message_exactly():
    case = Case(N=2, levels=((4, 4), (2, 2), (1, 1), (1, 2)), M=8, D=4, P=4, Lq=100,
                align_corners=False, dtype=np.float32, seed=0, special_fraction=0.0,
                nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    inputs["sampling_locations"] = inputs["sampling_locations"][:, :, :, :, 0]  # (2, 100, 8, 4, 2)
    expected = ("sampling_locations must have shape (N, Lq, M, L, P, 2) = (2, 100, 8, 4, 4, 2), "
                "got (2, 100, 8, 4, 2)")
    _raises(ValueError, inputs, re.escape(expected))


def _reshaped(key, shape):
    return _inputs(**{key: np.zeros(shape, dtype=np.float64)})


@pytest.mark.parametrize("shape", [(2, 33, 15), (2, 33, 3, 5, 1), (33,)])
def test_value_rank(shape):
    _assert_shape_error(_reshaped("value", shape), "value", "N, S, M, D", None, shape)


@pytest.mark.parametrize("shape", [(6,), (3, 3), (3, 2, 1)])
def test_spatial_shapes_shape(shape):
    inputs = _inputs(spatial_shapes=np.ones(shape, dtype=np.int64))
    _assert_shape_error(inputs, "spatial_shapes", "L, 2", None, shape)


@pytest.mark.parametrize("shape", [(2,), (4,), (3, 1)])
def test_level_start_index_shape(shape):
    inputs = _inputs(level_start_index=np.zeros(shape, dtype=np.int64))
    _assert_shape_error(inputs, "level_start_index", "L,", (3,), shape)


@pytest.mark.parametrize("shape", [
    (2, 7, 3, 3, 2, 3),  # last axis not (x, y)
    (1, 7, 3, 3, 2, 2),  # N differs from value
    (2, 7, 4, 3, 2, 2),  # M differs from value
    (2, 7, 3, 2, 2, 2),  # L differs from spatial_shapes
    (2, 7, 3, 3, 2, 2, 1),  # rank 7
])
def test_sampling_locations_shape(shape):
    _assert_shape_error(_reshaped("sampling_locations", shape), "sampling_locations",
                        "N, Lq, M, L, P, 2", (2, 7, 3, 3, 2, 2), shape)


@pytest.mark.parametrize("shape", [
    (2, 7, 3, 3, 3),  # P differs from sampling_locations
    (2, 8, 3, 3, 2),  # Lq differs
    (2, 7, 3, 6),  # rank 4
    (2, 7, 3, 3, 2, 1),  # rank 6
])
def test_attention_weights_shape(shape):
    _assert_shape_error(_reshaped("attention_weights", shape), "attention_weights",
                        "N, Lq, M, L, P", (2, 7, 3, 3, 2), shape)


@pytest.mark.parametrize("shape", [(2, 7, 16), (2, 7, 3, 5), (2, 6, 15), (7, 15)])
def test_grad_output_shape(shape):
    _assert_shape_error(_reshaped("grad_output", shape), "grad_output", "N, Lq, M*D",
                        (2, 7, 15), shape, backward_too=False)


# ---------------------------------------------------------------------------
# Sizes that must be >= 1


def _with_sizes(M=3, D=5, P=2, levels=((4, 5), (3, 3), (2, 2)), S=None):
    L = len(levels)
    S = sum(h * w for h, w in levels) if S is None else S
    starts = np.concatenate([[0], np.cumsum([h * w for h, w in levels])[:-1]]).astype(np.int64)
    return dict(
        value=np.ones((2, S, M, D)),
        spatial_shapes=np.asarray(levels, dtype=np.int64).reshape(L, 2),
        level_start_index=starts[:L],
        sampling_locations=np.full((2, 7, M, L, P, 2), 0.5),
        attention_weights=np.ones((2, 7, M, L, P)),
        grad_output=np.ones((2, 7, M * D)),
    )


@pytest.mark.parametrize("sizes,pattern", [
    (dict(M=0), r"\bvalue\b.*\bM\b.*got \(2, 33, 0, 5\)"),
    (dict(D=0), r"\bvalue\b.*\bD\b.*got \(2, 33, 3, 0\)"),
    (dict(P=0), r"\bP\b.*got \(2, 7, 3, 3, 0, 2\)"),
    (dict(levels=(), S=33), r"\bspatial_shapes\b.*\bL\b.*got \(0, 2\)"),
    (dict(S=0), r"\bvalue\b.*\bS\b.*got \(2, 0, 3, 5\)"),
], ids=["M0", "D0", "P0", "L0", "S0"])
def test_zero_sizes(sizes, pattern):
    _raises(ValueError, _with_sizes(**sizes), pattern)


@pytest.mark.parametrize("levels", [
    ((0, 5), (3, 3), (2, 2)),
    ((4, 5), (3, 0), (2, 2)),
    ((-4, -5), (3, 3), (2, 2)),  # H*W = 20 still, but negative sizes
    ((4, 5), (3, 3), (-2, 2)),
])
def test_nonpositive_spatial_shapes(levels):
    inputs = _inputs(spatial_shapes=np.asarray(levels, dtype=np.int64))
    message = _raises(ValueError, inputs, r"\bspatial_shapes\b")
    bad = next((h, w) for h, w in levels if h < 1 or w < 1)
    assert f"({bad[0]}, {bad[1]})" in message, message


# ---------------------------------------------------------------------------
# Dtypes


def _astype(inputs, keys, dtype):
    return {k: (v.astype(dtype) if k in keys else v) for k, v in inputs.items()}


def test_mixed_precision_only_with_a_half_value():
    """float32 locations / weights are allowed with a half value, not other mixes."""
    inputs = _astype(_astype(_inputs(), FLOATS, np.float16), ("sampling_locations",),
                     np.float64)
    _raises(TypeError, inputs, r"or float32 sampling_locations and attention_weights with a "
                               r"half value\), got float16, float64 and float16")
    inputs = _astype(_inputs(), ("attention_weights",), np.float16)
    _raises(TypeError, inputs, r"must have the same dtype, got float64, float64 and float16")


@pytest.mark.parametrize("odd", ["value", "sampling_locations", "attention_weights"])
def test_mixed_float_dtypes(odd):
    inputs = _astype(_inputs(), (odd,), np.float32)
    message = _raises(TypeError, inputs, r"float32")
    assert "float64" in message, message
    assert odd in message, message


def test_grad_output_dtype_differs():
    inputs = _astype(_inputs(), ("grad_output",), np.float32)
    message = _raises(TypeError, inputs, r"\bgrad_output\b", backward_too=False)
    assert "float32" in message and "float64" in message, message


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_, np.uint8, np.complex128])
@pytest.mark.parametrize("key", ["value", "sampling_locations"])
def test_non_float_arrays(key, dtype):
    inputs = _astype(_inputs(), (key,), dtype)
    _raises(TypeError, inputs, rf"\b{key}\b")


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint64, np.bool_])
@pytest.mark.parametrize("key", ["spatial_shapes", "level_start_index"])
def test_index_array_dtypes(key, dtype):
    inputs = _astype(_inputs(), (key,), dtype)
    _raises(TypeError, inputs, rf"\b{key}\b")


# ---------------------------------------------------------------------------
# spatial_shapes / level_start_index consistency


@pytest.mark.parametrize("starts", [[0, 20, 28], [1, 21, 30], [0, 29, 20], [0, 0, 0]])
def test_inconsistent_level_start_index(starts):
    inputs = _inputs(level_start_index=np.asarray(starts, dtype=np.int64))
    message = _raises(ValueError, inputs, re.escape("[0, 20, 29]"))
    assert "level_start_index" in message, message
    assert str(starts) in message, message


def test_inconsistent_level_start_index_as_list():
    inputs = _inputs(spatial_shapes=[[4, 5], [3, 3], [2, 2]], level_start_index=[0, 20, 30])
    _raises(ValueError, inputs, re.escape("[0, 20, 29]"))


@pytest.mark.parametrize("levels,total", [(((4, 5), (3, 3), (2, 3)), 35),
                                          (((4, 5), (3, 3), (1, 1)), 30)])
def test_sum_of_level_sizes_differs_from_S(levels, total):
    inputs = _inputs(spatial_shapes=np.asarray(levels, dtype=np.int64))
    message = _raises(ValueError, inputs, rf"\b{total}\b")
    assert re.search(r"\b33\b", message), message  # value's S


def test_level_sizes_that_overflow_int64():
    """2^32 x 2^32 wraps to 0 in 64-bit arithmetic: a level that would make the
    level starts and S look consistent to unchecked code must still be refused."""
    inputs = _inputs(spatial_shapes=np.array([[2**32, 2**32], [4, 5], [3, 3]], dtype=np.int64),
                     level_start_index=np.array([0, 0, 20], dtype=np.int64),
                     value=np.ones((2, 29, 3, 5)))
    _raises(ValueError, inputs, r"\blevel_start_index\b|\bspatial_shapes\b")


def test_huge_level_sizes():
    big = 2**63 - 1
    inputs = _inputs(spatial_shapes=np.array([[2**40, 2**40], [3, 3], [2, 2]], dtype=np.int64),
                     level_start_index=np.array([0, big, big], dtype=np.int64))
    _raises(ValueError, inputs, r"\blevel_start_index\b|\bspatial_shapes\b")


# ---------------------------------------------------------------------------
# Objects that are not arrays


@pytest.mark.parametrize("key", ["value", "sampling_locations", "attention_weights", "grad_output"])
@pytest.mark.parametrize("thing", ["not an array", None, object()], ids=["str", "None", "object"])
def test_non_array_objects(key, thing):
    inputs = _inputs(**{key: thing})
    _raises(TypeError, inputs, rf"\b{key}\b", backward_too=key != "grad_output")


@pytest.mark.parametrize("key", ["spatial_shapes", "level_start_index"])
@pytest.mark.parametrize("thing", ["not an array", None, object()], ids=["str", "None", "object"])
def test_non_array_index_objects(key, thing):
    _raises(TypeError, _inputs(**{key: thing}), rf"\b{key}\b")


def test_valid_inputs_do_not_raise():
    """The base problem of this file is valid: the errors above come from the one change."""
    inputs = _inputs()
    out = _call(inputs, False)
    assert out.shape == (2, 7, 15)
    grads = _call(inputs, True)
    assert [g.shape for g in grads] == [(2, 33, 3, 5), (2, 7, 3, 3, 2, 2), (2, 7, 3, 3, 2)]


def test_level_sizes_adding_past_int64_are_refused():
    """H*W of 2^64 with a value broadcast over 2^63 - 1 tokens (torch allows such a view,
    NumPy does not): a ValueError, not a saturated sum that happens to equal S."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    value = torch.ones(1, 1, 1, 1, dtype=torch.float64).expand(1, 2**63 - 1, 1, 1)
    loc = torch.full((1, 1, 1, 1, 1, 2), 0.5, dtype=torch.float64)
    attn = torch.ones(1, 1, 1, 1, 1, dtype=torch.float64)
    with pytest.raises(ValueError,
                       match=r"spatial_shapes\[0\] = \(4611686018427387904, 4\).*2\^63"):
        msdacore.ms_deform_attn(value, [[2**62, 4]], [0], loc, attn)


@pytest.mark.parametrize("n", [0, -1, 1025, 20000])
def test_thread_count_out_of_range(n):
    before = msdacore.get_num_threads()
    with pytest.raises(ValueError, match=rf"num_threads must be between 1 and 1024, got {n}"):
        msdacore.set_num_threads(n)
    assert msdacore.get_num_threads() == before
