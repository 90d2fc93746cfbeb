"""CUDA behaviour with no CPU counterpart. The operator's numbers on CUDA (every dtype,
both align_corners values, both backward modes, strided inputs, many levels, any D, empty
problems) are checked with the CPU's in test_core_ops.py, parametrised over device and dtype.

GPU tests (marker ``cuda``: skipped with the reason where no GPU is visible, failed where
one is visible but msdacore or torch cannot use it, see conftest.py): the deterministic
backward bitwise reproducible; results of the input's kind on the input's device (also on
a second GPU, or as DeviceArray for an unknown producer, or CuPy arrays); the stream
argument; index arrays on the device; inputs on different devices.

CPU-side tests (run everywhere): the stream keyword on the CPU, the CUDA keys of
build_info(), stream-argument parsing, the verdicts of conftest's CUDA check, and a fake
DLPack producer that claims to be on a CUDA device, which must give the SPEC ValueError
(no kernels in this build, no device visible, or memory that is not CUDA memory) and
never a crash.
"""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest
from conftest import NO_CUDA_ENV, cuda_device_count, cuda_verdict
from devices import (
    FLOATS,
    NAMES,
    assert_results_close,
    assert_same_bits,
    backward,
    check_kind,
    contended_inputs,
    forward,
    place,
    rounded,
    run,
)
from dlpack_ctypes import DLDataType, DLDevice, DLManagedTensor, RefusingProducer, legacy_capsule
from hypothesis import given, settings
from strategies import Case, backward_args, cases, forward_args, make_inputs

import msdacore
from msdacore import _arrays

try:
    import torch
except ImportError:  # the CPU-side tests below do not need it
    torch = None

cuda = pytest.mark.cuda


def _small(seed, **changes):
    """A small float64 problem without special locations."""
    fields = dict(N=1, levels=((5, 4), (2, 2)), M=2, D=8, P=2, Lq=6, align_corners=False,
                  dtype=np.float64, seed=seed, special_fraction=0.0, nonfinite_fraction=0.0)
    fields.update(changes)
    case = Case(**fields)
    return case, make_inputs(case)


def _assert_float32_close(got, inputs, align_corners=False, which="forward"):
    """got (a device's results) close, at the float32 tolerance, to the CPU backend's."""
    inputs32 = place(inputs, "cpu", "float32")
    levels = tuple(map(tuple, inputs["spatial_shapes"].tolist()))
    assert_results_close(got, run(inputs32, align_corners, which=which), rounded(inputs32),
                         levels, align_corners, "float32", names=NAMES[which])


# ----------------------------------------------------------------------------- GPU tests

@cuda
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16"])
def test_deterministic_backward_is_bitwise_reproducible(dtype):
    """The deterministic mode, bitwise, run to run; in the atomic mode the location and
    weight gradients too (reduced in a fixed shuffle order). That the two modes agree is
    test_core_ops.py::test_deterministic_keyword."""
    _, inputs = contended_inputs()
    g = place(inputs, "cuda", dtype)
    runs = [backward(g, deterministic=True) for _ in range(3)]
    for other in runs[1:]:
        assert_same_bits(runs[0], other, "deterministic runs")
    atomic = [backward(g) for _ in range(2)]
    assert_same_bits(atomic[0][1:], atomic[1][1:], "atomic runs' location and weight gradients")


@cuda
def test_index_arrays_on_the_device_are_read_on_the_host():
    _, inputs = _small(2, levels=((4, 4), (2, 2)), Lq=5)
    g = place(inputs, "cuda", "float32")
    g["spatial_shapes"] = torch.from_numpy(inputs["spatial_shapes"]).cuda()
    g["level_start_index"] = torch.from_numpy(inputs["level_start_index"]).to("cuda",
                                                                               torch.int32)
    _assert_float32_close([forward(g)], inputs)


@cuda
def test_inputs_on_different_devices():
    _, inputs = _small(4, levels=((4, 4),), M=1, D=4, P=1, Lq=3)
    g = place(inputs, "cuda", "float32")
    g["sampling_locations"] = g["sampling_locations"].cpu()
    with pytest.raises(ValueError, match="sampling_locations is on cpu but value is on cuda:"):
        forward(g)
    g = place(inputs, "cuda", "float32")
    g["grad_output"] = g["grad_output"].cpu()
    with pytest.raises(ValueError, match="grad_output is on cpu but value is on cuda:"):
        backward(g)
    g = place(inputs, "cuda", "float32")
    g["value"] = g["value"].cpu()
    with pytest.raises(ValueError, match="sampling_locations is on cuda:.* but value is on cpu"):
        forward(g)


@cuda
def test_runs_on_the_arrays_device():
    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs two CUDA devices, torch sees {torch.cuda.device_count()}")
    case, inputs = _small(8, N=2, levels=((6, 5), (3, 3)), D=16, P=3, Lq=13,
                          special_fraction=0.1)
    torch.cuda.set_device(0)
    g = place(inputs, "cuda:1", "float32")
    for deterministic in (False, True):
        results = run(g, case.align_corners, deterministic)
        assert torch.cuda.current_device() == 0, "the current device was not restored"
        check_kind(results, g, "float32")
        _assert_float32_close(results, inputs, which="both")
    mixed = place(inputs, "cuda:0", "float32")
    mixed["sampling_locations"] = mixed["sampling_locations"].to("cuda:1")
    with pytest.raises(ValueError, match="sampling_locations is on cuda:1 but value is on cuda:0"):
        forward(mixed)


