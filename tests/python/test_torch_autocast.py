"""Autocast in msdacore.torch.ms_deform_attn: value follows the autocast dtype while the
sampling locations and attention weights stay float32 (SPEC "Numerics": mixed
precision); where the core does not take that mix yet, everything is computed in
float32."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

import msdacore.torch as mt  # noqa: E402
from msdacore.torch import api  # noqa: E402

LEVELS = [(167, 5), (3, 4)]  # a 167-pixel level: bfloat16 locations would be off by ~0.3 px
HALVES = [torch.bfloat16, torch.float16]


def problem(dtype=torch.float32, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in LEVELS)
    value = torch.randn(2, S, 2, 3, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 7, 2, len(LEVELS), 2, 2, generator=g, dtype=torch.float64)
    weights = torch.rand(2, 7, 2, len(LEVELS), 2, generator=g, dtype=torch.float64)
    return [t.to(dtype).requires_grad_(requires_grad) for t in (value, loc, weights)]


def supported(half) -> bool:
    return api._mixed_precision_supported(torch.device("cpu"), half)


@pytest.fixture
def mixed(monkeypatch):
    """Sets what the trial call would find, for (cpu, half)."""
    def set_(half, value: bool):
        monkeypatch.setitem(api._MIXED_PRECISION, ("cpu", half), value)
    return set_


@pytest.mark.parametrize("half", HALVES)
def test_autocast_casts_only_value_where_mixed_precision_is_supported(half, mixed):
    mixed(half, True)
    value, loc, weights = problem()
    with torch.autocast("cpu", dtype=half):
        v, l, w = api._apply_autocast(value, loc, weights)
        assert (v.dtype, l.dtype, w.dtype) == (half, torch.float32, torch.float32)
        # half locations and weights are computed in float32
        v, l, w = api._apply_autocast(value.to(half), loc.to(half), weights.to(half))
        assert (v.dtype, l.dtype, w.dtype) == (half, torch.float32, torch.float32)
        # float64 is never cast
        v, l, w = api._apply_autocast(value.double(), loc.double(), weights.double())
        assert {v.dtype, l.dtype, w.dtype} == {torch.float64}
    v, l, w = api._apply_autocast(value, loc, weights)  # no autocast: nothing changes
    assert v is value and l is loc and w is weights


@pytest.mark.parametrize("half", HALVES)
def test_autocast_falls_back_to_float32_without_mixed_precision(half, mixed):
    mixed(half, False)
    value, loc, weights = problem(half)
    with torch.autocast("cpu", dtype=half):
        v, l, w = api._apply_autocast(value, loc, weights)
    assert {v.dtype, l.dtype, w.dtype} == {torch.float32}


def test_probe_is_cached_and_skipped_while_compiling(monkeypatch):
    monkeypatch.setattr(api, "_MIXED_PRECISION", {})
    calls = []
    monkeypatch.setattr(api, "_probe_mixed_precision",
                        lambda device, dtype: calls.append(dtype) or True)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not api._mixed_precision_supported(torch.device("cpu"), torch.bfloat16)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: False)
    assert api._mixed_precision_supported(torch.device("cpu"), torch.bfloat16)
    assert api._mixed_precision_supported(torch.device("cpu"), torch.bfloat16)
    assert calls == [torch.bfloat16]


@pytest.mark.parametrize("half", HALVES)
def test_cpu_autocast_mixed_precision(half):
    if not supported(half):
        pytest.skip(f"the core does not take {half} value with float32 locations on the CPU "
                    "yet (a trial call raised)")
    value, loc, weights = problem(requires_grad=True)
    with torch.autocast("cpu", dtype=half):
        out = mt.ms_deform_attn(value, LEVELS, None, loc, weights)
    assert out.dtype == half
    expected = mt.ms_deform_attn(value.detach().to(half), LEVELS, None, loc.detach(),
                                 weights.detach())
    assert torch.equal(out, expected)
    grads = torch.autograd.grad(out.float().sum(), (value, loc, weights))
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)

    # more accurate than half locations, against float64
    ref = mt.ms_deform_attn(value.detach().double(), LEVELS, None, loc.detach().double(),
                            weights.detach().double())
    all_half = mt.ms_deform_attn(*(t.detach().to(half) for t in (value,)), LEVELS, None,
                                 loc.detach().to(half), weights.detach().to(half))
    err = (out.double() - ref).abs().max() / ref.abs().max()
    assert err <= (1e-2 if half == torch.float16 else 5e-2)
    assert err <= (all_half.double() - ref).abs().max() / ref.abs().max()


@pytest.mark.parametrize("half", HALVES)
def test_cpu_autocast_without_mixed_precision_computes_float32(half):
    if supported(half):
        pytest.skip("the core takes mixed precision: test_cpu_autocast_mixed_precision")
    value, loc, weights = problem(half)
    with torch.autocast("cpu", dtype=half):
        out = mt.ms_deform_attn(value, LEVELS, None, loc, weights)
    assert out.dtype == torch.float32
    assert torch.equal(out, mt.ms_deform_attn(value.float(), LEVELS, None, loc.float(),
                                              weights.float()))


def test_patched_transformers_model_under_cpu_autocast():
    """A patched model's linear layers run in bfloat16 and its sampling through msdacore's
    autocast rule; the outputs stay close to float32."""
    pytest.importorskip("transformers")
    import copy
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    import transformers_families as F

    spec = F.BY_NAME["rt_detr_v2"]
    model = F.tiny_model(spec, torch.float32)
    patched = copy.deepcopy(model)
    mt.patch_transformers(patched)
    inputs = spec.inputs(torch.Generator().manual_seed(2), torch.float32)
    with torch.no_grad():
        ref = model(**inputs).pred_boxes
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = patched(**inputs).pred_boxes
    assert torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() < 0.1
