"""Per-call overhead of msdacore's front ends on a tiny problem (N=1, Lq=4, one 2x2
level, M=1, D=4, P=1: the kernel itself takes well under a microsecond), so that the
time is the way from the caller to the kernel and back: NumPy forward and backward
through msdacore.ms_deform_attn*, and torch through msdacore.torch.ms_deform_attn (the
custom op, no autograd) and the plain API on torch tensors.

    python benchmarks/call_overhead.py [--calls 20000] [--repeats 7]

Prints the median over `repeats` rounds of the mean time per call, in microseconds, one
line per path. To compare two builds, run it under each in the same session, alternately.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import msdacore


def _inputs():
    rng = np.random.default_rng(0)
    value = rng.standard_normal((1, 4, 1, 4)).astype(np.float32)
    loc = rng.uniform(0, 1, (1, 4, 1, 1, 1, 2)).astype(np.float32)
    attn = rng.uniform(0, 1, (1, 4, 1, 1, 1)).astype(np.float32)
    shapes = np.array([[2, 2]], dtype=np.int64)
    starts = np.array([0], dtype=np.int64)
    return value, shapes, starts, loc, attn


def _median_us(fn, calls, repeats):
    fn()
    rounds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    msdacore.set_num_threads(1)
    value, shapes, starts, loc, attn = _inputs()
    grad = np.ones((1, 4, 4), dtype=np.float32)
    paths = {
        "numpy forward": lambda: msdacore.ms_deform_attn(value, shapes, starts, loc, attn),
        "numpy backward": lambda: msdacore.ms_deform_attn_backward(
            value, shapes, starts, loc, attn, grad),
    }
    try:
        import torch

        import msdacore.torch as mt
    except ImportError:
        torch = None
    if torch is not None:
        torch.set_num_threads(1)
        tv, ts, tst, tl, ta = (torch.from_numpy(a) for a in (value, shapes, starts, loc, attn))
        paths["torch op forward"] = lambda: mt.ms_deform_attn(tv, ts, tst, tl, ta)
        paths["torch plain-API forward"] = lambda: msdacore.ms_deform_attn(tv, ts, tst, tl, ta)
    print(f"msdacore {msdacore.__version__} from {msdacore.__file__}")
    for name, fn in paths.items():
        print(f"{name:<26} {_median_us(fn, args.calls, args.repeats):8.2f} us/call")


if __name__ == "__main__":
    main()
