"""CPU results are bitwise identical for any thread count and from run to run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from devices import assert_same_bits, run, same_bits
from strategies import Case, forward_args, make_inputs

import msdacore

MEDIUM = Case(N=2, levels=((20, 24), (10, 12), (5, 6), (3, 3)), M=4, D=16, P=4, Lq=300,
              align_corners=False, dtype=np.float32, seed=2024, special_fraction=0.1,
              nonfinite_fraction=0.01)


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
    one = run(inputs, align_corners)
    msdacore.set_num_threads(2)
    two = run(inputs, align_corners)
    again = run(inputs, align_corners)
    assert_same_bits(one, two, "1 vs 2 threads")
    assert_same_bits(two, again, "run to run")


_ISA_SCRIPT = r"""
import dataclasses, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import msdacore
from test_core_threads import MEDIUM
from devices import run
from strategies import make_inputs

if msdacore.build_info()["cpu_isa"] != sys.argv[2]:
    sys.exit(3)  # compiled in, but this machine cannot run it
results = {}
for dtype in (np.float32, np.float64):
    for align_corners in (False, True):
        case = dataclasses.replace(MEDIUM, dtype=dtype, align_corners=align_corners)
        inputs = make_inputs(case)
        if align_corners:  # a strided value too
            inputs["value"] = np.asfortranarray(inputs["value"])
        for k, x in enumerate(run(inputs, align_corners)):
            results[f"{np.dtype(dtype).name}-{align_corners}-{k}"] = x
np.savez(sys.argv[3], **results)
"""


def _isas():
    isas = msdacore.build_info().get("cpu_isas")
    return [s for s in isas.split(",") if s] if isinstance(isas, str) else []


@pytest.mark.skipif(len(_isas()) < 2, reason="this build has a single CPU kernel build")
def test_cpu_kernel_builds_give_identical_results(tmp_path):
    """Every CPU instruction-set build (MSDACORE_CPU_ISA) gives bitwise the same results."""
    import os
    import pathlib
    import subprocess
    import sys

    here = str(pathlib.Path(__file__).resolve().parent)
    results = {}
    for isa in _isas():
        path = tmp_path / f"{isa}.npz"
        env = dict(os.environ, MSDACORE_CPU_ISA=isa)
        run = subprocess.run([sys.executable, "-c", _ISA_SCRIPT, here, isa, str(path)], env=env,
                             timeout=300, cwd=here, capture_output=True, text=True)
        if run.returncode == 3:
            continue
        assert run.returncode == 0, f"{isa}: {run.stderr}"
        with np.load(path) as data:
            results[isa] = {k: data[k] for k in data.files}
    if len(results) < 2:
        pytest.skip(f"this machine runs only one of the CPU kernel builds {_isas()}")
    first, *others = list(results)
    for isa in others:
        assert results[isa].keys() == results[first].keys()
        for key, x in results[first].items():
            y = results[isa][key]
            assert x.dtype == y.dtype and x.shape == y.shape, key
            assert x.tobytes() == y.tobytes(), f"{key}: {first} and {isa} differ"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_corner_paths_give_identical_results(dtype):
    """The forward adds a sample's corners outside its level as +0 * value[n, 0, m]
    without a branch when those rows are finite, and skips them with a branch otherwise
    or on strided channels: the same bits either way, and with non-finite token-0 rows
    still the reference's results (a skipped corner never reads them)."""
    from msdacore.reference import ms_deform_attn as reference

    # D = 32: whole register chunks for float32 and float64 (the branch-free path)
    case = dataclasses.replace(MEDIUM, dtype=dtype, D=32, nonfinite_fraction=0.0)
    inputs = make_inputs(case)
    args = list(forward_args(inputs))
    value = args[0]
    contiguous = msdacore.ms_deform_attn(*args)
    strided = np.empty(value.shape[:-1] + (2 * value.shape[-1],), dtype)[..., ::2]
    strided[...] = value
    branchy = msdacore.ms_deform_attn(strided, *args[1:])
    assert same_bits([contiguous], [branchy])

    value_bad = value.copy()
    value_bad[:, 0, 0, 0] = np.inf
    value_bad[:, 0, 1, 0] = np.nan
    got = msdacore.ms_deform_attn(value_bad, *args[1:])
    want = reference(value_bad.astype(np.float64), *args[1:3],
                     *(x.astype(np.float64) for x in args[3:]))
    assert np.array_equal(np.isnan(got), np.isnan(want))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    assert finite.mean() > 0.9  # most rows never read token 0
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-4, atol=1e-4)
