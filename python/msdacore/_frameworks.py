"""The array frameworks msdacore's Python front end talks to, one adapter each.

An adapter knows how to allocate an uninitialised contiguous array like a given one (same
dtype and device, with the framework's own allocator and on its current stream), how to
export an array as a DLPack capsule, what the framework's current CUDA stream is, and
how to hand results back. The adapter is chosen by the type of `value` (isinstance
against frameworks already imported; nothing here imports torch, CuPy or JAX).
"""

from __future__ import annotations

import sys

import numpy as np

from . import _arrays, _core

# The arguments whose shapes and dtype size the outputs.
_SIZED = ("value", "sampling_locations", "attention_weights")


class _Described:
    """A DLPack producer with the shape and dtype the core read from it."""

    def __init__(self, array, shape, dtype):
        self.array, self.shape, self.dtype = array, shape, dtype

    def __dlpack__(self, **kwargs):
        return self.array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class DLPackFramework:
    """Any other DLPack producer (JAX, TensorFlow, ...): outputs are NumPy arrays on the
    CPU, msdacore DeviceArrays (default allocator) on CUDA, and are returned through
    ``from_dlpack`` of the producer's top-level module when it has one (jax.numpy for JAX),
    else as they are."""

    name = "dlpack"
    owns_cuda_memory = False  # CUDA outputs come from msdacore's default allocator

    def prepare(self, array, name):
        """An argument ready for export (_arrays.as_array). A producer without shape and
        dtype attributes is described once through the core's own DLPack reader (its
        shape and dtype size the outputs) and exported again for the call."""
        array = _arrays.as_array(array, name)
        if (name in _SIZED and hasattr(array, "__dlpack__")
                and not (hasattr(array, "shape") and hasattr(array, "dtype"))):
            shape, dtype = _core.describe(_arrays.to_capsule(array, name), name)
            return _Described(array, shape, dtype)
        return array

    def empty(self, shape, like, stream):
        """An uninitialised C-contiguous array of `shape`, dtype and device of `like`."""
        kind, device = _arrays.device_of(like)
        if kind == _arrays.KDL_CUDA:
            return _core.cuda_empty(list(shape), _dtype_name(like), device, stream or 0)
        return _arrays.aligned_empty(shape, _numpy_dtype(like))

    def workspace(self, nbytes, like, stream):
        """Device scratch of `nbytes` as (keep-alive object, address); None: the core's
        default allocator."""
        return None

    def capsule(self, array, name, stream=None):
        """`array` (an input, or an output of empty()) as a DLPack capsule; `stream` the
        consumer stream for CUDA arrays (None: no ordering needed)."""
        return _arrays.to_capsule(array, name, stream)

    def capsule_list(self, arrays, names):
        """capsule() of each array (no stream ordering)."""
        return [self.capsule(a, n) for a, n in zip(arrays, names)]

    def current_stream(self, device):
        """The framework's current CUDA stream on `device` (a cudaStream_t), or None."""
        return None

    def to_host(self, array):
        """An index array on the host (CUDA arrays copied)."""
        return _arrays.host_index(array)

    returns_own_arrays = False  # adapters whose empty() already makes the caller's kind

    def wrap(self, out, like):
        """The result as the caller's array kind."""
        if self.returns_own_arrays:
            return out
        if isinstance(out, np.ndarray) or type(out).__name__ == "DeviceArray":
            top = type(like).__module__.split(".")[0]
            if top in ("jax", "jaxlib"):
                module = sys.modules.get("jax.numpy")
            else:
                module = sys.modules.get(top)
            from_dlpack = getattr(module, "from_dlpack", None)
            if from_dlpack is not None and top != "numpy":
                return from_dlpack(out)
        return out


class NumPyFramework(DLPackFramework):
    name = "numpy"
    returns_own_arrays = True

    def prepare(self, array, name):
        # The common case first: an array the core reads as it is.
        if type(array) is np.ndarray:
            flags = array.flags
            if flags.c_contiguous and flags.aligned and array.dtype.isnative:
                return array
        return _arrays.as_array(array, name)

    def empty(self, shape, like, stream):
        # `like` may be another framework's
        return _arrays.aligned_empty(shape, _numpy_dtype(like))

    def capsule_list(self, arrays, names):
        # The common case in one go: NumPy arrays that export as they are.
        try:
            return [a.__dlpack__(max_version=_arrays.DLPACK_MAX_VERSION) for a in arrays]
        except Exception:  # noqa: BLE001 - lists, read-only arrays, ...: one by one
            return super().capsule_list(arrays, names)


