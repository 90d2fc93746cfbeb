"""Turning user arrays into DLPack capsules for the core, and results back into the
caller's array kind. Nothing here imports torch, CuPy or JAX: a framework is only used
when the caller already passed one of its arrays (it is then in ``sys.modules``)."""

from __future__ import annotations

import sys

import numpy as np

# The highest DLPack version this package's consumer understands.
DLPACK_MAX_VERSION = (1, 1)

_INDEX_ARGS = ("spatial_shapes", "level_start_index")


def _normalized_numpy(array: np.ndarray) -> np.ndarray:
    """A NumPy array DLPack can export: native byte order, strides in whole elements."""
    if not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="))
    if any(s % array.itemsize for s in array.strides):
        array = np.ascontiguousarray(array)
    return array


def as_array(obj, name: str):
    """Returns `obj` ready for DLPack export (lists of ints allowed for index arrays)."""
    if isinstance(obj, np.ndarray):
        return _normalized_numpy(obj)
    if name in _INDEX_ARGS and isinstance(obj, (list, tuple)):
        array = np.asarray(obj)
        return array.astype(np.int64) if array.dtype.kind in "iu" else array
    if getattr(obj, "requires_grad", False) and hasattr(obj, "detach"):
        # msdacore's plain API computes values only; msdacore.torch tracks gradients.
        return obj.detach()
    if isinstance(obj, np.generic):
        return np.asarray(obj)
    return obj


def to_capsule(obj, name: str):
    """Exports `obj` (after as_array) as a DLPack capsule, versioned when supported."""
    try:
        export = obj.__dlpack__
    except AttributeError:
        raise TypeError(
            f"{name} must be an array: a NumPy array or any object with __dlpack__ "
            f"(torch, CuPy, JAX, ...), got {type(obj).__module__}.{type(obj).__qualname__}"
        ) from None
    try:
        return export(max_version=DLPACK_MAX_VERSION)
    except TypeError:
        return export()  # a producer from before DLPack 1.0 (legacy capsule)
    except BufferError:
        if isinstance(obj, np.ndarray):  # e.g. a read-only array on an old NumPy
            return np.array(obj, copy=True).__dlpack__()
        raise


def capsules(**arrays):
    """{name: obj} -> list of capsules in the order given, plus the converted objects
    (kept alive by the caller for the duration of the call)."""
    converted = {name: as_array(obj, name) for name, obj in arrays.items()}
    return [to_capsule(obj, name) for name, obj in converted.items()], converted


def like(reference, result: np.ndarray):
    """Returns `result` (a NumPy array) as an array of the same kind as `reference`:
    NumPy for NumPy, torch for torch, and so on for producers whose top-level module
    has ``from_dlpack``; NumPy otherwise. Zero-copy."""
    if isinstance(reference, np.ndarray):
        return result
    top = type(reference).__module__.split(".")[0]
    if top == "jaxlib" or top == "jax":
        jnp = sys.modules.get("jax.numpy")
        return jnp.from_dlpack(result) if jnp is not None else result
    module = sys.modules.get(top)
    from_dlpack = getattr(module, "from_dlpack", None)
    if from_dlpack is None or top == "numpy":
        return result
    return from_dlpack(result)
