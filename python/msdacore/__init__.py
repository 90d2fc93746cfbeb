"""msdacore: multi-scale deformable attention (Deformable DETR's MSDA, the single-scale
module, DAT-style deformable sampling), forward and backward, on the CPU and (where built
with CUDA) on NVIDIA GPUs, from NumPy or any DLPack array. The operator contract is
docs/conventions.md; docs/architecture.md follows one call from here to a kernel.
"""

from __future__ import annotations

import warnings as _warnings

import numpy as _np

from . import _core, _dispatch, _frameworks

__version__: str = _core.build_info()["version"]

# A build that looked for CUDA, found a compiler and could not use it says so here, where
# a `pip install .` user sees it (pip hides the build's own output).
if _core.build_info()["cuda_fallback"]:
    _warnings.warn("msdacore: " + _core.build_info()["cuda_fallback"], RuntimeWarning,
                   stacklevel=2)

__all__ = [
    "ms_deform_attn",
    "ms_deform_attn_backward",
    "build_info",
    "cuda_device_count",
    "set_num_threads",
    "get_num_threads",
    "__version__",
]


def ms_deform_attn(value, spatial_shapes, level_start_index, sampling_locations,
                   attention_weights, *, align_corners=False, stream=None,
                   points_per_level=None, mode="bilinear"):
    """Multi-scale deformable attention, forward.

    value               (N, S, M, D)        float32 | float64 | float16 | bfloat16 (T)
    spatial_shapes      (L, 2) rows (H, W)  int32 | int64 (or a list of pairs)
    level_start_index   (L,)                int32 | int64 (or a list), prefix sums of H*W
    sampling_locations  (N, Lq, M, L, P, 2) T, (x, y) normalized to [0, 1] (float32 with a
                                            half T: mixed precision)
    attention_weights   (N, Lq, M, L, P)    T (or float32 with a half T)
    align_corners       False: pixel = loc*size - 0.5; True: pixel = loc*(size - 1)
    points_per_level    None: the uniform layout above; a sequence of L counts >= 1: the
                        flattened layout, sampling_locations (N, Lq, M, P_total, 2) and
                        attention_weights (N, Lq, M, P_total), level l's points at
                        offsets sum_{j<l} P_j (RT-DETRv2, D-FINE)
    mode                "bilinear", or "discrete": the nearest pixel, clamped to the
                        border (RT-DETRv2's deployment variant; align_corners False)
    stream              CUDA inputs: the stream to run on (an int cudaStream_t, or a
                        torch / CuPy stream object); None: the framework's current stream
                        (torch, CuPy), else the default stream. Ignored on the CPU.
    returns             (N, Lq, M*D)        T, contiguous, of value's array kind and device

    CUDA arrays (torch, CuPy, any DLPack producer) run on their device; spatial_shapes and
    level_start_index are read on the host (device copies are copied there).
    Raises ValueError (shapes, devices, index arrays) or TypeError (dtypes).
    """
    return _dispatch.forward(_frameworks.framework_of(value), value, spatial_shapes,
                             level_start_index, sampling_locations, attention_weights,
                             options=_dispatch.op_options(align_corners, False, mode,
                                                          points_per_level),
                             stream=stream)


def ms_deform_attn_backward(value, spatial_shapes, level_start_index, sampling_locations,
                            attention_weights, grad_output, *, align_corners=False,
                            deterministic=False, stream=None, points_per_level=None,
                            mode="bilinear"):
    """Gradients of ms_deform_attn given grad_output (N, Lq, M*D) of dtype T.

    returns (grad_value (N, S, M, D), grad_sampling_locations (N, Lq, M, L, P, 2),
             grad_attention_weights (N, Lq, M, L, P)), all T, of value's array kind; in
             the flattened layout (points_per_level) the gradients are in that layout.
    In discrete mode grad_sampling_locations is zero.
    CPU: bitwise identical for any thread count (deterministic has no effect).
    CUDA: grad_sampling_locations and grad_attention_weights are reproducible; grad_value
    is summed with atomics unless deterministic=True, which sorts the samples and gathers
    instead (bitwise reproducible, slower). stream as in ms_deform_attn.
    """
    return _dispatch.backward(_frameworks.framework_of(value), value, spatial_shapes,
                              level_start_index, sampling_locations, attention_weights,
                              grad_output,
                              options=_dispatch.op_options(align_corners, deterministic,
                                                           mode, points_per_level),
                              stream=stream)


def build_info() -> dict:
    """What this build can do: version, openmp, openmp_version, num_threads, max_threads,
    cuda_compiled, cuda_kernels, cuda_runtime_version, cuda_fallback, cpu_isa, cpu_isas,
    compiler. Reads only what the build knows: it does not start the CUDA driver."""
    return dict(_core.build_info())


def cuda_device_count() -> int:
    """CUDA devices this process can use: 0 for a build without CUDA, a machine without a
    driver or without a GPU. Starts the CUDA driver (so call it after any fork()). Raises
    RuntimeError, naming both versions, when the driver is too old for this build."""
    return _core.cuda_device_count()


def set_num_threads(n: int) -> None:
    """Sets the threads the CPU kernels use (an int, else TypeError; 1 <= n <= 1024, else
    ValueError). Results do not depend on it."""
    if isinstance(n, (bool, _np.bool_)) or not isinstance(n, (int, _np.integer)):
        raise TypeError(f"set_num_threads takes an int, got {type(n).__name__} {n!r:.40}")
    n = int(n)
    if not -2**31 <= n < 2**31:  # past C int: the core's range error, here
        raise ValueError(f"num_threads must be between 1 and {_core.MAX_NUM_THREADS}, got {n}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    """The threads the CPU kernels use."""
    return _core.get_num_threads()
