"""msdacore's XLA FFI handlers: built on first use (ffi/, against the XLA FFI headers of the
installed jaxlib, cached by msdacore._plugin_build), handed msdacore._core's C API table,
and registered with XLA as the targets FORWARD and BACKWARD (CPU and CUDA). Also the
core's check that needs no data, run at trace time on shapes, dtypes and the static index
arrays."""

from __future__ import annotations

import ctypes
import functools
import hashlib
from pathlib import Path

import jax
import numpy as np

from .. import _core
from .._plugin_build import PluginBuildError, build_plugin

FORWARD = "msdacore_ms_deform_attn_forward"
BACKWARD = "msdacore_ms_deform_attn_backward"


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

    for target, symbol in ((FORWARD, "msdacore_jax_forward"),
                           (BACKWARD, "msdacore_jax_backward")):
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + "_cpu")),
                                    platform="cpu")
        # On a CUDA device the handler runs _core's CUDA kernels on XLA's stream; a _core
        # built without CUDA reports that (msdacore's DeviceError) as the XLA error.
        jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, symbol + "_cuda")),
                                    platform="CUDA")
    return lib


def _dim(size) -> int:
    """A dimension for the check: a symbolic one (jax.export) counts as 0, a size that is
    valid for N and Lq only; the handler checks the real sizes when the call runs."""
    return size if isinstance(size, (int, np.integer)) else 0


def check_shapes(value, spatial_shapes: np.ndarray, level_start_index: np.ndarray,
                 sampling_locations, attention_weights, options) -> None:
    """The core's check that needs no data (msdacore::check_shapes, through _core) on the
    shapes and dtypes of value, sampling_locations and attention_weights (arrays or
    ShapeDtypeStructs) and the host index arrays, with their values. Raises ValueError /
    TypeError with the core's message."""
    specs = tuple((tuple(_dim(d) for d in a.shape), np.dtype(a.dtype).name, "cpu", 0)
                  for a in (value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights))
    known = all(np.dtype(a.dtype).kind in "iu" for a in (spatial_shapes, level_start_index))
    _core.check_shapes(specs, options, spatial_shapes.reshape(-1).tolist() if known else None,
                       level_start_index.reshape(-1).tolist() if known else None)