class TorchFramework(DLPackFramework):
    """torch tensors: torch.empty (torch's caching allocator, on its current stream)."""

    name = "torch"
    returns_own_arrays = True
    owns_cuda_memory = True

    def __init__(self):
        import torch  # only constructed when torch is imported already
        from torch.utils.dlpack import to_dlpack
        self._torch = torch
        self._to_dlpack = to_dlpack

    def empty(self, shape, like, stream):
        if isinstance(like, self._torch.Tensor):
            return self._torch.empty(shape, dtype=like.dtype, device=like.device)
        # A gradient of an input from another framework (a NumPy array: on the CPU).
        dtype = getattr(self._torch, _numpy_dtype(like).name, self._torch.float32)
        return self._torch.empty(shape, dtype=dtype)

    def workspace(self, nbytes, like, stream):
        buffer = self._torch.empty(nbytes, dtype=self._torch.uint8, device=like.device)
        return buffer, buffer.data_ptr()

    def capsule(self, array, name, stream=None):
        if not isinstance(array, self._torch.Tensor):
            return _arrays.to_capsule(array, name, stream)
        if array.requires_grad:
            array = array.detach()
        # torch exports the raw data of lazily negated / conjugated views: resolve them.
        array = array.resolve_neg().resolve_conj()
        if stream is not None and array.device.type == "cuda":
            return array.__dlpack__(stream=stream)
        try:
            return self._to_dlpack(array)
        except (BufferError, RuntimeError, TypeError):
            # Not exportable (a meta or other device, an unsupported dtype): the generic
            # export raises the error that names the argument and the problem.
            return _arrays.to_capsule(array, name, stream)

    def prepare(self, array, name):
        # Tensors are exported as they are (capsule() resolves views); others as usual.
        return array if isinstance(array, self._torch.Tensor) else _arrays.as_array(array, name)

    def current_stream(self, device):
        return _arrays.stream_handle(self._torch.cuda.current_stream(device).cuda_stream)

    def to_host(self, array):
        if isinstance(array, self._torch.Tensor):
            # CUDA tensors are copied; others (meta, ...) go on to the export's error.
            return array.cpu() if array.device.type == "cuda" else array
        return array


class CupyFramework(DLPackFramework):
    """CuPy arrays: cupy.empty (CuPy's memory pool, on its current stream)."""

    name = "cupy"
    returns_own_arrays = True
    owns_cuda_memory = True

    def __init__(self):
        self._cupy = sys.modules["cupy"]

    def empty(self, shape, like, stream):
        with self._cupy.cuda.Device(like.device.id):
            return self._cupy.empty(shape, dtype=like.dtype)

    def prepare(self, array, name):
        return _arrays.as_array(array, name)

    def workspace(self, nbytes, like, stream):
        with self._cupy.cuda.Device(like.device.id):
            buffer = self._cupy.empty(nbytes, dtype=self._cupy.uint8)
        return buffer, buffer.data.ptr

    def current_stream(self, device):
        with self._cupy.cuda.Device(device):
            return _arrays.stream_handle(self._cupy.cuda.get_current_stream().ptr)


NUMPY = NumPyFramework()
DLPACK = DLPackFramework()
_cache: dict = {}


def framework_of(value) -> DLPackFramework:
    """The adapter for `value`'s framework: NumPy, torch, CuPy, else generic DLPack."""
    if isinstance(value, np.ndarray):
        return NUMPY
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        return _adapter("torch", TorchFramework)
    cupy = sys.modules.get("cupy")
    if cupy is not None and isinstance(value, cupy.ndarray):
        return _adapter("cupy", CupyFramework)
    return DLPACK


def _adapter(name, cls):
    adapter = _cache.get(name)
    if adapter is None:
        adapter = _cache[name] = cls()
    return adapter


def torch_framework() -> TorchFramework:
    """The torch adapter (for msdacore.torch, which imports torch)."""
    return _adapter("torch", TorchFramework)


def _numpy_dtype(like):
    """like's dtype as NumPy's; float32 where NumPy has none (e.g. bfloat16): the core
    then rejects the input with its own error before it looks at the output."""
    dtype = getattr(like, "dtype", None)
    for candidate in (dtype, str(dtype).split(".")[-1]):
        try:
            return np.dtype(candidate)
        except TypeError:
            pass
    return np.dtype(np.float32)


def _dtype_name(like) -> str:
    return str(getattr(like, "dtype", "float32")).split(".")[-1]
