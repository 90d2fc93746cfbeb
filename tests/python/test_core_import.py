"""What importing msdacore does and does not do: it starts no CUDA driver (build_info()
included), so a process can fork after importing it and use the CPU op in the child
(DataLoader workers, multiprocessing), and a build that fell back to CPU-only says why."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np

import msdacore


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


def test_import_and_build_info_load_no_cuda_driver():
    """libcuda (the driver) is mapped into the process only once a CUDA call is made; a
    build that counted devices at import would have it mapped here on any machine with
    a driver."""
    res = _run("""
        import msdacore
        msdacore.build_info()
        maps = open("/proc/self/maps").read()
        print("libcuda.so" in maps)
    """)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False", "import msdacore / build_info() loaded libcuda"


def test_fork_after_import_runs_the_cpu_op_in_the_child():
    res = _run("""
        import os, sys
        import numpy as np
        import msdacore
        msdacore.build_info()
        rng = np.random.default_rng(0)
        value = rng.standard_normal((1, 20, 2, 4)).astype(np.float32)
        loc = rng.uniform(0, 1, (1, 5, 2, 1, 2, 2)).astype(np.float32)
        attn = rng.uniform(0, 1, (1, 5, 2, 1, 2)).astype(np.float32)
        args = (value, [[4, 5]], [0], loc, attn)
        expected = msdacore.ms_deform_attn(*args)
        pid = os.fork()
        if pid == 0:
            out = msdacore.ms_deform_attn(*args)
            os._exit(0 if np.array_equal(out, expected) else 3)
        _, status = os.waitpid(pid, 0)
        sys.exit(os.waitstatus_to_exitcode(status))
    """)
    assert res.returncode == 0, (res.returncode, res.stderr)


def test_cuda_fallback_is_reported():
    info = msdacore.build_info()
    assert isinstance(info["cuda_fallback"], str)
    res = _run("import warnings; warnings.simplefilter('error'); import msdacore")
    if info["cuda_fallback"]:  # such a build warns at import, naming the reason
        assert res.returncode != 0 and info["cuda_fallback"][:40] in res.stderr
    else:  # and no other build does
        assert res.returncode == 0, res.stderr


def test_cuda_device_count_matches_the_build():
    count = msdacore.cuda_device_count()
    assert isinstance(count, int) and count >= 0
    if not msdacore.build_info()["cuda_compiled"]:
        assert count == 0


def test_outputs_are_allocated_by_the_callers_framework():
    """NumPy in, NumPy out, fresh, writable and cache-line aligned (a view of a buffer
    of its own); torch in, torch out (the core never allocates outputs for frameworks
    it knows)."""
    rng = np.random.default_rng(1)
    value = rng.standard_normal((1, 6, 1, 2))
    loc = rng.uniform(0, 1, (1, 3, 1, 1, 1, 2))
    attn = rng.uniform(0, 1, (1, 3, 1, 1, 1))
    out = msdacore.ms_deform_attn(value, [[2, 3]], [0], loc, attn)
    assert type(out) is np.ndarray and out.flags.writeable and out.flags.c_contiguous
    assert out.ctypes.data % 64 == 0
    assert not any(np.shares_memory(out, x) for x in (value, loc, attn))
    assert out.shape == (1, 3, 2) and out.dtype == np.float64
