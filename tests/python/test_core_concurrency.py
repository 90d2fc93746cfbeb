"""Thread safety: many Python threads calling forward and backward at once get the
results of serial calls, bitwise; the GIL is released inside the calls, so other Python
threads run meanwhile and two calls run at once (observed by the threads themselves, not
timed)."""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

import numpy as np
import pytest
from devices import run, same_bits
from strategies import Case, backward_args, forward_args, make_inputs

import msdacore

BASE = Case(N=1, levels=((16, 20), (8, 10), (4, 5)), M=2, D=8, P=3, Lq=40,
            align_corners=False, dtype=np.float32, seed=0, special_fraction=0.1,
            nonfinite_fraction=0.02)


def _problems():
    """Eight different problems (dtypes, align_corners, sizes, strided inputs)."""
    out = []
    for k in range(8):
        case = dataclasses.replace(BASE, seed=100 + k, dtype=(np.float32, np.float64)[k % 2],
                                   align_corners=bool(k & 2), Lq=BASE.Lq + 7 * k,
                                   N=1 + (k % 3))
        inputs = make_inputs(case)
        if k & 4:
            inputs["value"] = np.asfortranarray(inputs["value"])
            inputs["sampling_locations"] = inputs["sampling_locations"][:, ::-1][:, ::-1]
        out.append((case, inputs))
    return out


def _both(case, inputs):
    return run(inputs, case.align_corners)


@pytest.mark.parametrize("kernel_threads", [1, 2])
def test_many_threads_match_serial_results(restore_threads, kernel_threads):
    """16 Python threads, each running every problem several times in its own order,
    with the kernels' own thread count 1 or 2 (OpenMP teams inside Python threads)."""
    msdacore.set_num_threads(kernel_threads)
    problems = _problems()
    serial = [_both(case, inputs) for case, inputs in problems]
    failures = []
    start = threading.Barrier(16)

    def worker(t):
        try:
            start.wait()
            order = np.random.default_rng(t).permutation(len(problems) * 3) % len(problems)
            for k in order:
                got = _both(*problems[k])
                if not same_bits(got, serial[k]):
                    failures.append(f"thread {t}, problem {k}: results differ from serial")
        except Exception as e:  # noqa: BLE001 (any failure of a worker is reported below)
            failures.append(f"thread {t}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(16)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a thread hung"
    assert not failures, failures[:5]


def test_errors_in_some_threads_do_not_disturb_others():
    """Threads raising ValueError/TypeError next to threads computing."""
    case, inputs = _problems()[0]
    expected = _both(case, inputs)
    bad = dict(inputs, level_start_index=np.array([0, 1, 2]))
    bad_dtype = dict(inputs, attention_weights=inputs["attention_weights"].astype(np.float16))
    failures = []

    def good():
        for _ in range(20):
            if not same_bits(_both(case, inputs), expected):
                failures.append("wrong result next to failing calls")

    def failing(args, exc):
        for _ in range(40):
            try:
                msdacore.ms_deform_attn(*forward_args(args))
            except exc:
                continue
            failures.append(f"expected {exc.__name__}")

    threads = [threading.Thread(target=good) for _ in range(3)]
    threads += [threading.Thread(target=failing, args=(bad, ValueError)) for _ in range(2)]
    threads += [threading.Thread(target=failing, args=(bad_dtype, TypeError)) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not failures, failures[:5]


def test_set_num_threads_while_other_threads_compute(restore_threads):
    """Changing the kernel thread count while calls run changes no result (results are
    bitwise identical for any thread count) and breaks nothing."""
    case, inputs = _problems()[1]
    expected = _both(case, inputs)
    failures = []
    stop = threading.Event()

    def compute():
        while not stop.is_set():
            if not same_bits(_both(case, inputs), expected):
                failures.append("result changed with the thread count")

    threads = [threading.Thread(target=compute) for _ in range(3)]
    for th in threads:
        th.start()
    for k in range(60):
        msdacore.set_num_threads(1 + k % 3)
        time.sleep(0.002)
    stop.set()
    for th in threads:
        th.join(timeout=120)
    assert not failures, failures[:3]


# ---- the GIL is released inside the core -------------------------------------------------
#
# No clocks: a profile hook in each calling thread counts the threads inside a call into
# msdacore's extension (between its c_call and c_return events, which run in the calling
# thread with the GIL held), and other threads read that count. With the switch interval
# raised far beyond the test's length, a thread running Python code keeps the GIL until it
# blocks or a C function releases it, so another thread can run Python code while a call
# is counted only if the extension released the GIL inside that call. If it never does,
# the calls end (at most MAX_CALLS each) without the event and the test fails.

MAX_CALLS = 500
EXTENSION = "msdacore"  # the module prefix of the C functions counted
# A few milliseconds per call, so that a waiting thread is usually scheduled within one call.
GIL_CASE = dataclasses.replace(BASE, levels=((32, 32), (16, 16)), M=4, D=16, P=4, Lq=1000,
                               special_fraction=0.0, nonfinite_fraction=0.0)


class _InsideCounter:
    """A sys.setprofile hook counting the threads inside calls into msdacore's extension."""

    def __init__(self):
        self.inside = 0
        self.calls = 0
        self.most = 0

    def hook(self, frame, event, arg):
        if event in ("c_call", "c_return", "c_exception") and \
                (getattr(arg, "__module__", None) or "").startswith(EXTENSION):
            if event == "c_call":
                self.inside += 1
                self.calls += 1
                self.most = max(self.most, self.inside)
            else:
                self.inside -= 1


def _calls_until(counter, seen, call):
    """A thread's work: call() with the profile hook, until seen is set or MAX_CALLS."""
    sys.setprofile(counter.hook)
    try:
        for _ in range(MAX_CALLS):
            if seen.is_set():
                break
            call()
    finally:
        sys.setprofile(None)


def _run_threads(threads):
    switch = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    try:
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=300)
    finally:
        sys.setswitchinterval(switch)
    assert not any(th.is_alive() for th in threads), "a thread hung"


def _call(direction):
    inputs = make_inputs(GIL_CASE)
    if direction == "forward":
        return lambda: msdacore.ms_deform_attn(*forward_args(inputs))
    return lambda: msdacore.ms_deform_attn_backward(*backward_args(inputs))


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_gil_released_python_runs_during_a_call(direction):
    """A pure-Python thread sees the calling thread inside a call into the extension."""
    counter = _InsideCounter()
    seen = threading.Event()
    done = threading.Event()
    call = _call(direction)

    def caller():
        try:
            _calls_until(counter, seen, call)
        finally:
            done.set()

    def watcher():
        while not done.is_set():
            if counter.inside > 0:
                seen.set()
                return
            done.wait(0.0005)  # blocks: hands the GIL back to the caller

    _run_threads([threading.Thread(target=caller), threading.Thread(target=watcher)])
    assert counter.calls > 0, "no call into msdacore's extension was seen"
    assert seen.is_set(), (f"in {counter.calls} calls, Python code never ran while a call "
                           "was inside the extension: is the GIL held during the call?")


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_gil_released_two_calls_overlap(direction):
    """Two threads are inside calls into the extension at once."""
    counter = _InsideCounter()
    both = threading.Event()
    call = _call(direction)

    def caller():
        def step():
            call()
            if counter.most >= 2:
                both.set()
        _calls_until(counter, both, step)

    _run_threads([threading.Thread(target=caller) for _ in range(2)])
    assert counter.calls > 0, "no call into msdacore's extension was seen"
    assert counter.most >= 2, (f"in {counter.calls} calls, never two threads inside the "
                               "extension at once: is the GIL held during the call?")
