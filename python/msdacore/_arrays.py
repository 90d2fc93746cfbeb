"""Turning user arguments into what the core reads: arrays ready for DLPack export,
DLPack capsules, index arrays on the host, device and stream values. Nothing here
imports torch, CuPy or JAX."""

from __future__ import annotations

import numpy as np

from . import _core

# The highest DLPack version this package's consumer understands.
DLPACK_MAX_VERSION = (1, 1)

# DLPack device types (DLDeviceType).
KDL_CPU, KDL_CUDA, KDL_CUDA_HOST = 1, 2, 3

# DLPack stream value of the legacy default CUDA stream (also its cudaStream_t value,
# cudaStreamLegacy). 0 is ambiguous in DLPack and never passed.
LEGACY_DEFAULT_STREAM = 1

_INDEX_ARGS = ("spatial_shapes", "level_start_index")


# Alignment of the NumPy arrays msdacore allocates: a cache line, like the tensors of
# torch and JAX. NumPy's own large allocations start 16 bytes past one, so that a
# 128-byte row of value or grad_value spans three cache lines instead of two (measured:
# detr-enc forward about 10% slower, docs/benchmarks.md).
CACHE_LINE = 64


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous NumPy array whose data starts on a CACHE_LINE
    boundary."""
    dtype = np.dtype(dtype)
    count = 1
    for extent in shape:
        count *= int(extent)
    buffer = np.empty(count * dtype.itemsize + CACHE_LINE, dtype=np.uint8)
    start = -buffer.ctypes.data % CACHE_LINE
    return buffer[start:start + count * dtype.itemsize].view(dtype).reshape(shape)


def _normalized_numpy(array: np.ndarray) -> np.ndarray:
    """A NumPy array DLPack can export: native byte order, aligned, strides in whole
    elements (copied when it is not)."""
    flags = array.flags
    if flags.c_contiguous and flags.aligned and array.dtype.isnative:
        return array  # the common case, checked first
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if not array.flags.aligned:
        array = np.array(array, order="C", copy=True)  # a fresh allocation is aligned
    if any(s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    return array


def as_array(obj, name: str):
    """Returns `obj` ready for DLPack export (lists of ints allowed for index arrays)."""
    if isinstance(obj, np.ndarray):
        return _normalized_numpy(obj)
    if name in _INDEX_ARGS and isinstance(obj, (list, tuple)):
        try:
            array = np.asarray(obj)
        except (ValueError, TypeError) as error:  # ragged lists and the like
            raise ValueError(f"{name} must be a rectangular list of integers: {error}") from None
        if array.dtype == object:
            raise TypeError(f"{name} must hold integers that fit int64, got {obj!r:.80}")
        return array.astype(np.int64) if array.dtype.kind in "iu" else array
    # torch exports the raw data of lazily negated / conjugated views: resolve them first.
    if callable(getattr(obj, "is_neg", None)) and obj.is_neg():
        obj = obj.resolve_neg()
    if callable(getattr(obj, "is_conj", None)) and obj.is_conj():
        obj = obj.resolve_conj()
    if getattr(obj, "requires_grad", False) and hasattr(obj, "detach"):
        # msdacore's plain API computes values only; msdacore.torch tracks gradients.
        return obj.detach()
    if isinstance(obj, np.generic):
        return np.asarray(obj)
    return obj


def to_capsule(obj, name: str, stream=None):
    """Exports `obj` (after as_array) as a DLPack capsule, versioned when supported.
    `stream` (an int, CUDA arrays only) is the consumer stream of the DLPack protocol: the
    producer makes it wait for the work that writes `obj`."""
    try:
        export = obj.__dlpack__
    except AttributeError:
        raise TypeError(
            f"{name} must be an array: a NumPy array or any object with __dlpack__ "
            f"(torch, CuPy, JAX, ...), got {type(obj).__module__}.{type(obj).__qualname__}"
        ) from None
    kwargs = {} if stream is None else {"stream": stream}
    try:
        try:
            return export(max_version=DLPACK_MAX_VERSION, **kwargs)
        except TypeError:
            return export(**kwargs)  # a producer from before DLPack 1.0 (legacy capsule)
    except BufferError as error:
        if isinstance(obj, np.ndarray):
            if obj.dtype.kind not in "biufc" or obj.dtype == np.longdouble:
                # object, str, bytes, datetime, structured, void, longdouble, ...
                _core.check_dtype_name(name, str(obj.dtype))  # raises the core's TypeError
            return np.array(obj, copy=True).__dlpack__()  # e.g. read-only on an old NumPy
        device = getattr(getattr(obj, "device", None), "type", None)
        if isinstance(device, str) and device not in ("cpu", "cuda"):
            raise ValueError(
                f"{name} is on {device}, which msdacore cannot read: pass CPU (or CUDA) arrays"
            ) from None
        raise TypeError(f"{name} cannot be exported through DLPack: {error}") from None
    except (TypeError, ValueError):
        raise
    except Exception as error:  # a producer failing in its own way
        raise TypeError(f"{name} cannot be exported through DLPack: its __dlpack__ raised "
                        f"{type(error).__name__}: {error}") from error


# ----------------------------------------------------------------------------- CUDA arrays

def device_of(obj) -> tuple:
    """(DLPack device type, device id) of an array; (KDL_CPU, 0) for NumPy arrays, lists
    and objects that do not say (their __dlpack__ call then reports any problem)."""
    if isinstance(obj, (np.ndarray, np.generic, list, tuple)):
        return (KDL_CPU, 0)
    query = getattr(obj, "__dlpack_device__", None)
    if query is None:
        return (KDL_CPU, 0)
    try:
        kind, index = query()
        return (int(kind), int(index))
    except Exception:  # noqa: BLE001 - a broken producer is reported by __dlpack__ itself
        return (KDL_CPU, 0)


def is_cuda(obj) -> bool:
    return device_of(obj)[0] == KDL_CUDA


def host_index(obj):
    """spatial_shapes / level_start_index on the host: a CUDA array is copied (which waits
    for the device), through DLPack (dl_device=CPU, copy=True) where the producer supports
    it, else its .cpu() (torch) or .get() (CuPy); other objects are returned as they are."""
    if device_of(obj)[0] in (KDL_CPU, KDL_CUDA_HOST):
        return obj
    try:
        return np.from_dlpack(obj, device="cpu", copy=True)
    except Exception:  # noqa: BLE001 - older producers or NumPy: try the framework's own copy
        pass
    for method in ("cpu", "get"):
        fn = getattr(obj, method, None)
        if callable(fn):
            try:
                return fn()
            except Exception:  # noqa: BLE001 - fall through: the core reports the device
                break
    return obj


def stream_handle(stream) -> int:
    """The cudaStream_t value of a `stream` argument: an int (a cudaStream_t, or 1 / 2 for
    the legacy / per-thread default stream as in DLPack), or a stream object with
    .cuda_stream (torch) or .ptr (CuPy)."""
    if isinstance(stream, bool):
        raise TypeError("stream must be None, an int (cudaStream_t) or a CUDA stream object, "
                        "got a bool")
    if isinstance(stream, int):
        value = stream
    elif hasattr(stream, "cuda_stream"):
        value = int(stream.cuda_stream)
    elif hasattr(stream, "ptr"):
        value = int(stream.ptr)
    else:
        raise TypeError("stream must be None, an int (cudaStream_t) or a CUDA stream object "
                        "(with .cuda_stream like torch.cuda.Stream, or .ptr like "
                        f"cupy.cuda.Stream), got {type(stream).__module__}."
                        f"{type(stream).__qualname__}")
    if value < 0:
        raise ValueError(f"stream must be a cudaStream_t value >= 0, got {value}")
    return LEGACY_DEFAULT_STREAM if value == 0 else value
