"""Real clients: small randomly initialised transformers models of every family that
samples with deformable attention (no downloads; tests/python/transformers_families.py)
give the same outputs and parameter gradients with and without
msdacore.torch.patch_transformers, and every patched call gives what transformers' own
code gives on the same arguments. Also: what is reported and warned, unpatching, and
patched models through torch.save/torch.load, deepcopy, state dicts and .to(dtype)."""

from __future__ import annotations

import copy
import functools
import os
import pathlib
import subprocess
import sys
import textwrap
import warnings

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import msdacore.torch as mt  # noqa: E402
from msdacore.torch import transformers_functions  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
import transformers_families as F  # noqa: E402

transformers.logging.set_verbosity_error()

# max|a - b| / max|ref| per tensor (SPEC "Numerics"), per call and per model; half-type
# calls are measured against transformers' code in float64
CALL_TOL = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 1e-2,
            torch.bfloat16: 5e-2}
MODEL_TOL = {torch.float64: 1e-9, torch.float32: 1e-3}
HALVES = (torch.float16, torch.bfloat16)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and OpenMP workers spin-waiting between
    the many small ops make these tests several times slower on a busy 2-core machine;
    msdacore's results do not depend on its thread count (SPEC)."""
    import msdacore

    before = msdacore.get_num_threads(), torch.get_num_threads()
    msdacore.set_num_threads(1)
    torch.set_num_threads(1)
    yield
    msdacore.set_num_threads(before[0])
    torch.set_num_threads(before[1])


def rel_err(a, b, floor=1e-30) -> float:
    """max|a - b| / max|b|, the scale no less than `floor`."""
    scale = b.abs().max().item()
    return (a - b).abs().max().item() / max(scale, floor)


def finite(t):
    return torch.nan_to_num(t, nan=0.0, posinf=0.0, neginf=0.0)


# ---------------------------------------------------------------------------
# Per-call check: each call msdacore answers is also given, on copies of the same
# arguments, to transformers' own function; outputs and the gradients of every float
# argument must agree.


def _float_tensor(x):
    return isinstance(x, torch.Tensor) and x.is_floating_point()


def _call(fn, args, kwargs, seed, widen):
    """fn's output on copies of the arguments (float ones widened to float64 if `widen`)
    and the gradients of its float arguments (value, sampling_locations,
    attention_weights, in this order) for a random cotangent."""
    def copy_of(x):
        if not _float_tensor(x):
            return x
        return x.detach().to(torch.float64 if widen else x.dtype).requires_grad_(True)

    a = [copy_of(x) for x in args]
    k = {n: copy_of(x) for n, x in kwargs.items()}
    out = fn(*a, **k)
    leaves = [x for x in list(a) + list(k.values()) if _float_tensor(x)]
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad(out, leaves, g, allow_unused=True)
    return out, grads, leaves


def _compare(what, got, ref, tol, where=None):
    got = got.to(ref.dtype)
    if where is not None:
        got, ref = got[where], ref[where]
    err = rel_err(got, ref) if ref.numel() else 0.0
    assert err <= tol, f"{what}: {err:.3g}"


def check_call(ours, reference, args, kwargs, tol, seed):
    """Same arguments to msdacore's function and transformers' own: outputs and the
    gradients of value, sampling_locations and attention_weights agree.

    Half types: transformers' code runs on the arguments widened to float64. Two
    deliberate differences are then left out: where transformers' output is NaN because
    a location or weight is (a model overflowing in float16), msdacore skips the sample
    (SPEC: non-finite locations are skipped); and location gradients, which are one-sided
    where a coordinate falls on a pixel boundary (common with half-type coordinates,
    and grid_sample's float64 arithmetic lands on either side of it), are checked
    against msdacore's own float64 computation instead."""
    half = any(_float_tensor(x) and x.dtype in HALVES for x in list(args) + list(kwargs.values()))
    ref, ref_grads, leaves = _call(reference, args, kwargs, seed, widen=half)
    got, got_grads, _ = _call(ours, args, kwargs, seed, widen=False)
    assert got.shape == ref.shape and (half or got.dtype == ref.dtype)
    finite_ref = torch.isfinite(ref) if half else None
    _compare("output", got, ref, tol, finite_ref)
    if half:
        _, own_grads, _ = _call(ours, args, kwargs, seed, widen=True)
        ref_grads = (ref_grads[0], own_grads[1]) + tuple(ref_grads[2:])
    for i, (a, b, leaf) in enumerate(zip(got_grads, ref_grads, leaves)):
        if b is None:  # no gradient path in transformers' code (discrete locations)
            assert a is None or not a.any(), f"gradient {i}: transformers has none"
            continue
        assert a is not None, f"gradient {i}: msdacore has none"
        where = torch.isfinite(b) if half else None
        _compare(f"gradient {i} {tuple(leaf.shape)}", a, b, tol, where)


