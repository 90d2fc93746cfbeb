"""The CUDA backend.

GPU tests (skipped, with the reason, unless msdacore was built with CUDA kernels, a CUDA
device is visible and torch has CUDA): CUDA against the CPU backend and the float64
reference for every dtype with SPEC tolerances, both align_corners values, both backward
modes; the deterministic backward bitwise reproducible; strided inputs, many levels,
any D, empty problems; results of the input's kind on the input's device (also on a
second GPU); the stream argument; inputs on different devices.

CPU-side tests (run everywhere): the stream and deterministic keywords on the CPU, the
CUDA keys of build_info(), stream-argument parsing, and a fake DLPack producer that claims
to be on a CUDA device, which must give the SPEC ValueError (no kernels in this build, no
device visible, or memory that is not CUDA memory) and never a crash.
"""

from __future__ import annotations

import ctypes
import dataclasses
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import msdacore
from msdacore import _arrays
from strategies import (
    Case,
    assert_close,
    away_from_integers,
    backward_args,
    cases,
    forward_args,
    load_reference,
    make_inputs,
    term_scales,
)

ref = load_reference()
INFO = msdacore.build_info()

try:
    import torch
except ImportError:  # the CPU-side tests below do not need it
    torch = None


def _gpu_skip_reason():
    if not INFO.get("cuda_kernels"):
        return ("msdacore was built without CUDA kernels (build_info()['cuda_kernels'] is "
                "False): build with a CUDA compiler on the PATH")
    if INFO.get("cuda_devices", 0) == 0:
        return "no CUDA device is visible to this process (build_info()['cuda_devices'] == 0)"
    if torch is None:
        return "torch is not installed (the GPU tests use torch CUDA tensors)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA support or sees no CUDA device"
    return None


GPU_SKIP = _gpu_skip_reason()

# MSDACORE_CUDA_TEST_EXAMPLES=k caps the hypothesis examples of the GPU property tests
# (scripts/cuda_check.sh sets it under compute-sanitizer, which is slow).
_EXAMPLES = int(os.environ.get("MSDACORE_CUDA_TEST_EXAMPLES", "0") or 0)


def _examples(test):
    return settings(max_examples=_EXAMPLES)(test) if _EXAMPLES > 0 else test

needs_gpu = pytest.mark.skipif(GPU_SKIP is not None, reason=GPU_SKIP or "")

# SPEC tolerances, max|a - b| / max|ref|.
TOL = {"float64": 1e-12, "float32": 5e-5, "float16": 1e-2, "bfloat16": 5e-2}
NAMES = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
FLOATS = ("value", "sampling_locations", "attention_weights", "grad_output")


# ----------------------------------------------------------------------------- helpers

def _torch_dtype(name):
    return getattr(torch, name)


def _to_gpu(inputs, dtype_name, device="cuda"):
    """Float arrays as torch tensors of dtype_name on device; index arrays stay NumPy."""
    out = {}
    for key, val in inputs.items():
        if key in FLOATS:
            out[key] = torch.from_numpy(np.ascontiguousarray(val)).to(
                device=device, dtype=_torch_dtype(dtype_name))
        else:
            out[key] = val
    return out


def _np64(t):
    return t.detach().to(device="cpu", dtype=torch.float64).numpy()


def _rounded_inputs(gpu_inputs, inputs):
    """The float64 values the GPU computes on (after rounding to its dtype)."""
    out = dict(inputs)
    for key in FLOATS:
        out[key] = _np64(gpu_inputs[key])
    return out


def _gpu_results(g, align_corners, deterministic=False):
    out = msdacore.ms_deform_attn(*forward_args(g), align_corners=align_corners)
    grads = msdacore.ms_deform_attn_backward(*backward_args(g), align_corners=align_corners,
                                             deterministic=deterministic)
    return (out,) + tuple(grads)


def _check_kind(results, g, dtype_name):
    device = g["value"].device
    for name, r in zip(NAMES, results):
        assert isinstance(r, torch.Tensor), f"{name}: {type(r)}"
        assert r.device == device, f"{name} on {r.device}, expected {device}"
        assert r.dtype == _torch_dtype(dtype_name), f"{name}: {r.dtype}"
        assert r.is_contiguous(), name


