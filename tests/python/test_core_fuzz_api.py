"""Bad-input fuzzing of the Python API (SPEC "Errors").

Every call of ms_deform_attn / ms_deform_attn_backward must either compute the SPEC
result or raise ValueError / TypeError: never crash, hang, read out of bounds or
return a wrong answer. Hypothesis starts from a small valid problem and applies a few
mutations: non-array objects, other dtypes (float16, ints, unsigned, bool, complex,
strings, objects), other ranks and sizes, negative and zero strides (flips,
broadcast_to, as_strided), non-native byte order, read-only and misaligned arrays,
NaN / Inf / 1e30 / -1e30 in every float input, and index arrays that are negative,
zero, inconsistent or huge (H or W of 2^31, 2^40, 2^62) given as arrays or lists.

Oracle: a call on inputs this file can classify as valid (float32/float64 of one
dtype, int32/int64 index arrays, shapes and index arrays consistent) must return the
reference's result (msdacore.reference, float64); a call on invalid inputs must raise
ValueError or TypeError; inputs are never modified either way.

The examples run in a child Python process (this file run as a script) with a time
limit, so that a crash or a hang fails the test instead of killing the test run.
Hypothesis settings come from conftest's profile, with derandomize on and a bounded
number of examples per target.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys

import pytest

HERE = pathlib.Path(__file__).resolve().parent
CHILD_TIMEOUT_S = 300  # far above the normal run time (seconds): only a hang reaches it
MAX_EXAMPLES = {"numpy": 300, "values": 150, "torch": 150, "sizes": 60}


def _torch_available():
    try:
        import torch  # noqa: F401
    except Exception:  # noqa: BLE001 (a torch that fails to import is absent)
        return False
    return True


def _run_child(target):
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "2")
    try:
        proc = subprocess.run([sys.executable, str(pathlib.Path(__file__)), target], cwd=HERE,
                              env=env, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"fuzz target {target!r} hung (no result in {CHILD_TIMEOUT_S} s)\n"
                    f"{(e.stderr or '')[-4000:] if isinstance(e.stderr, str) else ''}")
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        pytest.fail(f"fuzz target {target!r} crashed ({name})\n{proc.stderr[-8000:]}")
    if proc.returncode != 0:
        pytest.fail(f"fuzz target {target!r} failed (exit {proc.returncode})\n"
                    f"{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}")
    assert "fuzz-ok" in proc.stdout, proc.stdout[-2000:]


def test_fuzz_numpy_inputs():
    """Mutated NumPy inputs: types, dtypes, ranks, sizes, strides, index arrays."""
    _run_child("numpy")


def test_fuzz_special_values():
    """NaN, +-Inf, +-1e30 and huge coordinates in every float input."""
    _run_child("values")


@pytest.mark.skipif(not _torch_available(), reason="torch is not installed")
def test_fuzz_torch_inputs():
    """Mutated torch tensors: the above plus meta / sparse / conjugated tensors,
    tensors requiring grad, expanded (zero-stride) and transposed views."""
    _run_child("torch")


def test_fuzz_huge_sizes():
    """Level sizes near and past 2^31 (value broadcast over S with a zero stride),
    sizes whose products overflow int64; never an overflow, crash or wrong shape."""
    _run_child("sizes")


# --------------------------------------------------------------------------------------
# The child process.
# --------------------------------------------------------------------------------------

OK_ERRORS = (ValueError, TypeError)
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
HALF_DTYPES = ("float16", "bfloat16")
INDEX_DTYPES = ("int32", "int64")
ARGS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
        "attention_weights", "grad_output")
FLOAT_ARGS = ("value", "sampling_locations", "attention_weights", "grad_output")
HUGE_SIZES = (2**31 - 1, 2**31, 2**32, 2**40, 2**62, 2**63 - 1)


def _child_main(target):  # pragma: no cover - runs in the child
    sys.path.insert(0, str(HERE))
    import conftest  # noqa: F401  (loads the hypothesis profile)
    from hypothesis import settings

    fuzz, extra = _make_targets()[target]
    cap = int(os.environ.get("MSDACORE_FUZZ_EXAMPLES", MAX_EXAMPLES[target]))
    derandomize = os.environ.get("MSDACORE_FUZZ_RANDOM") != "1"
    limited = settings(settings.default, max_examples=min(cap, settings.default.max_examples),
                       derandomize=derandomize, database=None, deadline=None)
    limited(fuzz)()
    if extra is not None:
        extra()
    print("fuzz-ok", target)


def _make_targets():  # pragma: no cover - runs in the child
    import numpy as np
    from hypothesis import assume, given, note
    from hypothesis import strategies as st
    from strategies import (
        assert_close,
        away_from_integers,
        cases,
        comparison_floors,
        load_reference,
        make_inputs,
    )

    import msdacore

    ref = load_reference()
    try:
        import torch
    except Exception:  # noqa: BLE001 (a torch that fails to import is absent)
        torch = None

    small_cases = cases(max_N=2, max_L=3, max_HW=5, max_M=3, max_D=6, max_P=3, max_Lq=5)

    # ---- the oracle ------------------------------------------------------------------
    def to_numpy(x):
        if torch is not None and isinstance(x, torch.Tensor):
            return x.detach().resolve_conj().resolve_neg().numpy()
        return x

    def dtype_name(x):
        if isinstance(x, np.ndarray):
            return x.dtype.name
        if torch is not None and isinstance(x, torch.Tensor):
            return str(x.dtype).replace("torch.", "")
        return None

    def plain_torch(x):
        return (torch is not None and isinstance(x, torch.Tensor) and x.device.type == "cpu"
                and x.layout == torch.strided and not x.is_conj())

    def index_ok(x):
        if isinstance(x, (list, tuple)):
            try:
                a = np.asarray(x)
            except Exception:  # noqa: BLE001 (whatever NumPy cannot read is no index array)
                return False
            return a.dtype.kind == "i"
        if isinstance(x, np.ndarray) or plain_torch(x):
            return dtype_name(x) in INDEX_DTYPES
        return False

    def classify(a, backward):
        """True: valid by SPEC (the call must succeed); False: invalid (must raise)."""
        names = FLOAT_ARGS if backward else FLOAT_ARGS[:3]
        value_dtype = dtype_name(a["value"])
        for k in names:
            x = a[k]
            if not (isinstance(x, np.ndarray) or plain_torch(x)):
                return False
            if dtype_name(x) not in FLOAT_DTYPES:
                return False
            # Mixed precision: float32 locations and weights with a half value.
            mixed_ok = (k in ("sampling_locations", "attention_weights")
                        and value_dtype in HALF_DTYPES and dtype_name(x) == "float32")
            if dtype_name(x) != value_dtype and not mixed_ok:
                return False
        if not (index_ok(a["spatial_shapes"]) and index_ok(a["level_start_index"])):
            return False
        v = to_numpy(a["value"])
        ss = np.asarray(to_numpy(a["spatial_shapes"]))
        lsi = np.asarray(to_numpy(a["level_start_index"]))
        loc = to_numpy(a["sampling_locations"])
        attn = to_numpy(a["attention_weights"])
        if v.ndim != 4 or ss.ndim != 2 or ss.shape[1] != 2 or ss.shape[0] < 1:
            return False
        N, S, M, D = v.shape
        L = ss.shape[0]
        if min(S, M, D) < 1 or lsi.shape != (L,) or loc.ndim != 6:
            return False
        Lq, P = loc.shape[1], loc.shape[4]
        if loc.shape != (N, Lq, M, L, P, 2) or attn.shape != (N, Lq, M, L, P) or P < 1:
            return False
        if backward and to_numpy(a["grad_output"]).shape != (N, Lq, M * D):
            return False
        H = ss[:, 0].astype(object)
        W = ss[:, 1].astype(object)  # Python ints: no overflow in the oracle
        if any(h < 1 for h in H) or any(w < 1 for w in W):
            return False
        starts, total = [], 0
        for h, w in zip(H, W):
            starts.append(total)
            total += h * w
        return [int(s) for s in lsi] == starts and total == S

    def snapshot(a):
        out = {}
        for k, x in a.items():
            if torch is not None and isinstance(x, torch.Tensor):
                if plain_torch(x):
                    out[k] = (x, x.detach().clone())
            elif isinstance(x, np.ndarray) and x.dtype.kind not in "OUSVMm":
                out[k] = (x, np.array(x, copy=True))
        return out

    def check_unchanged(saved):
        for k, (x, copy) in saved.items():
            if isinstance(x, np.ndarray):
                same = np.array_equal(x, copy, equal_nan=x.dtype.kind in "fc")
            else:
                same = torch.equal(x.detach(), copy) or (
                    (x.dtype.is_floating_point or x.dtype.is_complex)  # NaN equal to NaN
                    and bool(torch.all(
                        (x.detach() == copy) | (torch.isnan(x.detach()) & torch.isnan(copy)))))
            assert same, f"{k} was modified"

    def call(a, backward, align_corners):
        args = [a[k] for k in (ARGS if backward else ARGS[:5])]
        fn = msdacore.ms_deform_attn_backward if backward else msdacore.ms_deform_attn
        return fn(*args, align_corners=align_corners)

    def check_call(a, backward, align_corners, compare=True):
        """Runs the call and applies the oracle; returns the result (or None)."""
        valid = classify(a, backward)
        note(f"valid={valid} backward={backward} align_corners={align_corners}")
        saved = snapshot(a)
        try:
            result = call(a, backward, align_corners)
        except OK_ERRORS as e:
            note(f"raised {type(e).__name__}: {e}")
            assert not valid, f"valid inputs raised {type(e).__name__}: {e}"
            assert str(e), "empty error message"
            check_unchanged(saved)
            return None
        except MemoryError:
            # Only for valid problems whose outputs cannot be allocated.
            assert valid, "invalid inputs raised MemoryError instead of ValueError/TypeError"
            return None
        assert valid, "invalid inputs were accepted"
        check_unchanged(saved)
        if compare:
            compare_with_reference(a, backward, align_corners, result)
        return result

    def compare_with_reference(a, backward, align_corners, result):
        if dtype_name(a["value"]) in HALF_DTYPES:
            return  # half types: compared with the reference in test_core_half_types.py
        used = ARGS if backward else ARGS[:5]
        npa = {k: np.asarray(to_numpy(a[k])) for k in used}
        dtype = npa["value"].dtype
        N, S, M, D = npa["value"].shape
        levels = [tuple(int(x) for x in r) for r in npa["spatial_shapes"]]
        results = result if backward else (result,)
        for r in results:
            assert np.asarray(to_numpy(r)).dtype == dtype
        inputs = dict(npa)
        inputs.setdefault("grad_output", np.ones(1))  # term_scales reads it
        floors = comparison_floors(inputs, dtype)
        finite = all(np.isfinite(npa[k]).all() for k in ("value", "attention_weights",
                                                         "grad_output") if k in npa)
        infinite = any(np.isinf(npa[k]).any() for k in ("value", "attention_weights",
                                                         "grad_output") if k in npa)
        if not finite:
            # NaN / Inf in value, weights or grad_output: SPEC fixes the result only up to
            # the order of the sums; check shapes and dtypes (done), and in float64 the
            # NaN/Inf pattern and the finite entries.
            if dtype != np.float64:
                return
        if not backward:
            expected = ref.ms_deform_attn(*[npa[k] for k in ARGS[:5]],
                                          align_corners=align_corners)
            got = np.asarray(to_numpy(result))
            assert got.shape == expected.shape
            compare_arrays(got, expected, dtype, "output", floors["output"], None, finite, infinite)
            return
        expected = ref.ms_deform_attn_backward(*[npa[k] for k in ARGS],
                                               align_corners=align_corners)
        names = ("grad_value", "grad_sampling_locations", "grad_attention_weights")
        for name, g, e in zip(names, results, expected):
            g = np.asarray(to_numpy(g))
            assert g.shape == e.shape, name
            mask = None
            if name == "grad_sampling_locations" and dtype == np.float32:
                # float32 coordinates within rounding of an integer may pick the other
                # cell: compare the points away from integers (as test_backward does).
                mask = away_from_integers(npa["sampling_locations"], levels, align_corners)
            compare_arrays(g, e, dtype, name, floors[name], mask, finite, infinite)

    def compare_arrays(got, expected, dtype, name, floor, mask, finite, infinite=False):
        if finite:
            assert_close(got, expected, dtype, name, mask=mask, floor=floor)
            return
        g = got if mask is None else got[mask]
        e = expected if mask is None else expected[mask]
        both = np.isfinite(g) & np.isfinite(e)
        if infinite:
            # With an Inf among the inputs, NaN or +-Inf depends on the order of the sums
            # (the kernel's g.v01 - g.v00 is Inf - Inf = NaN where the reference's
            # g * (v01 - v00) is Inf): the entries that are not finite are fixed, and the
            # sign of those both give as infinite.
            assert np.array_equal(np.isfinite(g), np.isfinite(e)), f"{name}: finite pattern differs"
            infs = np.isinf(g) & np.isinf(e)
            assert np.array_equal(g[infs], e[infs]), f"{name}: Inf signs differ"
        else:
            assert np.array_equal(np.isnan(g), np.isnan(e)), f"{name}: NaN pattern differs"
            assert np.array_equal(np.isinf(g), np.isinf(e)), f"{name}: Inf pattern differs"
            assert np.array_equal(g[np.isinf(g)], e[np.isinf(e)]), f"{name}: Inf signs differ"
        if both.any():
            scale = max(float(np.max(np.abs(e[both]))), 1.0)
            assert float(np.max(np.abs(g[both] - e[both]))) <= 1e-9 * scale, name

    # ---- mutations -------------------------------------------------------------------
    non_arrays = st.sampled_from([None, 3, 2.5, "value", b"\x00\x01", object(), {"a": 1},
                                  [1.0, 2.0], [[0.5, 0.5]], (), [], 1j, np.float64(1.0),
                                  np.int64(3), memoryview(b"abcd"), range(3)])
    other_dtypes = st.sampled_from(["float16", "float32", "float64", "int8", "int16", "int32",
                                    "int64", "uint8", "uint16", "uint32", "uint64", "bool",
                                    "complex64", "complex128", ">f4", ">f8", ">i8", "U3",
                                    "object", "datetime64[s]"])

    def mutate_array(data, x, name):
        kind = data.draw(st.sampled_from([
            "dtype", "rank_add", "rank_drop", "resize", "flip", "broadcast", "as_strided",
            "fortran", "readonly", "byteswap", "misaligned", "empty", "zero_d"]),
            label=f"{name} mutation")
        if kind == "dtype":
            dt = data.draw(other_dtypes, label="dtype")
            with np.errstate(all="ignore"):
                return x.astype(dt) if dt != "datetime64[s]" else np.zeros(x.shape, dt)
        if kind == "rank_add":
            return x[..., None] if data.draw(st.booleans()) else x[None]
        if kind == "rank_drop":
            if not x.ndim:
                return x
            return x[..., 0] if x.shape[-1] else x.reshape(x.shape[:-1] + (0,))[..., 0]
        if kind == "resize" and x.ndim:
            axis = data.draw(st.integers(0, x.ndim - 1), label="axis")
            n = data.draw(st.integers(0, 3), label="new size")
            if x.shape[axis]:
                reps = np.take(x, np.arange(n) % max(x.shape[axis], 1), axis=axis)
            else:
                reps = np.zeros(x.shape[:axis] + (n,) + x.shape[axis + 1:], x.dtype)
            return reps
        if kind == "flip" and x.ndim:
            return np.flip(x, axis=data.draw(st.integers(0, x.ndim - 1), label="axis"))
        if kind == "broadcast" and x.ndim and x.size:
            axis = data.draw(st.integers(0, x.ndim - 1), label="axis")
            first = np.take(x, [0], axis=axis)
            return np.broadcast_to(first, x.shape)
        if kind == "as_strided" and x.size:
            # Overlapping views: every stride a multiple of the item size, possibly zero.
            strides = tuple(data.draw(st.sampled_from([0, x.itemsize])) for _ in x.shape)
            return np.lib.stride_tricks.as_strided(x, x.shape, strides, writeable=False)
        if kind == "fortran":
            return np.asfortranarray(x)
        if kind == "readonly":
            y = x.copy()
            y.flags.writeable = False
            return y
        if kind == "byteswap":
            return x.astype(x.dtype.newbyteorder(">")) if x.dtype.kind in "iuf" else x
        if kind == "misaligned" and x.dtype.kind in "iuf":
            buf = np.zeros(x.nbytes + 1, np.uint8)
            y = np.ndarray(x.shape, x.dtype, buffer=buf, offset=1)
            y[...] = x
            return y
        if kind == "empty" and x.ndim:
            return x[:0]
        if kind == "zero_d":
            return np.asarray(x.ravel()[0] if x.size else 0, x.dtype)
        return x

    def mutate_index(data, a, name):
        kind = data.draw(st.sampled_from(["negative", "zero", "huge", "off_by_one", "list",
                                          "list_huge", "int32_wrap", "float_list"]),
                         label=f"{name} index mutation")
        x = np.array(a[name], dtype=np.int64, copy=True)
        if x.size == 0:
            return x
        pos = data.draw(st.integers(0, x.size - 1), label="position")
        flat = x.reshape(-1)
        if kind == "negative":
            flat[pos] = -data.draw(st.sampled_from([1, 2, 2**31, 2**40, 2**63 - 1]))
        elif kind == "zero":
            flat[pos] = 0
        elif kind == "huge":
            flat[pos] = data.draw(st.sampled_from(HUGE_SIZES), label="huge")
        elif kind == "off_by_one":
            flat[pos] += data.draw(st.sampled_from([-1, 1]))
        elif kind == "list":
            return x.tolist()
        elif kind == "list_huge":
            lst = x.tolist()
            big = data.draw(st.sampled_from([2**63, 2**64 - 1, 2**70, -(2**63) - 1]))
            if isinstance(lst[0], list):
                lst[0][0] = big
            else:
                lst[0] = big
            return lst
        elif kind == "int32_wrap":
            flat[pos] = data.draw(st.sampled_from([2**32 + 1, 2**31 + 7, 2**33]))
            return x.astype(np.int32)  # wraps, as a careless caller would
        elif kind == "float_list":
            return x.astype(np.float64).tolist()
        return x

    def base_inputs(data):
        case = data.draw(small_cases, label="case")
        inputs = make_inputs(case)
        if data.draw(st.booleans(), label="int32 index arrays"):
            inputs["spatial_shapes"] = inputs["spatial_shapes"].astype(np.int32)
            inputs["level_start_index"] = inputs["level_start_index"].astype(np.int32)
        return case, inputs

    # ---- targets ---------------------------------------------------------------------
    @given(data=st.data())
    def fuzz_numpy(data):
        case, a = base_inputs(data)
        backward = data.draw(st.booleans(), label="backward")
        for _ in range(data.draw(st.integers(0, 3), label="mutations")):
            name = data.draw(st.sampled_from(ARGS), label="argument")
            what = data.draw(st.sampled_from(["array", "array", "index", "object"]),
                             label="what")
            if what == "object":
                a[name] = data.draw(non_arrays, label="object")
            elif what == "index" and name in ("spatial_shapes", "level_start_index") \
                    and isinstance(a[name], np.ndarray):
                a[name] = mutate_index(data, a, name)
            elif isinstance(a[name], np.ndarray):
                a[name] = mutate_array(data, a[name], name)
        check_call(a, backward, case.align_corners)

    specials = st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 3e38, -3e38, 1e300,
                                -1e300, 2.0**31, -(2.0**31), 5e-324])

    @given(data=st.data())
    def fuzz_values(data):
        case, a = base_inputs(data)
        assume(case.N > 0 and case.Lq > 0)
        backward = data.draw(st.booleans(), label="backward")
        for _ in range(data.draw(st.integers(1, 4), label="mutations")):
            name = data.draw(st.sampled_from(FLOAT_ARGS), label="argument")
            x = a[name].astype(np.float64)
            count = data.draw(st.integers(1, 4), label="count")
            rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
            idx = rng.integers(0, x.size, count)
            if data.draw(st.booleans(), label="all"):
                idx = np.arange(x.size)
            x.reshape(-1)[idx] = data.draw(specials, label="special")
            with np.errstate(over="ignore"):
                a[name] = x.astype(case.dtype)
        # Magnitudes whose products overflow: check only that nothing crashes and the
        # shapes are right (no reference comparison for those).
        big = any(np.nanmax(np.abs(np.where(np.isinf(a[k]), 0, a[k])), initial=0) > 1e31
                  for k in ("value", "attention_weights", "grad_output"))
        check_call(a, backward, case.align_corners, compare=not big)

    @given(data=st.data())
    def fuzz_torch(data):
        case, a = base_inputs(data)
        backward = data.draw(st.booleans(), label="backward")
        t = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in a.items()}
        for _ in range(data.draw(st.integers(0, 3), label="mutations")):
            name = data.draw(st.sampled_from(ARGS), label="argument")
            x = t[name]
            kind = data.draw(st.sampled_from(["dtype", "meta", "sparse", "conj", "neg",
                                              "requires_grad", "expand", "transpose",
                                              "object", "numpy", "unsqueeze"]),
                             label="torch mutation")
            try:
                if kind == "dtype":
                    dt = data.draw(st.sampled_from([torch.float16, torch.bfloat16, torch.float32,
                                                    torch.float64, torch.int32, torch.int64,
                                                    torch.int8, torch.uint8, torch.bool,
                                                    torch.complex64]), label="dtype")
                    t[name] = x.to(dt)
                elif kind == "meta":
                    t[name] = torch.empty(x.shape, dtype=x.dtype, device="meta")
                elif kind == "sparse" and x.ndim:
                    t[name] = x.to_sparse()
                elif kind == "conj":
                    t[name] = x.to(torch.complex64).conj()
                elif kind == "neg" and x.dtype.is_floating_point:
                    t[name] = torch.complex(x, x).conj().imag  # -x, a view with torch's neg bit
                elif kind == "requires_grad" and x.dtype.is_floating_point:
                    t[name] = x.clone().requires_grad_(True)
                elif kind == "expand" and x.ndim and x.numel():
                    axis = data.draw(st.integers(0, x.ndim - 1), label="axis")
                    t[name] = x.narrow(axis, 0, 1).expand(x.shape)
                elif kind == "transpose" and x.ndim >= 2:
                    t[name] = x.transpose(0, -1).contiguous().transpose(0, -1)
                elif kind == "object":
                    t[name] = data.draw(non_arrays, label="object")
                elif kind == "numpy":
                    t[name] = x.numpy()
                elif kind == "unsqueeze":
                    t[name] = x.unsqueeze(0)
            except (RuntimeError, NotImplementedError, TypeError, ValueError, AttributeError):
                pass  # no such variant of x (a sparse meta tensor, x not a tensor, ...)
        result = check_call(t, backward, case.align_corners)
        if result is not None:
            first = result[0] if backward else result
            if isinstance(t["value"], torch.Tensor):
                assert isinstance(first, torch.Tensor), type(first)

    @given(data=st.data())
    def fuzz_sizes(data):
        # One level of H x W with H*W = S large, value broadcast (zero stride) over S.
        H = data.draw(st.sampled_from([1, 3, 2**16, 2**31 - 1, 2**31, 2**33]), label="H")
        W = data.draw(st.sampled_from([1, 5, 2**16, 2**31 + 1, 2**34]), label="W")
        M = data.draw(st.integers(1, 2), label="M")
        D = data.draw(st.integers(1, 3), label="D")
        dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
        S = H * W
        itemsize = np.dtype(dtype).itemsize
        assume(S * M * D * itemsize < 2**62)  # NumPy's limit on one array's bytes
        c = data.draw(st.sampled_from([1.0, -2.5]), label="constant")
        value = np.broadcast_to(np.asarray(c, dtype), (1, S, M, D))
        Lq, P = 4, 2
        rng = np.random.default_rng(data.draw(st.integers(0, 1000), label="seed"))
        loc = rng.uniform(-0.2, 1.2, (1, Lq, M, 1, P, 2)).astype(dtype)
        loc[0, 0, 0, 0, 0] = (1.0, 1.0)  # the last pixel, far past 2^31 tokens
        attn = rng.uniform(0.1, 1.0, (1, Lq, M, 1, P)).astype(dtype)
        shapes = np.array([[H, W]], np.int64)
        starts = data.draw(st.sampled_from([[0], [1], [-1], [S]]), label="starts")
        align = data.draw(st.booleans(), label="align_corners")
        a = dict(value=value, spatial_shapes=shapes, level_start_index=np.array(starts),
                 sampling_locations=loc, attention_weights=attn,
                 grad_output=np.ones((1, Lq, M * D), dtype))
        note(f"H={H} W={W} S={S} M={M} D={D} starts={starts}")
        if starts != [0]:
            with pytest.raises(ValueError, match="prefix sums"):
                msdacore.ms_deform_attn(*[a[k] for k in ARGS[:5]], align_corners=align)
            return
        out = msdacore.ms_deform_attn(*[a[k] for k in ARGS[:5]], align_corners=align)
        assert out.shape == (1, Lq, M * D) and out.dtype == dtype
        # value is the constant c everywhere, so each output is c times the sum over
        # the points of A times the summed weights of its in-bounds corners: bounded by
        # |c| * sum|A|, and finite.
        bound = abs(c) * np.abs(attn.astype(np.float64)).sum(axis=(3, 4))  # (1, Lq, M)
        got = np.abs(out.astype(np.float64)).reshape(1, Lq, M, D)
        assert np.all(np.isfinite(got))
        assert np.all(got <= bound[..., None] * (1 + 1e-5) + 1e-6)
        if S * M * D * itemsize <= 2**26 and dtype == np.float64:
            # Small enough for the reference (float64: float32 coordinates on a level
            # this wide carry about W*eps pixels of error). Larger problems skip the
            # backward: grad_value (1, S, M, D) would be gigabytes (see test_core_large.py).
            check_call(a, True, align)

    # Sizes whose products overflow int64 even though the arrays are empty (N = 0).
    def overflowing_products():
        if torch is None:
            return
        for M, D in ((2**40, 2**40), (2**62, 4), (2**32, 2**32)):
            v = torch.zeros(0, 1, 1, 1).expand(0, 1, M, D)
            loc = torch.zeros(0, 1, 1, 1, 1, 2).expand(0, 1, M, 1, 1, 2)
            attn = torch.zeros(0, 1, 1, 1, 1).expand(0, 1, M, 1, 1)
            with pytest.raises(ValueError):
                msdacore.ms_deform_attn(v, [[1, 1]], [0], loc, attn)

    targets = {"numpy": (fuzz_numpy, None), "values": (fuzz_values, None),
               "sizes": (fuzz_sizes, overflowing_products)}
    if torch is not None:
        targets["torch"] = (fuzz_torch, None)
    return targets


if __name__ == "__main__":  # pragma: no cover - the child process
    _child_main(sys.argv[1])
