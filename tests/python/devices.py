"""Where a test's arrays live: the device x dtype parametrisation of the operator tests
(torchvision's test_ops style), moving a problem's arrays there and back, and checking
results of any device against expected float64 numbers.

On "cpu" the float arrays are NumPy arrays (and so are the results); on "cuda" (or
"cuda:k") they are torch CUDA tensors (the results are tensors on the same device).
Index arrays stay NumPy int64: the core reads them on the host. Every CUDA parameter
carries the ``cuda`` marker, which conftest.py turns into a skip with the reason where no
GPU is visible, and into a failure where one is visible but msdacore or torch cannot use
it.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
from hypothesis import settings
from strategies import (
    TOLERANCE,
    Case,
    assert_close,
    away_from_integers,
    backward_args,
    forward_args,
    load_reference,
    make_inputs,
    term_scales,
)

import msdacore

CPU_DTYPES = ("float32", "float64")
CUDA_DTYPES = ("float16", "bfloat16", "float32", "float64")
FLOATS = ("value", "sampling_locations", "attention_weights", "grad_output")
RESULTS = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")

ref = load_reference()


def device_dtypes(cpu=CPU_DTYPES, cuda=CUDA_DTYPES):
    """Parameters for @pytest.mark.parametrize("device,dtype", ...): each CPU dtype, then
    each CUDA dtype (marked ``cuda``)."""
    return ([pytest.param("cpu", d, id=f"cpu-{d}") for d in cpu]
            + [pytest.param("cuda", d, id=f"cuda-{d}", marks=pytest.mark.cuda) for d in cuda])


# MSDACORE_CUDA_TEST_EXAMPLES=k caps the hypothesis examples of the property tests
# (scripts/cuda_check.sh sets it under compute-sanitizer, which is slow).
_EXAMPLES = int(os.environ.get("MSDACORE_CUDA_TEST_EXAMPLES", "0") or 0)


def capped_examples(test):
    return settings(max_examples=_EXAMPLES)(test) if _EXAMPLES > 0 else test


def place(inputs, device, dtype):
    """A copy of inputs with the float arrays in dtype (a name) on device, C-contiguous."""
    out = {}
    for key, val in inputs.items():
        if key not in FLOATS:
            out[key] = np.array(val, copy=True)
        elif device == "cpu":
            out[key] = np.array(val, dtype=np.dtype(dtype), order="C", copy=True)
        else:
            import torch

            out[key] = torch.from_numpy(np.ascontiguousarray(val)).to(
                device=device, dtype=getattr(torch, dtype))
    return out


def host64(x):
    """A float64 NumPy copy of a NumPy array or torch tensor (of any device and dtype)."""
    torch = sys.modules.get("torch")  # not imported: x is no tensor
    if torch is not None and isinstance(x, torch.Tensor):
        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.array(x, dtype=np.float64, copy=True)


def rounded(placed):
    """The float64 numbers a backend computes on (the inputs after rounding to their
    dtype), as fresh NumPy copies; index arrays copied as they are."""
    return {k: (host64(v) if k in FLOATS else np.array(v, copy=True)) for k, v in placed.items()}


def problem(case, device, dtype):
    """(placed, inputs64): the case's arrays on device in dtype, and the float64 numbers
    they hold."""
    placed = place(make_inputs(case), device, dtype)
    return placed, rounded(placed)


def forward(inputs, align_corners=False, **kw):
    return msdacore.ms_deform_attn(*forward_args(inputs), align_corners=align_corners, **kw)


def backward(inputs, align_corners=False, deterministic=False, **kw):
    return msdacore.ms_deform_attn_backward(*backward_args(inputs), align_corners=align_corners,
                                            deterministic=deterministic, **kw)


# The results each call gives, by the `which` of run() and reference().
NAMES = {"forward": RESULTS[:1], "backward": RESULTS[1:], "both": RESULTS}


def run(inputs, align_corners=False, deterministic=False, which="both", **kw):
    """msdacore's results, as a tuple: (output,) for which="forward", the three gradients
    for "backward", all four (output first) for "both"."""
    out = (forward(inputs, align_corners, **kw),) if which != "backward" else ()
    if which != "forward":
        out += tuple(backward(inputs, align_corners, deterministic, **kw))
    return out


def reference(inputs64, align_corners=False, which="both"):
    """The float64 NumPy reference's results, as run() gives them."""
    out = (ref.ms_deform_attn(*forward_args(inputs64), align_corners=align_corners),) \
        if which != "backward" else ()
    if which != "forward":
        out += tuple(ref.ms_deform_attn_backward(*backward_args(inputs64),
                                                 align_corners=align_corners))
    return out


