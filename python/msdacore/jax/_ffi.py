"""msdacore's XLA FFI handlers: built on first use (ffi/, against the XLA FFI headers of the
installed jaxlib, cached by msdacore._plugin_build), handed msdacore._core's C API table,
and registered with XLA as the targets FORWARD and BACKWARD (CPU and CUDA). Also the
core's own input check, run at trace time on shapes and dtypes only."""

from __future__ import annotations

import ctypes
import functools
import hashlib
from pathlib import Path

import numpy as np

import jax

from .. import _core
from .._plugin_build import PluginBuildError, build_plugin

FORWARD = "msdacore_ms_deform_attn_forward"
BACKWARD = "msdacore_ms_deform_attn_backward"

# msdacore_c.h's dtype codes, by NumPy / JAX dtype name.
DTYPE_CODES = {"float16": 0, "bfloat16": 1, "float32": 2, "float64": 3, "int32": 4,
               "int64": 5}
MODE_CODES = {"bilinear": 0, "discrete": 1}
_MAX_DIMS = 8
# msdacore_status values the check returns, and the Python error of each.
_STATUS_ERRORS = {1: ValueError, 2: TypeError, 3: ValueError, 4: ValueError}

_SOURCES = Path(__file__).resolve().parent / "ffi"


def _include_dir() -> Path:
    """The folder holding msdacore/msdacore_c.h and the generated msdacore/version.hpp:
    msdacore/include in the installed package (CMakeLists.txt installs them there)."""
    package = Path(__file__).resolve().parent.parent / "include"
    if (package / "msdacore" / "msdacore_c.h").is_file():
        return package
    raise PluginBuildError(
        f"msdacore: the C API headers are missing from the installed package ({package}); "
        f"reinstall msdacore (pip install .) to build msdacore.jax's XLA handlers")


@functools.lru_cache(maxsize=None)
def library() -> ctypes.CDLL:
    """The built handler library, holding _core's C API table, its targets registered.
    Builds it on the first call of a new (msdacore, jaxlib, sources) key."""
    import jaxlib

    include = _include_dir()
    header_digest = hashlib.sha256(
        (include / "msdacore" / "msdacore_c.h").read_bytes()).hexdigest()[:16]
    path = build_plugin(
        "jax", _SOURCES, "libmsdacore_jax.so", runtime_version=jaxlib.__version__,
        cmake_args=[f"-DXLA_FFI_INCLUDE_DIR={jax.ffi.include_dir()}",
                    f"-DMSDACORE_INCLUDE_DIR={include}",
                    f"-DMSDACORE_C_API_DIGEST={header_digest}"])  # part of the cache key
    lib = ctypes.CDLL(str(path))

    get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
    get_pointer.restype = ctypes.c_void_p
    get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
    table = get_pointer(_core.c_api, b"msdacore.c_api")
    lib.msdacore_jax_set_api.argtypes = [ctypes.c_void_p]
    lib.msdacore_jax_set_api.restype = ctypes.c_int32
    if lib.msdacore_jax_set_api(table) != 0:
        raise RuntimeError("msdacore: the XLA handlers refused msdacore._core's C API table "
                           "(a handler library built for another msdacore version?)")
    lib.msdacore_jax_check.restype = ctypes.c_int32
    lib.msdacore_jax_check.argtypes = [
        ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_int32, ctypes.c_char_p,
        ctypes.c_int64]

    for target, symbol in ((FORWARD, "msdacore_jax_forward"),
                           (BACKWARD, "msdacore_jax_backward")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + "_cpu")),
                                    platform="cpu")
        # On a CUDA device the handler runs _core's CUDA kernels on XLA's stream; a _core
        # built without CUDA reports that (msdacore's DeviceError) as the XLA error.
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + "_cuda")),
                                    platform="CUDA")
    return lib


def dtype_code(dtype, name: str) -> int:
    """msdacore's code of an array dtype, else TypeError naming the argument."""
    code = DTYPE_CODES.get(np.dtype(dtype).name)
    if code is None:
        raise TypeError(f"{name} must be a floating-point array (float32, float64, float16 or "
                        f"bfloat16), got "
                        f"{np.dtype(dtype).name}")
    return code


def check_inputs(value, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
                 sampling_locations, attention_weights, points_per_level, align_corners: bool,
                 mode: str) -> None:
    """The core's validation of one call (msdacore_check_inputs) on the shapes and dtypes
    of value, sampling_locations and attention_weights (arrays or ShapeDtypeStructs) and
    the host index arrays. Raises ValueError / TypeError with the core's message."""
    lib = library()
    arrays = (value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    names = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
             "attention_weights")
    shapes = np.zeros((5, _MAX_DIMS), np.int64)
    ndims = np.zeros(5, np.int32)
    dtypes = np.zeros(5, np.int32)
    for i, (array, name) in enumerate(zip(arrays, names)):
        if len(array.shape) > _MAX_DIMS:
            raise ValueError(f"{name} has {len(array.shape)} dimensions; msdacore takes at "
                             f"most {_MAX_DIMS}")
        shapes[i, :len(array.shape)] = array.shape
        ndims[i] = len(array.shape)
        dtypes[i] = dtype_code(array.dtype, name)
    counts = None if points_per_level is None else np.asarray(points_per_level, np.int64)
    message = ctypes.create_string_buffer(4096)
    status = lib.msdacore_jax_check(
        shapes.ctypes.data, ndims.ctypes.data, dtypes.ctypes.data, spatial_shapes.ctypes.data,
        level_start_index.ctypes.data, None if counts is None else counts.ctypes.data,
        0 if counts is None else len(counts), int(align_corners), MODE_CODES[mode], message,
        len(message))
    if status != 0:
        raise _STATUS_ERRORS.get(status, RuntimeError)(message.value.decode(errors="replace"))
