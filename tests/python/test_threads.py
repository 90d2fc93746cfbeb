"""CPU results are bitwise identical for any thread count and from run to run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import msdacore
from strategies import Case, backward_args, forward_args, make_inputs

MEDIUM = Case(N=2, levels=((20, 24), (10, 12), (5, 6), (3, 3)), M=4, D=16, P=4, Lq=300,
              align_corners=False, dtype=np.float32, seed=2024, special_fraction=0.1,
              nonfinite_fraction=0.01)


@pytest.fixture
def restore_threads():
    before = msdacore.get_num_threads()
    yield
    msdacore.set_num_threads(before)
    assert msdacore.get_num_threads() == before


def _run(inputs, align_corners):
    out = msdacore.ms_deform_attn(*forward_args(inputs), align_corners=align_corners)
    grads = msdacore.ms_deform_attn_backward(*backward_args(inputs), align_corners=align_corners)
    return (out,) + tuple(grads)


def _assert_bitwise_equal(a, b, what):
    names = ("output", "grad_value", "grad_sampling_locations", "grad_attention_weights")
    for name, x, y in zip(names, a, b):
        assert x.dtype == y.dtype and x.shape == y.shape, f"{what}: {name}"
        # Compare the bytes, so that NaN payloads and signed zeros count too.
        assert np.ascontiguousarray(x).tobytes() == np.ascontiguousarray(y).tobytes(), \
            f"{what}: {name} differs"


def test_set_and_get_num_threads(restore_threads):
    msdacore.set_num_threads(1)
    assert msdacore.get_num_threads() == 1
    msdacore.set_num_threads(2)
    if msdacore.build_info().get("openmp"):
        assert msdacore.get_num_threads() == 2


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_thread_count_does_not_change_results(restore_threads, dtype, align_corners):
    case = dataclasses.replace(MEDIUM, dtype=dtype, align_corners=align_corners)
    inputs = make_inputs(case)
    msdacore.set_num_threads(1)
    one = _run(inputs, align_corners)
    msdacore.set_num_threads(2)
    two = _run(inputs, align_corners)
    again = _run(inputs, align_corners)
    _assert_bitwise_equal(one, two, "1 vs 2 threads")
    _assert_bitwise_equal(two, again, "run to run")