@pytest.fixture
def checked_calls(monkeypatch):
    """Routes msdacore's transformers functions through check_call; returns
    (install(spec, dtype), calls: the list of checked calls)."""
    calls = []

    def install(spec, dtype):
        ours = getattr(transformers_functions, spec.kind)
        reference = spec.reference()

        @functools.wraps(ours)
        def checking(*args, **kwargs):
            out = ours(*args, **kwargs)
            check_call(ours, reference, args, kwargs, CALL_TOL[dtype], seed=len(calls))
            if spec.kind == F.V2:
                method = kwargs.get("method", args[5] if len(args) > 5 else "default")
                calls.append(method)
            else:
                calls.append(spec.kind)
            return out

        monkeypatch.setattr(transformers_functions, spec.kind, checking)

    return install, calls


# ---------------------------------------------------------------------------
# The family matrix


def run(model, spec, dtype, seed=2):
    """Outputs and the gradient of every parameter of a loss over the outputs."""
    inputs = spec.inputs(torch.Generator().manual_seed(seed), dtype)
    out = model(**inputs)
    tensors = [finite(getattr(out, name)) for name in spec.outputs]
    loss = sum((t * torch.linspace(-1, 1, t.shape[-1], dtype=t.dtype)).sum() for t in tensors)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    params = [p for n, p in model.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    return tensors, dict(zip(names, grads))


def patch_quietly(model):
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # any "not switched" warning fails
        return mt.patch_transformers(model)


def _grad_floor(grads):
    """Gradients that are zero up to rounding (a bias before a normalisation) are
    measured against a thousandth of the largest gradient."""
    return 1e-3 * max(g.abs().max().item() for g in grads.values() if g is not None)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("spec", F.FAMILIES, ids=[f.name for f in F.FAMILIES])
def test_family_matches_stock(spec, dtype, checked_calls):
    """float64: patched and stock models agree to 1e-9. float32: these tiny random models
    are ill-conditioned (stock float32 is up to several % off float64 on some gradients),
    so each float32 result is measured against the float64 stock model and must be as
    accurate as stock float32's (at most twice its error, plus 1e-4). Every call is also
    checked against transformers' own function (checked_calls)."""
    install, calls = checked_calls
    stock = F.tiny_model(spec, dtype)
    patched = copy.deepcopy(stock)
    report = patch_quietly(patched)
    assert report == {spec.family: spec.report}
    assert report.total == sum(spec.report.values())
    install(spec, dtype)

    expected, expected_grads = run(stock, spec, dtype)
    assert not calls  # the stock model never reaches msdacore
    got, got_grads = run(patched, spec, dtype)
    assert len(calls) == report.total  # one msdacore call per patched module
    if spec.kind == F.V2:
        assert set(calls) == {spec.method}
    assert got_grads.keys() == expected_grads.keys()

    if dtype == torch.float64:
        def check(name, a, b, floor=1e-30):
            err = rel_err(a, b, floor)
            assert err <= 1e-9, f"{name}: {err:.3g}"
    else:
        truth, truth_grads = run(F.tiny_model(spec, torch.float64), spec, torch.float64)
        truth = dict(zip(spec.outputs, truth))

        def check(name, a, b, floor=1e-30):
            ref = truth[name] if name in truth else truth_grads[name[5:]]
            ours, theirs = rel_err(a.double(), ref, floor), rel_err(b.double(), ref, floor)
            assert ours <= 2 * theirs + 1e-4, f"{name}: {ours:.3g} (stock {theirs:.3g})"

    for name, a, b in zip(spec.outputs, got, expected):
        check(name, a, b)
    floor = _grad_floor(expected_grads)
    checked = 0
    for name, b in expected_grads.items():
        a = got_grads[name]
        if b is None:
            assert a is None or not a.any(), name
            continue
        assert a is not None, name
        if dtype == torch.float32:
            floor = _grad_floor(truth_grads)
        check("grad " + name, a, b, floor)
        if "sampling_offsets" in name and spec.method == "default":
            checked += 1
    if spec.method == "default":
        assert checked > 0  # location gradients reach the offsets


@pytest.mark.parametrize("dtype", HALVES, ids=["float16", "bfloat16"])
@pytest.mark.parametrize("spec", F.FAMILIES, ids=[f.name for f in F.FAMILIES])
def test_family_half_precision(spec, dtype, checked_calls):
    """A patched model cast to float16/bfloat16 runs on the CPU, each call within the
    SPEC's half-type tolerance of transformers' code in float64."""
    install, calls = checked_calls
    model = F.tiny_model(spec, torch.float32)
    patch_quietly(model)
    model = model.to(dtype)
    install(spec, dtype)
    try:
        out, grads = run(model, spec, dtype)
    except (RuntimeError, NotImplementedError) as error:
        if "msdacore" in str(error) or not calls:
            raise
        pytest.skip(f"transformers' {spec.family} does not run in {dtype} on the CPU: {error}")
    assert len(calls) == sum(spec.report.values())


def test_every_sampling_family_is_covered():
    """Every transformers model file that samples deformable attention (grid_sample
    around sampling locations) is in the matrix above: a new family fails here."""
    root = pathlib.Path(transformers.__file__).parent / "models"
    sampling = set()
    for path in root.glob("*/modeling_*.py"):
        text = path.read_text()
        if "sampling_locations" in text and "grid_sample" in text:
            sampling.add(path.parent.name)
    assert sampling == {f.family for f in F.FAMILIES}


# ---------------------------------------------------------------------------
# Reports, warnings, unpatching


def test_patch_is_idempotent_and_reversible():
    spec = F.BY_NAME["deformable_detr"]
    model = F.tiny_model(spec)
    inputs = spec.inputs(torch.Generator().manual_seed(2), torch.float64)
    with torch.no_grad():
        before = model(**inputs).last_hidden_state
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = patch_quietly(model)
    assert report == {"deformable_detr": {"MultiScaleDeformableAttention.forward": 4}}
    assert int(report) == 4
    assert patch_quietly(model) == report
    assert model.state_dict().keys() == state.keys()
    attn = model.encoder.layers[0].self_attn.attn
    assert isinstance(attn, transformers.models.deformable_detr.modeling_deformable_detr
                      .MultiScaleDeformableAttention)
    assert "msdacore" in repr(attn)
    with torch.no_grad():
        patched = model(**inputs).last_hidden_state
    torch.testing.assert_close(patched, before, rtol=1e-10, atol=1e-12)
    assert mt.unpatch_transformers(model) == report
    assert mt.unpatch_transformers(model) == {}
    assert "msdacore" not in repr(model)
    with torch.no_grad():
        after = model(**inputs).last_hidden_state
    assert torch.equal(after, before)


@pytest.mark.parametrize("name", ["rt_detr_v2", "d_fine", "mask2former"])
def test_unpatch_restores_function_calls(name):
    spec = F.BY_NAME[name]
    model = F.tiny_model(spec)
    classes = {m: type(m) for m in model.modules()}
    cores = {m: m.__dict__.get("ms_deformable_attn_core") for m in model.modules()}
    report = patch_quietly(model)
    assert mt.unpatch_transformers(model) == report
    assert all(type(m) is classes[m] for m in model.modules())
    assert all(m.__dict__.get("ms_deformable_attn_core") is cores[m] for m in model.modules())


def test_patch_finds_nothing_in_other_models():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mt.patch_transformers(torch.nn.Sequential(torch.nn.Linear(2, 2))) == {}
        # msdacore's own modules compute with msdacore already
        assert mt.patch_transformers(
            mt.MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)) == {}


