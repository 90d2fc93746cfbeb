"""Timing a call: wall clock on the CPU, CUDA events on the GPU, and the statistics kept."""

from __future__ import annotations

import statistics
import time

from .constants import MAX_RUNS

__all__ = ["time_call", "time_cuda_events", "summary"]


def time_call(fn, repeats: int, warmup: int = 1, max_seconds: float | None = None,
              min_seconds: float = 0.0, max_runs: int = MAX_RUNS):
    """Calls fn() warmup times, then times repeats calls of it.

    With max_seconds, stops early once the timed calls add up to max_seconds and at
    least min(2, repeats) calls were made. With min_seconds, goes on past repeats
    while the timed calls add up to less than min_seconds (up to max_runs calls), so
    that fast calls get a stable median. Returns (median seconds, list of seconds,
    result of the last call).
    """
    result = None
    for _ in range(max(warmup, 0)):
        result = fn()
    repeats = max(int(repeats), 1)
    times = []
    while True:
        result = None  # drop the previous result before the next call
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        total = sum(times)
        if (max_seconds is not None and len(times) >= min(2, repeats)
                and total >= max_seconds):
            break
        if len(times) >= repeats and (total >= min_seconds or len(times) >= max_runs):
            break
    return statistics.median(times), times, result


def time_cuda_events(torch, fn, repeats: int, warmup: int, rotate: int = 1):
    """Times fn(i) on the GPU: at least one untimed warm-up call, then repeats calls, each
    between two CUDA events on the current stream; i cycles over range(rotate).
    Returns (median seconds, list of seconds)."""
    n = max(rotate, 1)
    for i in range(max(warmup, 1)):
        fn(i % n)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % n)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times), times


def summary(times) -> dict:
    """What a measurement records of its timed runs (seconds): {"median_s", "min_s",
    "times_s", "runs"}."""
    times = list(times)
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": times,
            "runs": len(times)}