def _compare(results, expected, inputs64, levels, align_corners, dtype_name, what):
    """results (torch) against expected (arrays, float64 or the CPU backend's) with the
    SPEC tolerance of dtype_name; float32-or-lower comparisons get the term-size floor and
    skip location gradients at near-integer pixel coordinates (where the cell floor()
    picks legitimately differs between precisions)."""
    exact = dtype_name == "float64"
    floors = {k: 0.0 for k in NAMES} if exact else term_scales(inputs64)
    keep = None if exact else away_from_integers(inputs64["sampling_locations"], levels,
                                                 align_corners)
    for name, got, exp in zip(NAMES, results, expected):
        got64 = _np64(got)
        mask = keep if name == "grad_sampling_locations" else None
        assert_close(got64, np.asarray(exp, dtype=np.float64), np.float64, f"{what} {name}",
                     mask=mask, tol=TOL[dtype_name], floor=floors[name])


def _reference(inputs64, align_corners):
    out = ref.ms_deform_attn(*forward_args(inputs64), align_corners=align_corners)
    grads = ref.ms_deform_attn_backward(*backward_args(inputs64), align_corners=align_corners)
    return (out,) + tuple(grads)


def _cpu(inputs, align_corners):
    out = msdacore.ms_deform_attn(*forward_args(inputs), align_corners=align_corners)
    grads = msdacore.ms_deform_attn_backward(*backward_args(inputs), align_corners=align_corners)
    return (out,) + tuple(grads)


# ----------------------------------------------------------------------------- GPU tests

@needs_gpu
@_examples
@given(case=cases(max_D=70, dtypes=(np.float32, np.float64)), deterministic=st.booleans())
def test_cuda_matches_cpu_and_reference(case, deterministic):
    inputs = make_inputs(case)
    name = np.dtype(case.dtype).name
    g = _to_gpu(inputs, name)
    results = _gpu_results(g, case.align_corners, deterministic)
    _check_kind(results, g, name)
    _compare(results, _cpu(inputs, case.align_corners), inputs, case.levels, case.align_corners,
             name, "CUDA vs CPU:")
    inputs64 = {k: (v.astype(np.float64) if k in FLOATS else v) for k, v in inputs.items()}
    _compare(results, _reference(inputs64, case.align_corners), inputs64, case.levels,
             case.align_corners, name, "CUDA vs reference:")


@needs_gpu
@_examples
@given(case=cases(max_D=70, dtypes=(np.float32,)),
       dtype_name=st.sampled_from(("float16", "bfloat16")), deterministic=st.booleans())
def test_cuda_half_types_match_reference(case, dtype_name, deterministic):
    inputs = make_inputs(case)
    g = _to_gpu(inputs, dtype_name)
    results = _gpu_results(g, case.align_corners, deterministic)
    _check_kind(results, g, dtype_name)
    inputs64 = _rounded_inputs(g, inputs)
    _compare(results, _reference(inputs64, case.align_corners), inputs64, case.levels,
             case.align_corners, dtype_name, "CUDA vs reference:")


def _contended_case(dtype=np.float32, seed=5):
    """Many samples on few cells: the worst case for the order of atomic additions."""
    case = Case(N=2, levels=((6, 7), (3, 3)), M=2, D=40, P=4, Lq=600, align_corners=False,
                dtype=dtype, seed=seed, special_fraction=0.1, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    rng = np.random.default_rng(seed)
    loc = rng.uniform(0.3, 0.7, inputs["sampling_locations"].shape)
    inputs["sampling_locations"] = loc.astype(dtype)
    return case, inputs


@needs_gpu
@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "bfloat16"])
def test_deterministic_backward_is_bitwise_reproducible(dtype_name):
    case, inputs = _contended_case()
    g = _to_gpu(inputs, dtype_name)
    runs = [msdacore.ms_deform_attn_backward(*backward_args(g), deterministic=True)
            for _ in range(3)]
    for other in runs[1:]:
        for name, a, b in zip(NAMES[1:], runs[0], other):
            assert torch.equal(a, b), f"{name} differs between deterministic runs"
    # The atomic mode agrees within the tolerance, and its location and weight gradients
    # (reduced with a fixed shuffle order) are reproducible too.
    atomic = [msdacore.ms_deform_attn_backward(*backward_args(g)) for _ in range(2)]
    assert torch.equal(atomic[0][1], atomic[1][1])
    assert torch.equal(atomic[0][2], atomic[1][2])
    assert torch.equal(atomic[0][1], runs[0][1])
    assert torch.equal(atomic[0][2], runs[0][2])
    scale = float(runs[0][0].abs().max().float())
    diff = float((atomic[0][0].float() - runs[0][0].float()).abs().max())
    assert diff <= TOL[dtype_name] * scale