def test_unknown_deformable_attention_warns_by_name():
    spec = F.BY_NAME["deformable_detr"]
    model = F.tiny_model(spec)
    layers = model.encoder.layers
    # another kernel replaced one module's forward on the instance
    layers[0].self_attn.attn.forward = lambda *args: None
    with pytest.warns(RuntimeWarning, match=r"encoder\.layers\.0\.self_attn\.attn .*"
                                            r"forward was replaced on the instance"):
        report = mt.patch_transformers(model)
    assert report.total == 3


def test_custom_subclass_and_core_warn_by_name():
    from transformers.models.d_fine import modeling_d_fine

    class MyMultiscaleDeformableAttention(torch.nn.Module):  # a copy outside transformers
        def forward(self, x):
            return x

    model = F.tiny_model(F.BY_NAME["d_fine"])
    first, second = [m for m in model.modules()
                     if isinstance(m, modeling_d_fine.DFineMultiscaleDeformableAttention)]
    first.ms_deformable_attn_core = lambda *args: None
    model.extra = MyMultiscaleDeformableAttention()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = mt.patch_transformers(model)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert report.total == 1
    assert any("ms_deformable_attn_core" in m and "not transformers'" in m for m in messages)
    assert any("extra (" in m and "MyMultiscaleDeformableAttention" in m for m in messages)
    assert len(messages) == 2


