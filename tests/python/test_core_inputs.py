"""Input handling: layouts, index dtypes, torch tensors, DLPack producers (empty sizes on
every device and dtype: test_core_ops.py::test_empty_batch_or_queries)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from devices import FLOATS, assert_same_bits, run
from strategies import Case, assert_unchanged, copies, make_inputs

BASE = Case(N=2, levels=((4, 5), (3, 3), (1, 1), (2, 6)), M=3, D=7, P=3, Lq=9, align_corners=False,
            dtype=np.float64, seed=11, special_fraction=0.1, nonfinite_fraction=0.05)


def _case(**changes):
    return dataclasses.replace(BASE, **changes)


def _assert_same(got, expected):
    """The same results, bitwise."""
    assert_same_bits([np.asarray(x) for x in got], [np.asarray(x) for x in expected])


# ---------------------------------------------------------------------------
# Layouts: every way of describing the same values gives the same results


def _transposed(x):
    """Same values, strides permuted (a transposed view of a contiguous array)."""
    perm = tuple(range(x.ndim))[::-1]
    return np.ascontiguousarray(x.transpose(perm)).transpose(perm)


def _stepped(x):
    """Same values, a view with step 2 (and 3) into a bigger array."""
    big = np.zeros(tuple(2 * s + 1 for s in x.shape[:-1]) + (3 * x.shape[-1] + 1,), dtype=x.dtype)
    view = big[tuple(slice(1, None, 2) for _ in x.shape[:-1]) + (slice(None, None, 3),)]
    view = view[tuple(slice(0, s) for s in x.shape)]
    view[...] = x
    return view


def _reversed(x):
    """Same values, negative strides on every axis."""
    flipped = np.ascontiguousarray(x[(slice(None, None, -1),) * x.ndim])
    return flipped[(slice(None, None, -1),) * x.ndim]


def _broadcast(x):
    """Different values (the first entry of axis 0 repeated), zero stride on axis 0."""
    if x.ndim == 0 or x.shape[0] == 0:
        return x
    return np.broadcast_to(x[:1], x.shape)


LAYOUTS = {"transposed": _transposed, "stepped": _stepped, "reversed": _reversed,
           "broadcast": _broadcast}


# Broadcasting an index array would make it inconsistent: float arrays only.
STRIDED_CASES = [(name, layout)
                 for name in FLOATS + ("spatial_shapes", "level_start_index", "all")
                 for layout in LAYOUTS
                 if not (layout == "broadcast" and name in ("spatial_shapes", "level_start_index"))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,layout", STRIDED_CASES)
def test_strided_inputs_match_contiguous_copies(name, layout, dtype):
    inputs = make_inputs(_case(dtype=dtype))
    strided = dict(inputs)
    names = FLOATS if name == "all" else (name,)
    for key in names:
        strided[key] = LAYOUTS[layout](inputs[key])
        if layout != "broadcast":
            np.testing.assert_array_equal(strided[key], inputs[key])
            if not (layout == "transposed" and strided[key].ndim == 1):
                assert not strided[key].flags.c_contiguous, key
    saved = copies(strided)
    contiguous = {k: np.ascontiguousarray(v) for k, v in strided.items()}
    _assert_same(run(strided), run(contiguous))
    assert_unchanged(strided, saved)


def test_fortran_order_inputs():
    inputs = make_inputs(BASE)
    fortran = {k: np.asfortranarray(v) for k, v in inputs.items()}
    _assert_same(run(fortran), run(inputs))


# ---------------------------------------------------------------------------
# Index arrays


@pytest.mark.parametrize("shapes_kind", ["int32", "int64", "list"])
@pytest.mark.parametrize("starts_kind", ["int32", "int64", "list"])
def test_index_array_kinds(shapes_kind, starts_kind):
    inputs = make_inputs(BASE)
    expected = run(inputs)
    converted = dict(inputs)
    for key, kind in (("spatial_shapes", shapes_kind), ("level_start_index", starts_kind)):
        converted[key] = inputs[key].tolist() if kind == "list" else inputs[key].astype(kind)
    _assert_same(run(converted), expected)


def test_tuples_for_index_arrays():
    inputs = make_inputs(BASE)
    converted = dict(inputs)
    converted["spatial_shapes"] = tuple(tuple(r) for r in inputs["spatial_shapes"].tolist())
    converted["level_start_index"] = tuple(inputs["level_start_index"].tolist())
    try:
        got = run(converted)
    except TypeError as e:  # only lists are promised; a clear TypeError is fine too
        assert "spatial_shapes" in str(e) or "level_start_index" in str(e)
        return
    _assert_same(got, run(inputs))


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_outputs_are_fresh_contiguous_arrays(dtype, align_corners):
    case = _case(dtype=dtype, align_corners=align_corners)
    inputs = make_inputs(case)
    out, gv, gl, ga = run(inputs, align_corners)
    for x, shape in ((out, (case.N, case.Lq, case.M * case.D)), (gv, inputs["value"].shape),
                     (gl, inputs["sampling_locations"].shape),
                     (ga, inputs["attention_weights"].shape)):
        assert isinstance(x, np.ndarray)
        assert x.shape == shape and x.dtype == np.dtype(dtype)
        assert x.flags.c_contiguous and x.flags.writeable
        for v in inputs.values():
            assert not np.shares_memory(x, v)


# ---------------------------------------------------------------------------
# torch tensors


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_tensors_in_torch_tensors_out(dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inputs = make_inputs(_case(dtype=np.dtype(dtype)))
    expected = run(inputs)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    saved = {k: t.clone() for k, t in tensors.items()}
    got = run(tensors)
    for x in got:
        assert isinstance(x, torch.Tensor)
        assert x.dtype == getattr(torch, dtype) and x.device.type == "cpu"
        assert x.is_contiguous()
    _assert_same([x.numpy() for x in got], expected)
    for k, t in tensors.items():
        assert torch.equal(t, saved[k]) or torch.allclose(t, saved[k], equal_nan=True), (
            f"{k} was modified")


@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0)])
def test_torch_empty_batch_or_queries(N, Lq):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    case = _case(N=N, Lq=Lq)
    tensors = {k: torch.from_numpy(v) for k, v in make_inputs(case).items()}
    out, gv, gl, ga = run(tensors)
    assert all(isinstance(x, torch.Tensor) for x in (out, gv, gl, ga))
    assert tuple(out.shape) == (N, Lq, case.M * case.D) and out.dtype == torch.float64
    assert tuple(gv.shape) == (N, case.S, case.M, case.D)
    assert tuple(gl.shape) == (N, Lq, case.M, case.L, case.P, 2)
    assert tuple(ga.shape) == (N, Lq, case.M, case.L, case.P)
    assert not torch.any(gv != 0)


def test_torch_index_tensors_and_noncontiguous_tensors():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inputs = make_inputs(BASE)
    expected = run(inputs)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    tensors["spatial_shapes"] = tensors["spatial_shapes"].to(torch.int32)
    # A transposed (non-contiguous) view with the same values.
    loc = tensors["sampling_locations"]
    tensors["sampling_locations"] = loc.transpose(0, 2).contiguous().transpose(0, 2)
    assert not tensors["sampling_locations"].is_contiguous()
    _assert_same([x.numpy() for x in run(tensors)], expected)


def test_torch_tensor_requiring_grad_is_accepted():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inputs = make_inputs(BASE)
    expected = run(inputs)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in inputs.items()}
    for key in ("value", "sampling_locations", "attention_weights"):
        tensors[key].requires_grad_(True)
    got = run(tensors)
    _assert_same([x.detach().numpy() for x in got], expected)


# ---------------------------------------------------------------------------
# DLPack producers that are neither NumPy nor torch


def _capsule_name(capsule):
    """'dltensor' or 'dltensor_versioned' (read from the capsule's repr)."""
    return re.search(r'capsule object "([^"]+)"', repr(capsule)).group(1)


class VersionedProducer:
    """Exports through DLPack >= 1.0 (the versioned capsule) when asked for it."""

    def __init__(self, array):
        self._array = array
        self.calls = []

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        kwargs = {}
        if max_version is not None:
            kwargs["max_version"] = max_version
        if dl_device is not None:
            kwargs["dl_device"] = dl_device
        if copy is not None:
            kwargs["copy"] = copy
        capsule = self._array.__dlpack__(**kwargs)
        self.calls.append((max_version, _capsule_name(capsule)))
        return capsule

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class LegacyProducer:
    """A pre-DLPack-1.0 producer: no max_version keyword, legacy capsule only."""

    def __init__(self, array):
        self._array = array
        self.calls = []

    def __dlpack__(self, stream=None):
        capsule = self._array.__dlpack__()  # no max_version: the legacy "dltensor" capsule
        self.calls.append(_capsule_name(capsule))
        return capsule

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


def test_numpy_gives_legacy_and_versioned_capsules():
    a = np.zeros(3)
    assert _capsule_name(a.__dlpack__(max_version=(1, 0))) == "dltensor_versioned"
    assert _capsule_name(a.__dlpack__()) == "dltensor"


@pytest.mark.parametrize("producer", [VersionedProducer, LegacyProducer])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dlpack_producers(producer, dtype):
    inputs = make_inputs(_case(dtype=dtype))
    saved = copies(inputs)
    expected = run(inputs)
    wrapped = {k: (producer(v) if k in FLOATS else v) for k, v in inputs.items()}
    got = run(wrapped)
    _assert_same([np.asarray(x) for x in got], expected)
    for key in FLOATS:
        calls = wrapped[key].calls
        assert calls, f"{key}: __dlpack__ was never called"
        if producer is VersionedProducer:
            # A DLPack 1.x consumer asks for (and so gets) the versioned capsule.
            assert all(v is not None and v[0] >= 1 and name == "dltensor_versioned"
                       for v, name in calls), calls
        else:
            assert all(name == "dltensor" for name in calls), calls
    assert_unchanged(inputs, saved)


def test_dlpack_producer_for_every_array():
    inputs = make_inputs(BASE)
    expected = run(inputs)
    wrapped = {k: VersionedProducer(np.ascontiguousarray(v)) for k, v in inputs.items()}
    _assert_same([np.asarray(x) for x in run(wrapped)], expected)
