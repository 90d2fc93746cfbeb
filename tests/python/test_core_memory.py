"""Memory: repeated calls do not grow the process; every DLPack capsule a call takes is
consumed and released exactly once (also when the call fails); a failed call leaves
nothing behind that changes later results."""

from __future__ import annotations

import dataclasses
import gc
import os
import weakref

import numpy as np
import pytest
from strategies import Case, backward_args, forward_args, make_inputs

import msdacore

CASE = Case(N=1, levels=((12, 16), (6, 8), (3, 4)), M=2, D=8, P=2, Lq=30,
            align_corners=False, dtype=np.float32, seed=7, special_fraction=0.1,
            nonfinite_fraction=0.02)
NAMES = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
         "attention_weights", "grad_output")


def _rss_bytes():
    """Resident set size of this process now (Linux /proc), else None."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


def _growth(fn, warmup=200, rounds=4, calls=1000):
    """RSS growth over `rounds` x `calls` calls after a warm-up: the smallest growth of
    one round to the next is reported too, so a one-off allocation does not count."""
    for _ in range(warmup):
        fn()
    gc.collect()
    before = _rss_bytes()
    steps = []
    last = before
    for _ in range(rounds):
        for _ in range(calls):
            fn()
        gc.collect()
        now = _rss_bytes()
        steps.append(now - last)
        last = now
    return last - before, steps


needs_proc = pytest.mark.skipif(_rss_bytes() is None, reason="needs /proc/self/statm (Linux)")
# Under AddressSanitizer (scripts/sanitize_python.sh) freed memory sits in ASan's
# quarantine, so the resident set grows by design; the unsanitized run measures it.
not_sanitized = pytest.mark.skipif(
    os.environ.get("MSDACORE_SANITIZED") == "1",
    reason="ASan's quarantine keeps freed memory resident; RSS is measured by the plain run")
# A leak of even one small buffer per call over 4000 calls: D*M*Lq*4 bytes = 1.9 kB
# per output, so 4000 leaked outputs are 7.7 MB; allocator noise is far below 4 MB.
TOLERANCE = 4 << 20


@needs_proc
@not_sanitized
def test_repeated_numpy_calls_do_not_grow():
    inputs = make_inputs(CASE)

    def both():
        msdacore.ms_deform_attn(*forward_args(inputs))
        msdacore.ms_deform_attn_backward(*backward_args(inputs))

    total, steps = _growth(both)
    assert total < TOLERANCE, f"RSS grew by {total} bytes over 4000 calls (steps {steps})"


@needs_proc
@not_sanitized
def test_repeated_failing_calls_do_not_grow():
    inputs = make_inputs(CASE)
    bad_shape = dict(inputs, level_start_index=np.array([0, 5, 9]))
    bad_dtype = dict(inputs, value=inputs["value"].astype(np.float16))

    def failing():
        for bad, exc in ((bad_shape, ValueError), (bad_dtype, TypeError)):
            try:
                msdacore.ms_deform_attn_backward(*backward_args(bad))
            except exc:
                pass
            else:  # pragma: no cover
                raise AssertionError("expected an error")

    total, steps = _growth(failing, calls=1000)
    assert total < TOLERANCE, f"RSS grew by {total} bytes over failing calls (steps {steps})"


@needs_proc
@not_sanitized
def test_repeated_torch_calls_do_not_grow():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inputs = {k: torch.from_numpy(v) for k, v in make_inputs(CASE).items()}
    inputs["value"] = inputs["value"].requires_grad_(True)

    def both():
        msdacore.ms_deform_attn(*forward_args(inputs))
        msdacore.ms_deform_attn_backward(*backward_args(inputs))

    total, steps = _growth(both, calls=800)
    assert total < TOLERANCE, f"RSS grew by {total} bytes over 3200 torch calls (steps {steps})"


# ---- DLPack capsules ---------------------------------------------------------------------

class CountingProducer:
    """A foreign DLPack producer: wraps a NumPy array, and for each __dlpack__ call
    exports a fresh wrapper array (a view) of its data. A capsule holds its exported
    array alive until the consumer calls the capsule's deleter; so the wrapper is freed
    (its weakref.finalize runs) exactly when the deleter runs. Counts both."""

    def __init__(self, array):
        self._array = array
        self.exported = 0
        self.released = 0

    @property
    def shape(self):
        return self._array.shape

    def _release(self):
        self.released += 1

    def __dlpack__(self, stream=None, max_version=None, **kwargs):
        view = self._array.view()  # a new ndarray object owned only by the capsule
        weakref.finalize(view, self._release)
        self.exported += 1
        if max_version is None:
            capsule = view.__dlpack__()
        else:
            capsule = view.__dlpack__(max_version=max_version)
        del view
        return capsule

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


class LegacyCountingProducer(CountingProducer):
    """The same, for a producer from before DLPack 1.0 (no max_version argument)."""

    def __dlpack__(self, stream=None):
        return super().__dlpack__(stream=stream)


def _producers(inputs, cls=CountingProducer):
    return {k: cls(np.ascontiguousarray(v)) for k, v in inputs.items()}


def _counts(producers):
    gc.collect()
    return {k: (p.exported, p.released) for k, p in producers.items()}


@pytest.mark.parametrize("cls", [CountingProducer, LegacyCountingProducer])
def test_capsules_consumed_and_released_once(cls):
    inputs = make_inputs(CASE)
    producers = _producers(inputs, cls)
    out = msdacore.ms_deform_attn(*forward_args(producers))
    grads = msdacore.ms_deform_attn_backward(*backward_args(producers))
    counts = _counts(producers)
    for k in NAMES:
        uses = 2 if k != "grad_output" else 1
        # A producer without shape and dtype attributes whose shape sizes the outputs is
        # exported once more per call, to be described by the core's DLPack reader.
        if k in ("value", "sampling_locations", "attention_weights"):
            uses *= 2
        assert counts[k] == (uses, uses), f"{k}: exported/released {counts[k]}, expected {uses}"
    # and the results are right
    np.testing.assert_array_equal(out, msdacore.ms_deform_attn(*forward_args(inputs)))
    for g, e in zip(grads, msdacore.ms_deform_attn_backward(*backward_args(inputs))):
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("bad", ["shape", "dtype", "index", "object"])
def test_capsules_released_when_the_call_fails(bad):
    inputs = make_inputs(CASE)
    if bad == "shape":
        inputs["attention_weights"] = inputs["attention_weights"][..., :1]
    elif bad == "dtype":
        inputs["sampling_locations"] = inputs["sampling_locations"].astype(np.float64)
    elif bad == "index":
        inputs["level_start_index"] = inputs["level_start_index"] + 1
    producers = _producers(inputs)
    args = backward_args(producers)
    if bad == "object":
        args = args[:5] + (object(),)  # grad_output is no array: fails after 5 exports
    with pytest.raises((ValueError, TypeError)):
        msdacore.ms_deform_attn_backward(*args)
    with pytest.raises((ValueError, TypeError)):
        msdacore.ms_deform_attn(*args[:5]) if bad != "object" else \
            msdacore.ms_deform_attn(*args[:4], object())
    for k, (exported, released) in _counts(producers).items():
        assert exported == released, f"{k}: {exported} capsules exported, {released} released"


def test_capsule_is_not_consumed_twice():
    """A capsule already consumed (renamed used_dltensor) is refused, and its tensor
    is released once (by the first consumer), never again."""
    producer = CountingProducer(np.zeros((1, 2, 1, 1), np.float32))
    capsule = producer.__dlpack__(max_version=(1, 1))
    np.from_dlpack(_CapsuleHolder(capsule))  # consumed once by NumPy
    inputs = make_inputs(CASE)
    inputs["value"] = _CapsuleHolder(capsule)  # hands out the used capsule again
    with pytest.raises((TypeError, ValueError)):
        msdacore.ms_deform_attn(*forward_args(inputs))
    assert _counts({"v": producer})["v"] == (1, 1)


class _CapsuleHolder:
    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, **kwargs):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)


def test_torch_tensors_are_released():
    """torch tensors passed as inputs are freed when the caller drops them: nothing
    (no capsule, no view) keeps them alive after the call."""
    torch = pytest.importorskip("torch", reason="torch is not installed")
    inputs = {k: torch.from_numpy(v.copy()) for k, v in make_inputs(CASE).items()}
    refs = {k: weakref.ref(t) for k, t in inputs.items()}
    out = msdacore.ms_deform_attn(*forward_args(inputs))
    grads = msdacore.ms_deform_attn_backward(*backward_args(inputs))
    del inputs
    gc.collect()
    alive = [k for k, r in refs.items() if r() is not None]
    assert not alive, f"still alive after the calls: {alive}"
    assert out.shape == (1, CASE.Lq, CASE.M * CASE.D) and len(grads) == 3


# ---- no state left behind by failures ----------------------------------------------------

def test_failed_calls_change_no_later_result():
    """A valid call gives the same bytes before and after a long series of failing
    calls of every kind (and the inputs are unchanged)."""
    inputs = make_inputs(dataclasses.replace(CASE, dtype=np.float64, align_corners=True))
    saved = {k: v.copy() for k, v in inputs.items()}
    before = [msdacore.ms_deform_attn(*forward_args(inputs), align_corners=True),
              *msdacore.ms_deform_attn_backward(*backward_args(inputs), align_corners=True)]
    bads = [
        dict(inputs, value=inputs["value"][..., :0]),
        dict(inputs, value=inputs["value"].astype(np.float32)),
        dict(inputs, spatial_shapes=np.array([[2**40, 2**40], [1, 1], [1, 1]])),
        dict(inputs, level_start_index=np.array([0, -1, 7])),
        dict(inputs, sampling_locations=inputs["sampling_locations"][:, :, :, :, :, :1]),
        dict(inputs, attention_weights="weights"),
        dict(inputs, grad_output=inputs["grad_output"][:, :, :-1]),
        dict(inputs, grad_output=inputs["grad_output"].astype(np.complex128)),
    ]
    for _ in range(20):
        for bad in bads:
            with pytest.raises((ValueError, TypeError)):
                msdacore.ms_deform_attn_backward(*backward_args(bad), align_corners=True)
    after = [msdacore.ms_deform_attn(*forward_args(inputs), align_corners=True),
             *msdacore.ms_deform_attn_backward(*backward_args(inputs), align_corners=True)]
    for b, a in zip(before, after):
        assert b.tobytes() == a.tobytes()
    for k, v in saved.items():
        np.testing.assert_array_equal(inputs[k], v)