@needs_gpu
def test_forward_is_reproducible():
    _, inputs = _contended_case()
    g = _to_gpu(inputs, "float32")
    a = msdacore.ms_deform_attn(*forward_args(g))
    b = msdacore.ms_deform_attn(*forward_args(g))
    assert torch.equal(a, b)


@needs_gpu
@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("layout", ["value_strided", "all_strided", "misaligned"])
def test_strided_inputs(layout, deterministic):
    case = Case(N=2, levels=((5, 6), (3, 4)), M=3, D=16, P=3, Lq=11, align_corners=True,
                dtype=np.float32, seed=3, special_fraction=0.1, nonfinite_fraction=0.05)
    inputs = make_inputs(case)
    g = _to_gpu(inputs, "float32")
    if layout == "misaligned":
        # A view starting one element into its storage: no 16-byte vector loads.
        v = g["value"]
        flat = torch.empty(v.numel() + 1, device=v.device, dtype=v.dtype)
        flat[1:] = v.reshape(-1)
        g["value"] = flat[1:].view(v.shape)
        assert g["value"].data_ptr() % 16 != 0
    else:
        # value as a (N, M, S, D) tensor transposed to (N, S, M, D).
        g["value"] = g["value"].transpose(1, 2).contiguous().transpose(1, 2)
        assert not g["value"].is_contiguous()
    if layout == "all_strided":
        for key in ("sampling_locations", "attention_weights", "grad_output"):
            t = g[key]
            g[key] = torch.stack([t, t], dim=-1)[..., 0]  # every stride doubled
            assert not g[key].is_contiguous()
    results = _gpu_results(g, case.align_corners, deterministic)
    _compare(results, _cpu(inputs, case.align_corners), inputs, case.levels,
             case.align_corners, "float32", f"{layout}:")


