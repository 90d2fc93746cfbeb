"""Hostile inputs and environments, each case where a crash or hang is possible in its own
process: unsupported NumPy dtypes and index values, non-bool flags and non-int thread
counts, outputs too large to allocate, broken DLPack producers, fork after a parallel
call (plain fork and torch DataLoader workers)."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from dlpack_ctypes import RefusingProducer

import msdacore


def _small(dtype=np.float32):
    rng = np.random.default_rng(0)
    return (rng.standard_normal((1, 12, 2, 4)).astype(dtype), [[3, 4]], [0],
            rng.uniform(0, 1, (1, 3, 2, 1, 2, 2)).astype(dtype),
            rng.uniform(0, 1, (1, 3, 2, 1, 2)).astype(dtype))


TESTS_DIR = str(pathlib.Path(__file__).resolve().parent)


def _run(code: str, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("dtype", [object, "U3", "S3", "datetime64[s]", "timedelta64[s]",
                                   [("a", np.float32)], "V4", np.longdouble])
@pytest.mark.parametrize("arg", [0, 3, 4])
def test_numpy_dtypes_dlpack_cannot_carry_raise_type_error(dtype, arg):
    args = list(_small())
    args[arg] = np.zeros(args[arg].shape, dtype=dtype)
    with pytest.raises(TypeError, match=r"has dtype .*which msdacore does not support"):
        msdacore.ms_deform_attn(*args)


@pytest.mark.parametrize("shapes", [[[3, 2**70]], [[2**64, 4]]])
def test_index_lists_past_int64_raise_type_error(shapes):
    args = list(_small())
    args[1] = shapes
    with pytest.raises(TypeError, match="integers that fit int64"):
        msdacore.ms_deform_attn(*args)


@pytest.mark.parametrize("flag", ["False", "True", 0, 1, None, 1.0, [True]])
def test_flags_must_be_bools(flag):
    with pytest.raises(TypeError, match="align_corners must be a bool"):
        msdacore.ms_deform_attn(*_small(), align_corners=flag)
    args = _small()
    grad = np.ones((1, 3, 8), np.float32)
    with pytest.raises(TypeError, match="deterministic must be a bool"):
        msdacore.ms_deform_attn_backward(*args, grad, deterministic=flag)


def test_numpy_bools_are_flags():
    a = msdacore.ms_deform_attn(*_small(), align_corners=np.bool_(True))
    b = msdacore.ms_deform_attn(*_small(), align_corners=True)
    assert np.array_equal(a, b)


@pytest.mark.parametrize("n", [1.7, "3", True, False, None, 2.0])
def test_thread_count_must_be_an_int(n):
    with pytest.raises(TypeError, match="takes an int"):
        msdacore.set_num_threads(n)


@pytest.mark.parametrize("n", [2**31, -2**31 - 1, 10**30, 0, 1025])
def test_thread_count_out_of_range_is_a_value_error(n):
    with pytest.raises(ValueError, match="between 1 and 1024"):
        msdacore.set_num_threads(n)


def test_outputs_too_large_raise_memory_error_naming_them():
    z = np.zeros
    value = np.broadcast_to(z((1, 1, 1, 1), np.float32), (1, 1, 2**20, 2**20))
    loc = np.broadcast_to(z((1, 1, 1, 1, 1, 2), np.float32), (1, 4, 2**20, 1, 1, 2))
    attn = np.broadcast_to(z((1, 1, 1, 1, 1), np.float32), (1, 4, 2**20, 1, 1))
    with pytest.raises(MemoryError, match=r"outputs cannot be allocated \(output \(1, 4, "):
        msdacore.ms_deform_attn(value, [[1, 1]], [0], loc, attn)
    grad = np.broadcast_to(z((1, 1, 1), np.float32), (1, 4, 2**40))
    with pytest.raises(MemoryError, match=r"grad_value \(1, 1, 1048576, 1048576\)"):
        msdacore.ms_deform_attn_backward(value, [[1, 1]], [0], loc, attn, grad)


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyError("k"), OSError("io")])
def test_producer_whose_dlpack_raises_gives_type_error(error):
    args = list(_small())
    args[0] = RefusingProducer(error)
    with pytest.raises(TypeError, match=r"value cannot be exported through DLPack: its "
                                        r"__dlpack__ raised"):
        msdacore.ms_deform_attn(*args)


def test_null_shape_pointer_is_refused_not_a_crash():
    """A legacy DLPack capsule whose DLTensor has ndim 4 and shape NULL (in a child: a
    crash must not take the test run down)."""
    res = _run(f"""
        import sys
        import numpy as np, msdacore
        sys.path.insert(0, {TESTS_DIR!r})
        from dlpack_ctypes import DLDataType, DLDevice, DLManagedTensor, legacy_capsule
        buf = np.zeros(96, np.float32)
        m = DLManagedTensor()
        m.dl_tensor.data = buf.ctypes.data
        m.dl_tensor.device = DLDevice(1, 0)
        m.dl_tensor.ndim = 4
        m.dl_tensor.dtype = DLDataType(2, 32, 1)
        class Broken:
            def __dlpack_device__(self):
                return (1, 0)
            def __dlpack__(self, **kwargs):
                if "max_version" in kwargs:
                    raise TypeError("legacy producer")
                return legacy_capsule(m)

        rng = np.random.default_rng(0)
        loc = rng.uniform(0, 1, (1, 3, 2, 1, 2, 2)).astype(np.float32)
        attn = rng.uniform(0, 1, (1, 3, 2, 1, 2)).astype(np.float32)
        try:
            msdacore.ms_deform_attn(Broken(), [[3, 4]], [0], loc, attn)
        except ValueError as e:
            print("ValueError:", e)
    """)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])
    assert "no shape (a null shape pointer)" in res.stdout


def test_nested_torch_tensors_give_type_error():
    torch = pytest.importorskip("torch")
    args = list(_small())
    nested = torch.nested.nested_tensor([torch.zeros(12, 2, 4), torch.zeros(10, 2, 4)])
    args[0] = nested
    with pytest.raises((TypeError, ValueError)):
        msdacore.ms_deform_attn(*args)
    import msdacore.torch as mt
    with pytest.raises((TypeError, ValueError)):
        mt.ms_deform_attn(nested, [[3, 4]], [0], torch.from_numpy(args[3]),
                          torch.from_numpy(args[4]))


def test_fork_after_a_parallel_call_does_not_hang():
    """GNU libgomp's pool does not survive fork(): the child starts at one thread."""
    res = _run("""
        import os, sys
        import numpy as np
        import msdacore
        msdacore.set_num_threads(2)
        rng = np.random.default_rng(0)
        value = rng.standard_normal((2, 64 * 64, 8, 32)).astype(np.float32)
        loc = rng.uniform(0, 1, (2, 500, 8, 1, 4, 2)).astype(np.float32)
        attn = rng.uniform(0, 1, (2, 500, 8, 1, 4)).astype(np.float32)
        args = (value, [[64, 64]], [0], loc, attn)
        expected = msdacore.ms_deform_attn(*args)  # a parallel region in the parent
        pid = os.fork()
        if pid == 0:
            ok = np.array_equal(msdacore.ms_deform_attn(*args), expected)
            ok = ok and msdacore.get_num_threads() == 1
            os._exit(0 if ok else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """, timeout=60)
    assert res.returncode == 0, (res.returncode, res.stderr[-2000:])


