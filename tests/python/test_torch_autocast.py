"""Autocast in msdacore.torch.ms_deform_attn: value follows the autocast dtype while the
sampling locations and attention weights stay float32 (SPEC "Numerics": mixed
precision, which every backend of the core takes)."""

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


@pytest.mark.parametrize("half", HALVES)
def test_autocast_casts_only_value(half):
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
def test_cpu_autocast_mixed_precision(half):
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