@needs_gpu
@pytest.mark.parametrize("D", [1, 3, 8, 33, 129, 300])
@pytest.mark.parametrize("dtype_name", ["float32", "float16"])
def test_any_channel_count(D, dtype_name):
    case = Case(N=1, levels=((7, 5), (2, 3)), M=2, D=D, P=2, Lq=9, align_corners=False,
                dtype=np.float32, seed=D, special_fraction=0.1, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    g = _to_gpu(inputs, dtype_name)
    for deterministic in (False, True):
        results = _gpu_results(g, case.align_corners, deterministic)
        inputs64 = _rounded_inputs(g, inputs)
        _compare(results, _reference(inputs64, case.align_corners), inputs64, case.levels,
                 case.align_corners, dtype_name, f"D={D}:")


@needs_gpu
@pytest.mark.parametrize("deterministic", [False, True])
def test_many_levels_use_the_device_level_table(deterministic):
    levels = tuple((1 + l % 4, 2 + l % 3) for l in range(11))  # more than 8 levels
    case = Case(N=2, levels=levels, M=2, D=8, P=2, Lq=7, align_corners=False,
                dtype=np.float64, seed=9, special_fraction=0.1, nonfinite_fraction=0.05)
    inputs = make_inputs(case)
    g = _to_gpu(inputs, "float64")
    results = _gpu_results(g, case.align_corners, deterministic)
    _compare(results, _reference(inputs, case.align_corners), inputs, case.levels,
             case.align_corners, "float64", "11 levels:")


@needs_gpu
@pytest.mark.parametrize("N,Lq", [(0, 5), (2, 0), (0, 0)])
def test_empty_problems(N, Lq):
    case = Case(N=N, levels=((3, 4),), M=2, D=5, P=2, Lq=Lq, align_corners=False,
                dtype=np.float32, seed=1, special_fraction=0.0, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    g = _to_gpu(inputs, "float32")
    for deterministic in (False, True):
        results = _gpu_results(g, False, deterministic)
        _check_kind(results, g, "float32")
        for name, r, e in zip(NAMES, results, _cpu(inputs, False)):
            assert tuple(r.shape) == e.shape, name
            assert np.array_equal(_np64(r), e), name  # grad_value is exactly zero when Lq = 0


@needs_gpu
def test_index_arrays_on_the_device_are_read_on_the_host():
    case = Case(N=1, levels=((4, 4), (2, 2)), M=2, D=8, P=2, Lq=5, align_corners=False,
                dtype=np.float32, seed=2, special_fraction=0.0, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    g = _to_gpu(inputs, "float32")
    g["spatial_shapes"] = torch.from_numpy(inputs["spatial_shapes"]).cuda()
    g["level_start_index"] = torch.from_numpy(inputs["level_start_index"]).to("cuda",
                                                                               torch.int32)
    out = msdacore.ms_deform_attn(*forward_args(g))
    expected = msdacore.ms_deform_attn(*forward_args(inputs))
    assert np.allclose(_np64(out), expected, rtol=0, atol=5e-5 * np.abs(expected).max())


@needs_gpu
def test_inputs_on_different_devices():
    case = Case(N=1, levels=((4, 4),), M=1, D=4, P=1, Lq=3, align_corners=False,
                dtype=np.float32, seed=4, special_fraction=0.0, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    g = _to_gpu(inputs, "float32")
    g["sampling_locations"] = g["sampling_locations"].cpu()
    with pytest.raises(ValueError, match="sampling_locations is on cpu but value is on cuda:"):
        msdacore.ms_deform_attn(*forward_args(g))
    g = _to_gpu(inputs, "float32")
    g["grad_output"] = g["grad_output"].cpu()
    with pytest.raises(ValueError, match="grad_output is on cpu but value is on cuda:"):
        msdacore.ms_deform_attn_backward(*backward_args(g))
    g = _to_gpu(inputs, "float32")
    g["value"] = g["value"].cpu()
    with pytest.raises(ValueError, match="sampling_locations is on cuda:.* but value is on cpu"):
        msdacore.ms_deform_attn(*forward_args(g))


@needs_gpu
@pytest.mark.skipif(torch is None or not torch.cuda.is_available() or
                    torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_runs_on_the_arrays_device():
    case = Case(N=2, levels=((6, 5), (3, 3)), M=2, D=16, P=3, Lq=13, align_corners=False,
                dtype=np.float32, seed=8, special_fraction=0.1, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    torch.cuda.set_device(0)
    g = _to_gpu(inputs, "float32", device="cuda:1")
    for deterministic in (False, True):
        results = _gpu_results(g, case.align_corners, deterministic)
        assert torch.cuda.current_device() == 0, "the current device was not restored"
        _check_kind(results, g, "float32")
        _compare(results, _cpu(inputs, case.align_corners), inputs, case.levels,
                 case.align_corners, "float32", "cuda:1:")
    mixed = _to_gpu(inputs, "float32", device="cuda:0")
    mixed["sampling_locations"] = mixed["sampling_locations"].to("cuda:1")
    with pytest.raises(ValueError, match="sampling_locations is on cuda:1 but value is on cuda:0"):
        msdacore.ms_deform_attn(*forward_args(mixed))


@needs_gpu
@pytest.mark.parametrize("explicit", [False, True])
def test_stream_argument_is_honoured(explicit):
    """Inputs written on a busy side stream; the call runs on that stream (as the current
    stream, or passed explicitly from outside it), and its results are read on the stream
    current afterwards. A launch on another stream, or a missing join back, reads
    unwritten data."""
    case = Case(N=2, levels=((16, 16), (8, 8)), M=4, D=32, P=4, Lq=256, align_corners=False,
                dtype=np.float32, seed=6, special_fraction=0.0, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    base = _to_gpu(inputs, "float32")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    expected = _cpu(inputs, False)
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keep the side stream busy for a while
        g = {k: (v * 1 if k in FLOATS else v) for k, v in base.items()}
        if not explicit:
            out = msdacore.ms_deform_attn(*forward_args(g))
            grads = msdacore.ms_deform_attn_backward(*backward_args(g))
            doubled = [out * 2] + [x * 2 for x in grads]  # read on the side stream
    if explicit:
        out = msdacore.ms_deform_attn(*forward_args(g), stream=side)
        grads = msdacore.ms_deform_attn_backward(*backward_args(g), stream=side.cuda_stream)
        doubled = [out * 2] + [x * 2 for x in grads]  # read on the default stream
    torch.cuda.synchronize()
    for name, got, exp in zip(NAMES, doubled, expected):
        assert_close(_np64(got) / 2, exp.astype(np.float64), np.float64, name, tol=5e-5,
                     floor=term_scales(inputs)[name])


@needs_gpu
def test_unknown_cuda_producer_gets_device_arrays():
    """A CUDA array of a framework msdacore has no allocator for: the core allocates the
    outputs and returns DLPack producers (DeviceArray), ready on any stream."""

    class Wrapped:
        def __init__(self, t):
            self.t = t

        def __dlpack__(self, **kwargs):
            return self.t.__dlpack__(**kwargs)

        def __dlpack_device__(self):
            return self.t.__dlpack_device__()

    case = Case(N=1, levels=((5, 5),), M=2, D=8, P=2, Lq=6, align_corners=False,
                dtype=np.float32, seed=12, special_fraction=0.0, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    g = {k: (Wrapped(v) if k in FLOATS else v) for k, v in _to_gpu(inputs, "float32").items()}
    out = msdacore.ms_deform_attn(*forward_args(g))
    assert type(out).__name__ == "DeviceArray"
    assert out.__dlpack_device__()[0] == 2 and tuple(out.shape) == (1, 6, 16)
    got = torch.from_dlpack(out)
    expected = msdacore.ms_deform_attn(*forward_args(inputs))
    assert np.allclose(_np64(got), expected, rtol=0, atol=5e-5 * np.abs(expected).max())


@needs_gpu
def test_cupy_arrays_if_installed():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    case = Case(N=1, levels=((5, 4), (2, 2)), M=2, D=8, P=2, Lq=6, align_corners=False,
                dtype=np.float32, seed=13, special_fraction=0.0, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    g = {k: (cupy.asarray(v) if k in FLOATS else v) for k, v in inputs.items()}
    out = msdacore.ms_deform_attn(*forward_args(g))
    assert isinstance(out, cupy.ndarray)
    expected = msdacore.ms_deform_attn(*forward_args(inputs))
    assert np.allclose(cupy.asnumpy(out), expected, rtol=0, atol=5e-5 * np.abs(expected).max())


# ----------------------------------------------------------------------------- CPU side

BASE = Case(N=2, levels=((4, 5), (2, 3)), M=2, D=6, P=2, Lq=7, align_corners=False,
            dtype=np.float64, seed=21, special_fraction=0.1, nonfinite_fraction=0.05)


@pytest.mark.parametrize("stream", [None, 0, 1, 2, 123456])
def test_stream_keyword_is_ignored_on_cpu(stream):
    inputs = make_inputs(BASE)
    plain = msdacore.ms_deform_attn(*forward_args(inputs))
    out = msdacore.ms_deform_attn(*forward_args(inputs), stream=stream)
    assert np.array_equal(out, plain, equal_nan=True)
    grads = msdacore.ms_deform_attn_backward(*backward_args(inputs), stream=stream)
    for a, b in zip(grads, msdacore.ms_deform_attn_backward(*backward_args(inputs))):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_deterministic_keyword_on_cpu(dtype):
    """The CPU backend is always deterministic: deterministic=True changes nothing."""
    inputs = make_inputs(dataclasses.replace(BASE, dtype=dtype))
    a = msdacore.ms_deform_attn_backward(*backward_args(inputs), deterministic=True)
    b = msdacore.ms_deform_attn_backward(*backward_args(inputs), deterministic=False)
    for x, y in zip(a, b):
        assert x.dtype == np.dtype(dtype)
        assert np.array_equal(x, y, equal_nan=True)


def test_build_info_cuda_keys():
    info = msdacore.build_info()
    for key in ("cuda_compiled", "cuda_kernels"):
        assert isinstance(info[key], bool), key
    for key in ("cuda_devices", "cuda_runtime_version"):
        assert isinstance(info[key], int) and info[key] >= 0, key
    if info["cuda_kernels"]:
        assert info["cuda_compiled"]
    if not info["cuda_compiled"]:
        assert not info["cuda_kernels"]
        assert info["cuda_devices"] == 0 and info["cuda_runtime_version"] == 0
    else:
        assert info["cuda_runtime_version"] > 0


def test_stream_handles():
    class TorchLike:
        cuda_stream = 0

    class CupyLike:
        ptr = 77

    assert _arrays.stream_handle(0) == 1  # DLPack: the legacy default stream is 1
    assert _arrays.stream_handle(1) == 1
    assert _arrays.stream_handle(2) == 2
    assert _arrays.stream_handle(0xDEAD) == 0xDEAD
    assert _arrays.stream_handle(TorchLike()) == 1
    assert _arrays.stream_handle(CupyLike()) == 77
    with pytest.raises(TypeError, match="stream must be None, an int"):
        _arrays.stream_handle(True)
    with pytest.raises(TypeError, match="stream must be None, an int"):
        _arrays.stream_handle("default")
    with pytest.raises(ValueError, match="stream must be a cudaStream_t value >= 0"):
        _arrays.stream_handle(-1)


# A DLPack producer that claims CUDA memory: a legacy "dltensor" capsule built with ctypes,
# whose data pointer is a host address nothing may read.

class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p),
                ("deleter", ctypes.c_void_p)]


_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]

_DL_CODES = {np.dtype(np.float32): (2, 32), np.dtype(np.float64): (2, 64),
             np.dtype(np.float16): (2, 16), np.dtype(np.int64): (0, 64)}


class FakeCudaArray:
    """Claims to be a C-contiguous array on cuda:<device>. Records the stream arguments of
    its __dlpack__ calls. Its memory (a small host buffer) must never be read as CUDA
    memory; a kernel touching it would fault."""

    def __init__(self, shape, dtype=np.float32, device=0):
        dtype = np.dtype(dtype)
        self.shape = tuple(shape)
        self.dtype = dtype
        self.device = device
        self.streams = []
        self._host = np.zeros(max(int(np.prod(shape)), 1), dtype=dtype)
        self._shape = (ctypes.c_int64 * max(len(shape), 1))(*shape)
        self._managed = _DLManagedTensor()
        t = self._managed.dl_tensor
        t.data = self._host.ctypes.data
        t.device = _DLDevice(2, device)  # kDLCUDA
        t.ndim = len(shape)
        code, bits = _DL_CODES[dtype]
        t.dtype = _DLDataType(code, bits, 1)
        t.shape = ctypes.cast(self._shape, ctypes.POINTER(ctypes.c_int64))
        t.strides = None
        t.byte_offset = 0
        self._managed.manager_ctx = None
        self._managed.deleter = None

    def __dlpack_device__(self):
        return (2, self.device)

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        if dl_device is not None or copy:
            raise BufferError("FakeCudaArray: no copies")
        self.streams.append(stream)
        return _capsule_new(ctypes.addressof(self._managed), b"dltensor", None)


def _fake_inputs(device=0, dtype=np.float32):
    case = dataclasses.replace(BASE, dtype=dtype)
    inputs = make_inputs(case)
    return {k: (FakeCudaArray(v.shape, v.dtype, device) if k in FLOATS else v)
            for k, v in inputs.items()}


def _expected_device_message(device):
    info = msdacore.build_info()
    if not info["cuda_kernels"]:
        return rf"value is on cuda:{device}, but this build of msdacore .*build msdacore with CUDA"
    if info["cuda_devices"] == 0:
        return rf"value is on cuda:{device}, but this build of msdacore sees no CUDA device"
    if device >= info["cuda_devices"]:
        return rf"value is on cuda:{device}, but only \d+ CUDA devices? (is|are) visible"
    return r"is said to be on cuda:\d+, but (its data pointer is ordinary host memory|CUDA does not know)"


@pytest.mark.parametrize("device", [0, 7])
def test_fake_cuda_producer_raises_value_error(device):
    g = _fake_inputs(device)
    pattern = _expected_device_message(device)
    with pytest.raises(ValueError, match=pattern):
        msdacore.ms_deform_attn(*forward_args(g))
    with pytest.raises(ValueError, match=pattern):
        msdacore.ms_deform_attn_backward(*backward_args(g), deterministic=True)
    with pytest.raises(ValueError, match=pattern):
        msdacore.ms_deform_attn_backward(*backward_args(g), stream=5)
    # Per the DLPack protocol the consumer stream was passed to every CUDA input: the
    # legacy default stream (1) for a framework msdacore does not know, else the given one.
    assert g["value"].streams == [1, 1, 5]
    assert g["grad_output"].streams == [1, 5]


def test_fake_cuda_half_types_raise_value_error():
    # float16 is a CUDA dtype: the device, not the dtype, is what this machine lacks.
    g = _fake_inputs(0, np.float16)
    with pytest.raises(ValueError, match=_expected_device_message(0)):
        msdacore.ms_deform_attn(*forward_args(g))


def test_fake_cuda_mixed_with_cpu_arrays():
    inputs = make_inputs(BASE)
    g = dict(inputs)
    g["sampling_locations"] = FakeCudaArray(inputs["sampling_locations"].shape, np.float64)
    with pytest.raises(ValueError, match="sampling_locations is on cuda:0 but value is on cpu"):
        msdacore.ms_deform_attn(*forward_args(g))


def test_fake_cuda_index_arrays_without_host_copy():
    inputs = make_inputs(BASE)
    g = dict(inputs)
    g["spatial_shapes"] = FakeCudaArray(inputs["spatial_shapes"].shape, np.int64)
    with pytest.raises(ValueError, match="spatial_shapes is on cuda:0, but msdacore reads "
                                         "spatial_shapes and level_start_index on the host"):
        msdacore.ms_deform_attn(*forward_args(g))


def test_bad_stream_arguments_for_cuda_arrays():
    g = _fake_inputs(0)
    with pytest.raises(TypeError, match="stream must be None"):
        msdacore.ms_deform_attn(*forward_args(g), stream="side")
    with pytest.raises(ValueError, match="stream must be a cudaStream_t value >= 0"):
        msdacore.ms_deform_attn(*forward_args(g), stream=-1)


def test_host_index_copies_device_arrays():
    class DeviceIndex:
        def __init__(self, host):
            self.host = host

        def __dlpack_device__(self):
            return (2, 0)

        def __dlpack__(self, **kwargs):
            raise BufferError("no export")

        def cpu(self):
            return self.host

    host = np.array([[3, 4]], dtype=np.int64)
    assert _arrays.host_index(DeviceIndex(host)) is host
    assert _arrays.host_index(host) is host
    assert _arrays.host_index([[3, 4]]) == [[3, 4]]


@settings(max_examples=20)
@given(case=cases(min_N=1, min_Lq=1, max_D=8))
def test_fake_cuda_never_crashes(case):
    """Whatever the sizes, a CUDA claim is rejected before any memory is touched."""
    inputs = make_inputs(case)
    g = {k: (FakeCudaArray(v.shape, v.dtype) if k in FLOATS else v) for k, v in inputs.items()}
    with pytest.raises(ValueError):
        msdacore.ms_deform_attn(*forward_args(g), align_corners=case.align_corners)
    with pytest.raises(ValueError):
        msdacore.ms_deform_attn_backward(*backward_args(g), align_corners=case.align_corners)