def test_dataloader_workers_after_a_parallel_call():
    pytest.importorskip("torch")
    res = _run("""
        import numpy as np, torch
        import msdacore
        import msdacore.torch as mt
        msdacore.set_num_threads(2)
        g = torch.Generator().manual_seed(0)
        value = torch.randn(1, 48 * 48, 8, 32, generator=g)
        loc = torch.rand(1, 400, 8, 1, 4, 2, generator=g)
        attn = torch.rand(1, 400, 8, 1, 4, generator=g)
        shapes = [[48, 48]]
        expected = mt.ms_deform_attn(value, shapes, None, loc, attn)  # parallel, in the parent

        class Data(torch.utils.data.Dataset):
            def __len__(self):
                return 4
            def __getitem__(self, i):
                return mt.ms_deform_attn(value, shapes, None, loc, attn)

        loader = torch.utils.data.DataLoader(Data(), batch_size=None, num_workers=2,
                                             multiprocessing_context="fork")
        outs = list(loader)
        assert len(outs) == 4 and all(torch.equal(o, expected) for o in outs)
        print("ok")
    """, timeout=120)
    assert res.returncode == 0 and "ok" in res.stdout, (res.returncode, res.stderr[-2000:])


def test_flush_to_zero_of_the_caller_holds_in_every_thread():
    """With FTZ/DAZ set by the caller (torch.set_flush_denormal) after OpenMP's worker
    threads exist (they inherit the mode only when created), results on subnormal inputs
    are the same for 1 and 2 threads, and the other way round."""
    pytest.importorskip("torch")
    res = _run("""
        import numpy as np, torch
        import msdacore
        rng = np.random.default_rng(0)
        value = (rng.standard_normal((2, 32 * 32, 8, 32)) * 1e-39).astype(np.float32)
        loc = rng.uniform(0, 1, (2, 300, 8, 1, 4, 2)).astype(np.float32)
        attn = rng.uniform(0, 1, (2, 300, 8, 1, 4)).astype(np.float32)
        args = (value, [[32, 32]], [0], loc, attn)
        grad = (rng.standard_normal((2, 300, 256)) * 1e-39).astype(np.float32)
        msdacore.set_num_threads(2)
        msdacore.ms_deform_attn(*args)  # the worker threads now exist, without FTZ
        for flush in (True, False):
            if not torch.set_flush_denormal(flush):
                print("unsupported"); raise SystemExit(0)
            results = []
            for threads in (1, 2):
                msdacore.set_num_threads(threads)
                results.append((msdacore.ms_deform_attn(*args),)
                               + msdacore.ms_deform_attn_backward(*args, grad))
            same = all(np.array_equal(a, b) for a, b in zip(*results))
            flushed = not np.any(results[0][0])  # subnormal products flushed to zero
            print("same" if same else "differ", "flushed" if flushed else "kept")
    """)
    assert res.returncode == 0, res.stderr[-2000:]
    if "unsupported" in res.stdout:
        pytest.skip("this CPU has no flush-to-zero mode (torch.set_flush_denormal)")
    assert res.stdout.split() == ["same", "flushed", "same", "kept"], res.stdout


def test_inputs_of_two_frameworks_in_one_call():
    """NumPy value with torch locations and the reverse: forward and backward allocate
    each output with the value's framework, in each input's dtype."""
    torch = pytest.importorskip("torch")
    value, shapes, starts, loc, attn = _small(np.float64)
    grad = np.ones((1, 3, 8))
    expected = msdacore.ms_deform_attn_backward(value, shapes, starts, loc, attn, grad)
    for args in ((value, torch.from_numpy(loc), attn, grad),
                 (torch.from_numpy(value), loc, torch.from_numpy(attn), torch.from_numpy(grad))):
        grads = msdacore.ms_deform_attn_backward(args[0], shapes, starts, args[1], args[2],
                                                 args[3])
        for g, e in zip(grads, expected):
            assert type(g) is type(args[0])
            assert np.array_equal(np.asarray(g), e)


def test_empty_points_per_level_is_refused():
    with pytest.raises(ValueError, match="one count per level, got an empty"):
        msdacore.ms_deform_attn(*_small(), points_per_level=[])