def test_v2_refuses_unknown_method():
    value = torch.zeros(1, 1, 1, 1)
    with pytest.raises(ValueError, match="method"):
        transformers_functions.multi_scale_deformable_attention_v2(
            value, [(1, 1)], torch.zeros(1, 1, 1, 1, 2), torch.ones(1, 1, 1, 1), [1], "nearest")


# ---------------------------------------------------------------------------
# Patched models are ordinary modules: save/load, deepcopy, state dicts, dtypes

PERSISTENCE = ["deformable_detr", "rt_detr_v2_discrete", "d_fine", "mask2former"]


def _outputs(model, spec, dtype=torch.float64):
    with torch.no_grad():
        out = model(**spec.inputs(torch.Generator().manual_seed(2), dtype))
    return [finite(getattr(out, name)) for name in spec.outputs]


def _assert_all_close(a, b, tol=1e-10):
    for x, y in zip(a, b):
        assert rel_err(x, y) <= tol


@pytest.mark.parametrize("name", PERSISTENCE)
def test_patched_model_survives_save_load_deepcopy_state_dict_and_dtype(name, tmp_path):
    spec = F.BY_NAME[name]
    stock = F.tiny_model(spec)
    model = copy.deepcopy(stock)
    report = patch_quietly(model)
    expected = _outputs(model, spec)

    path = tmp_path / "model.pt"
    torch.save(model, path)
    loaded = torch.load(path, weights_only=False)
    assert patch_quietly(loaded) == report  # still patched: nothing new to do
    _assert_all_close(_outputs(loaded, spec), expected, 0)

    clone = copy.deepcopy(model)
    assert patch_quietly(clone) == report
    _assert_all_close(_outputs(clone, spec), expected, 0)

    fresh = F.tiny_model(spec, seed=5)  # other weights, stock code
    fresh.load_state_dict(model.state_dict())
    _assert_all_close(_outputs(fresh, spec), expected)
    patched_fresh = F.tiny_model(spec, seed=5)
    patch_quietly(patched_fresh)
    patched_fresh.load_state_dict(stock.state_dict())
    _assert_all_close(_outputs(patched_fresh, spec), expected, 0)

    single = model.to(torch.float32)
    assert patch_quietly(single) == report
    _assert_all_close(_outputs(single, spec, torch.float32),
                      _outputs(stock.to(torch.float32), spec, torch.float32),
                      MODEL_TOL[torch.float32])


def test_saved_patched_models_load_in_a_new_process(tmp_path):
    """pickle finds msdacore's patched classes by name in a process that never patched."""
    saved = []
    for name in PERSISTENCE:
        spec = F.BY_NAME[name]
        model = F.tiny_model(spec)
        patch_quietly(model)
        torch.save({"model": model, "expected": _outputs(model, spec)}, tmp_path / f"{name}.pt")
        saved.append(name)
    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import transformers_families as F
        for name in {saved!r}:
            spec = F.BY_NAME[name]
            data = torch.load({str(tmp_path)!r} + f"/{{name}}.pt", weights_only=False)
            model = data["model"]
            assert any(type(m).__module__ == "msdacore.torch.transformers_patch"
                       or "ms_deformable_attn_core" in m.__dict__ for m in model.modules())
            with torch.no_grad():
                out = model(**spec.inputs(torch.Generator().manual_seed(2), torch.float64))
            for field, ref in zip(spec.outputs, data["expected"]):
                got = torch.nan_to_num(getattr(out, field), nan=0.0, posinf=0.0, neginf=0.0)
                assert torch.equal(got, ref), (name, field)
            import msdacore.torch as mt
            assert mt.unpatch_transformers(model).total > 0
        print("loaded", len({saved!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"loaded {len(saved)}" in done.stdout


def test_patched_float32_model_is_close_and_under_no_grad():
    spec = F.BY_NAME["deformable_detr_two_stage"]
    model = F.tiny_model(spec, torch.float32)
    patched = copy.deepcopy(model)
    patch_quietly(patched)
    _assert_all_close(_outputs(patched, spec, torch.float32),
                      _outputs(model, spec, torch.float32), MODEL_TOL[torch.float32])