@cuda
@pytest.mark.parametrize("explicit", [False, True])
def test_stream_argument_is_honoured(explicit):
    """Inputs written on a busy side stream; the call runs on that stream (as the current
    stream, or passed explicitly from outside it), and its results are read on the stream
    current afterwards. A launch on another stream, or a missing join back, reads
    unwritten data."""
    _, inputs = _small(6, N=2, levels=((16, 16), (8, 8)), M=4, D=32, P=4, Lq=256)
    base = place(inputs, "cuda", "float32")
    torch.cuda.synchronize()
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        torch.cuda._sleep(200_000_000)  # keep the side stream busy for a while
        g = {k: (v * 1 if k in FLOATS else v) for k, v in base.items()}
        if not explicit:
            doubled = [x * 2 for x in run(g)]  # read on the side stream
    if explicit:
        out = forward(g, stream=side)
        grads = backward(g, stream=side.cuda_stream)
        doubled = [out * 2] + [x * 2 for x in grads]  # read on the default stream
    torch.cuda.synchronize()
    _assert_float32_close([x / 2 for x in doubled], inputs, which="both")


@cuda
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

    _, inputs = _small(12, levels=((5, 5),))
    g = {k: (Wrapped(v) if k in FLOATS else v) for k, v in place(inputs, "cuda", "float32").items()}
    out = forward(g)
    assert type(out).__name__ == "DeviceArray"
    assert out.__dlpack_device__()[0] == 2 and tuple(out.shape) == (1, 6, 16)
    _assert_float32_close([torch.from_dlpack(out)], inputs)


@cuda
def test_cupy_arrays_if_installed():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    _, inputs = _small(13)
    g = {k: (cupy.asarray(v.astype(np.float32)) if k in FLOATS else v) for k, v in inputs.items()}
    out = forward(g)
    assert isinstance(out, cupy.ndarray)
    _assert_float32_close([cupy.asnumpy(out)], inputs)


# ----------------------------------------------------------------------------- CPU side

BASE = Case(N=2, levels=((4, 5), (2, 3)), M=2, D=6, P=2, Lq=7, align_corners=False,
            dtype=np.float64, seed=21, special_fraction=0.1, nonfinite_fraction=0.05)


@pytest.mark.parametrize("stream", [None, 0, 1, 2, 123456])
def test_stream_keyword_is_ignored_on_cpu(stream):
    inputs = make_inputs(BASE)
    assert_same_bits(run(inputs, stream=stream), run(inputs), f"stream={stream}")


def test_build_info_cuda_keys():
    info = msdacore.build_info()
    for key in ("cuda_compiled", "cuda_kernels"):
        assert isinstance(info[key], bool), key
    assert isinstance(info["cuda_runtime_version"], int) and info["cuda_runtime_version"] >= 0
    devices = cuda_device_count()
    assert isinstance(devices, int) and devices >= 0
    assert "cuda_devices" not in info  # counting starts the driver: only when asked
    if info["cuda_kernels"]:
        assert info["cuda_compiled"]
    if not info["cuda_compiled"]:
        assert not info["cuda_kernels"]
        assert devices == 0 and info["cuda_runtime_version"] == 0
    else:
        assert info["cuda_runtime_version"] > 0


def test_cuda_verdicts():
    """conftest's rule: CUDA tests run when usable; skip with the reason when not and no GPU
    is visible; fail, saying what is missing, when a GPU is visible (unless opted out)."""
    assert cuda_verdict(None, None, False) == ("run", "")
    assert cuda_verdict(None, "/dev/nvidia0", False) == ("run", "")
    action, reason = cuda_verdict("msdacore sees no CUDA device", None, False)
    assert action == "skip" and "msdacore sees no CUDA device" in reason
    assert "no GPU is visible" in reason
    action, message = cuda_verdict("torch.cuda.is_available() is False", "/dev/nvidia0", False)
    assert action == "fail"
    assert "/dev/nvidia0" in message and "torch.cuda.is_available() is False" in message
    assert NO_CUDA_ENV in message
    action, reason = cuda_verdict("msdacore sees no CUDA device", "/dev/nvidia0", True)
    assert action == "skip" and NO_CUDA_ENV in reason


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
        self._managed = DLManagedTensor()
        t = self._managed.dl_tensor
        t.data = self._host.ctypes.data
        t.device = DLDevice(2, device)  # kDLCUDA
        t.ndim = len(shape)
        code, bits = _DL_CODES[dtype]
        t.dtype = DLDataType(code, bits, 1)
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
        return legacy_capsule(self._managed)


def _fake_inputs(device=0, dtype=np.float32):
    case = dataclasses.replace(BASE, dtype=dtype)
    inputs = make_inputs(case)
    return {k: (FakeCudaArray(v.shape, v.dtype, device) if k in FLOATS else v)
            for k, v in inputs.items()}


def _expected_device_message(device):
    if not msdacore.build_info()["cuda_kernels"]:
        return rf"value is on cuda:{device}, but this build of msdacore .*build msdacore with CUDA"
    count = cuda_device_count()
    if count == 0:
        return rf"value is on cuda:{device}, but this build of msdacore sees no CUDA device"
    if device >= count:
        return rf"value is on cuda:{device}, but only \d+ CUDA devices? (is|are) visible"
    return (
        r"is said to be on cuda:\d+, but "
        r"(its data pointer is ordinary host memory|CUDA does not know)"
    )


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
    # On CUDA the core validates the five inputs (the workspace query) before anything
    # else is exported or allocated, so grad_output is never exported for this bad call.
    assert g["value"].streams == [1, 1, 5]
    assert g["grad_output"].streams == []


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
    host = np.array([[3, 4]], dtype=np.int64)
    device_index = RefusingProducer(BufferError("no export"), device=(2, 0), host=host)
    assert _arrays.host_index(device_index) is host
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