def check_kind(results, placed, dtype, names=RESULTS):
    """Each result of the inputs' kind (NumPy array or torch tensor), on their device, in
    dtype, contiguous, of its SPEC shape."""
    value = placed["value"]
    N, S, M, D = value.shape
    shapes = {"output": (N, placed["sampling_locations"].shape[1], M * D),
              "grad_value": tuple(value.shape),
              "grad_sampling_locations": tuple(placed["sampling_locations"].shape),
              "grad_attention_weights": tuple(placed["attention_weights"].shape)}
    for name, r in zip(names, results):
        assert tuple(r.shape) == shapes[name], (
            f"{name}: shape {tuple(r.shape)}, expected {shapes[name]}")
        if isinstance(value, np.ndarray):
            assert isinstance(r, np.ndarray), f"{name}: {type(r)}"
            assert r.dtype == np.dtype(dtype), f"{name}: {r.dtype}"
            assert r.flags.c_contiguous, name
        else:
            import torch

            assert isinstance(r, torch.Tensor), f"{name}: {type(r)}"
            assert r.device == value.device, f"{name} on {r.device}, expected {value.device}"
            assert r.dtype == getattr(torch, dtype), f"{name}: {r.dtype}"
            assert r.is_contiguous(), name


def assert_results_close(results, expected, inputs64, levels, align_corners, dtype, what="",
                         names=RESULTS):
    """results (any device) against expected (float64 or another backend's arrays) with the
    SPEC tolerance of dtype. Below float64 a result is measured against at least one typical
    term (strategies.term_scales), and location gradients only at points whose pixel
    coordinates are clear of integers, where the cell floor() picks may legitimately
    differ between precisions."""
    exact = dtype == "float64"
    floors = dict.fromkeys(RESULTS, 0.0) if exact else term_scales(inputs64)
    keep = None if exact else away_from_integers(inputs64["sampling_locations"], levels,
                                                 align_corners)
    for name, got, exp in zip(names, results, expected):
        mask = keep if name == "grad_sampling_locations" else None
        assert_close(host64(got), host64(exp), np.float64, f"{what}{name}", mask=mask,
                     tol=TOLERANCE[dtype], floor=floors[name])


def same_bits(a, b):
    """Whether two result tuples have the same dtypes, shapes and bytes (NaN payloads and
    signed zeros included)."""
    return all(x.dtype == y.dtype and x.shape == y.shape
               and np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes()
               for x, y in zip(a, b))


def assert_same_bits(a, b, what=""):
    assert len(a) == len(b), what
    for name, x, y in zip(RESULTS, a, b):
        assert same_bits([x], [y]), f"{what}: {name} differs"


def restrided(x, layout):
    """The same numbers in another memory layout, as a NumPy array or torch tensor like x:
    "transposed" (axes 1 and 2 swapped in memory), "doubled" (every stride doubled) or
    "misaligned" (starting one element into a bigger buffer, so no 16-byte vector loads)."""
    if isinstance(x, np.ndarray):
        if layout == "transposed":
            return np.ascontiguousarray(x.swapaxes(1, 2)).swapaxes(1, 2)
        if layout == "doubled":
            return np.stack([x, x], -1)[..., 0]
        flat = np.empty(x.size + 1, x.dtype)
    else:
        if layout == "transposed":
            return x.transpose(1, 2).contiguous().transpose(1, 2)
        if layout == "doubled":
            return x.unsqueeze(-1).expand(*x.shape, 2).contiguous()[..., 0]
        flat = x.new_empty(x.numel() + 1)
    assert layout == "misaligned", layout
    flat[1:] = x.reshape(-1)
    return flat[1:].reshape(x.shape)


def data_address(x):
    return x.ctypes.data if isinstance(x, np.ndarray) else x.data_ptr()


def is_contiguous(x):
    return x.flags.c_contiguous if isinstance(x, np.ndarray) else x.is_contiguous()


def contended_inputs(seed=5):
    """Many samples on few cells (the worst case for the order of atomic additions), with
    a few NaN and infinite coordinates; float64."""
    case = Case(N=2, levels=((6, 7), (3, 3)), M=2, D=40, P=4, Lq=600, align_corners=False,
                dtype=np.float64, seed=seed, special_fraction=0.1, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    rng = np.random.default_rng(seed)
    loc = rng.uniform(0.3, 0.7, inputs["sampling_locations"].shape)
    loc.reshape(-1)[::97] = np.nan
    loc.reshape(-1)[50::97] = np.inf
    inputs["sampling_locations"] = loc
    return case, inputs
