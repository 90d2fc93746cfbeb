"""One check, one message: a table of bad calls gives the same error type and the same
message, word for word, from NumPy, torch eager, torch under FakeTensorMode (what
torch.compile and torch.export trace with), JAX under jit and the C API (reached through
the function table msdacore._core exports). Every front end asks the core
(msdacore::check_inputs, or msdacore::check_shapes where no data exists yet)."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import msdacore
from msdacore import _core

LEVELS = ((4, 5), (2, 3))
S = sum(h * w for h, w in LEVELS)
N, M, D, Lq, P = 2, 2, 3, 4, 2


def base() -> dict:
    """A valid float32 call, as keyword arguments of msdacore.ms_deform_attn."""
    rng = np.random.default_rng(0)
    return dict(
        value=rng.standard_normal((N, S, M, D)).astype(np.float32),
        spatial_shapes=np.array(LEVELS, np.int64),
        level_start_index=np.array([0, 20], np.int64),
        sampling_locations=rng.uniform(0, 1, (N, Lq, M, len(LEVELS), P, 2)).astype(np.float32),
        attention_weights=rng.uniform(0, 1, (N, Lq, M, len(LEVELS), P)).astype(np.float32),
        align_corners=False, mode="bilinear", points_per_level=None)


def case(**changes):
    def make():
        call = base()
        for name, change in changes.items():
            call[name] = change(call[name]) if callable(change) else change
        return call
    return make


LOC_FLAT = np.zeros((N, Lq, M, 5, 2), np.float32)
ATTN_FLAT = np.zeros((N, Lq, M, 5), np.float32)

# name -> (the call, whether the error depends on the index arrays' values, which a
# fake tensor does not have)
BAD_CALLS = {
    "value_rank": (case(value=lambda v: v[0]), False),
    "value_heads": (case(value=lambda v: v[:, :, :1]), False),
    "locations_points": (case(sampling_locations=lambda x: x[:, :, :, :, :1]), False),
    "locations_batch": (case(sampling_locations=lambda x: x[:1]), False),
    "locations_last_axis": (case(sampling_locations=lambda x: x[..., :1]), False),
    "weights_shape": (case(attention_weights=lambda x: x[:, :3]), False),
    "spatial_shapes_rank": (case(spatial_shapes=np.array([4, 5, 2, 3], np.int64)), False),
    "level_start_index_length": (case(level_start_index=np.array([0], np.int64)), False),
    "mixed_dtypes": (case(sampling_locations=lambda x: x.astype(np.float16)), False),
    "integer_value": (case(value=lambda v: v.astype(np.int32)), False),
    "float_index": (case(spatial_shapes=np.array(LEVELS, np.float32)), False),
    "mode_name": (case(mode="nearest"), False),
    "discrete_align_corners": (case(mode="discrete", align_corners=True), False),
    "zero_points_per_level": (case(points_per_level=[0, 5], sampling_locations=LOC_FLAT,
                                   attention_weights=ATTN_FLAT), False),
    "points_per_level_length": (case(points_per_level=[5], sampling_locations=LOC_FLAT,
                                     attention_weights=ATTN_FLAT), False),
    "flattened_total": (case(points_per_level=[2, 2], sampling_locations=LOC_FLAT,
                             attention_weights=ATTN_FLAT), False),
    "level_starts": (case(level_start_index=np.array([0, 19], np.int64)), True),
    "tokens": (case(spatial_shapes=np.array([(4, 5), (2, 2)], np.int64)), True),
    "empty_level": (case(spatial_shapes=np.array([(4, 5), (0, 3)], np.int64)), True),
}


def numpy_error(call):
    with pytest.raises((ValueError, TypeError)) as info:
        msdacore.ms_deform_attn(**call)
    return type(info.value), str(info.value)


@pytest.fixture(scope="module")
def expected():
    return {name: numpy_error(make()) for name, (make, _) in BAD_CALLS.items()}


def test_the_table_is_large_and_its_messages_name_arguments(expected):
    assert len(expected) >= 12
    for _error_type, message in expected.values():
        assert any(name in message for name in ("value", "sampling_locations",
                                                "attention_weights", "spatial_shapes",
                                                "level_start_index", "mode", "points_per_level",
                                                "align_corners"))


# ---- torch --------------------------------------------------------------------------------

def _torch_args(call, torch):
    tensors = [torch.from_numpy(np.ascontiguousarray(call[name])) for name in
               ("value", "spatial_shapes", "level_start_index", "sampling_locations",
                "attention_weights")]
    return tensors, dict(align_corners=call["align_corners"], mode=call["mode"],
                         points_per_level=call["points_per_level"])


@pytest.mark.parametrize("name", BAD_CALLS)
def test_torch_eager_gives_the_same_message(name, expected):
    torch = pytest.importorskip("torch")
    import msdacore.torch as mt

    tensors, options = _torch_args(BAD_CALLS[name][0](), torch)
    with pytest.raises(expected[name][0]) as info:
        mt.ms_deform_attn(*tensors, **options)
    assert str(info.value) == expected[name][1]


@pytest.mark.parametrize("name", BAD_CALLS)
def test_torch_fake_tensors_give_the_same_message(name, expected):
    torch = pytest.importorskip("torch")
    from torch._subclasses.fake_tensor import FakeTensorMode

    import msdacore.torch  # noqa: F401 - registers torch.ops.msdacore

    make, needs_values = BAD_CALLS[name]
    tensors, options = _torch_args(make(), torch)
    op_args = (options["align_corners"], False, options["mode"], options["points_per_level"])
    with FakeTensorMode() as mode:
        fakes = [mode.from_tensor(t) for t in tensors]
        if needs_values:  # unknown while tracing: the real call checks them
            torch.ops.msdacore.ms_deform_attn(*fakes, *op_args)
            return
        with pytest.raises(expected[name][0]) as info:
            torch.ops.msdacore.ms_deform_attn(*fakes, *op_args)
    assert str(info.value) == expected[name][1]


# ---- JAX ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", BAD_CALLS)
def test_jax_jit_gives_the_same_message(name, expected):
    jax = pytest.importorskip("jax")
    import msdacore.jax as mj

    call = BAD_CALLS[name][0]()
    static = {k: call.pop(k) for k in ("spatial_shapes", "level_start_index", "align_corners",
                                       "mode", "points_per_level")}

    @jax.jit
    def run(value, sampling_locations, attention_weights):
        return mj.ms_deform_attn(value, static["spatial_shapes"], static["level_start_index"],
                                 sampling_locations, attention_weights,
                                 align_corners=static["align_corners"], mode=static["mode"],
                                 points_per_level=static["points_per_level"])

    with pytest.raises(expected[name][0]) as info:
        run(call["value"], call["sampling_locations"], call["attention_weights"])
    assert str(info.value) == expected[name][1]


# ---- the C API ----------------------------------------------------------------------------

class _Tensor(ctypes.Structure):  # msdacore_tensor
    _fields_ = [("data", ctypes.c_void_p), ("ndim", ctypes.c_int32),
                ("shape", ctypes.c_int64 * 8), ("strides", ctypes.c_int64 * 8),
                ("dtype", ctypes.c_int32), ("device_type", ctypes.c_int32),
                ("device_index", ctypes.c_int32)]


class _Options(ctypes.Structure):  # msdacore_options
    _fields_ = [("struct_size", ctypes.c_int64), ("align_corners", ctypes.c_int32),
                ("stream", ctypes.c_void_p), ("deterministic", ctypes.c_int32),
                ("mode", ctypes.c_int32), ("points_per_level", ctypes.POINTER(ctypes.c_int64)),
                ("num_levels", ctypes.c_int64), ("workspace", ctypes.c_void_p),
                ("workspace_bytes", ctypes.c_int64)]


_P = ctypes.POINTER
_STATUS = ctypes.c_int
_TABLE_FIELDS = [
    ("struct_size", ctypes.c_int64),
    ("version", ctypes.CFUNCTYPE(ctypes.c_char_p)),
    ("check_inputs", ctypes.c_void_p),
    ("forward_workspace_size", ctypes.c_void_p),
    ("backward_workspace_size", ctypes.c_void_p),
    ("forward", ctypes.CFUNCTYPE(_STATUS, *[_P(_Tensor)] * 6, _P(_Options))),
    ("backward", ctypes.c_void_p),
    ("last_error", ctypes.CFUNCTYPE(ctypes.c_char_p)),
    ("status_name", ctypes.c_void_p),
    ("check_shapes", ctypes.c_void_p),
    ("options_init", ctypes.CFUNCTYPE(_STATUS, _P(_Options))),
    ("mode_from_name", ctypes.CFUNCTYPE(_STATUS, ctypes.c_char_p, _P(ctypes.c_int32))),
]


class _Table(ctypes.Structure):  # the head of msdacore_c_api_table
    _fields_ = _TABLE_FIELDS


def _table() -> _Table:
    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = _Table.from_address(get_pointer(_core.c_api, b"msdacore.c_api"))
    assert table.struct_size >= ctypes.sizeof(_Table)
    return table


_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3, "int32": 4, "int64": 5}
# msdacore_status -> the Python error of the same failure (SPEC "Errors")
_ERRORS = {1: ValueError, 2: TypeError, 3: ValueError, 4: ValueError}


def _tensor(array: np.ndarray) -> _Tensor:
    t = _Tensor()
    t.data = array.ctypes.data
    t.ndim = array.ndim
    for d in range(array.ndim):
        t.shape[d] = array.shape[d]
        t.strides[d] = array.strides[d] // array.itemsize
    t.dtype = _CODES[array.dtype.name]
    return t


def c_api_error(call):
    table = _table()
    options = _Options()
    assert table.options_init(ctypes.byref(options)) == 0
    options.align_corners = int(call["align_corners"])
    mode = ctypes.c_int32()
    if table.mode_from_name(call["mode"].encode(), ctypes.byref(mode)) != 0:
        return ValueError, table.last_error().decode()
    options.mode = mode.value
    counts = None
    if call["points_per_level"] is not None:
        counts = (ctypes.c_int64 * len(call["points_per_level"]))(*call["points_per_level"])
        options.points_per_level = counts
        options.num_levels = len(call["points_per_level"])
    arrays = [np.ascontiguousarray(call[name]) for name in
              ("value", "spatial_shapes", "level_start_index", "sampling_locations",
               "attention_weights")]
    output = np.zeros((N, Lq, M * D), np.float32)
    tensors = [_tensor(a) for a in arrays + [output]]
    status = table.forward(*[ctypes.byref(t) for t in tensors], ctypes.byref(options))
    assert status != 0, "the C API accepted a bad call"
    return _ERRORS.get(status, RuntimeError), table.last_error().decode()


@pytest.mark.parametrize("name", BAD_CALLS)
def test_c_api_gives_the_same_message(name, expected):
    call = BAD_CALLS[name][0]()
    if name == "points_per_level_length":
        pytest.skip("the C API refuses options.num_levels against L before reading the "
                    "counts, in its own words (test_c_api.c)")
    assert c_api_error(call) == expected[name]
