"""The flattened layout, discrete mode and mixed precision on CUDA against the CPU backend
(marker ``cuda``: skipped with the reason where no GPU is visible; see conftest.py).
Both backends compute in float32 for half types, so they agree to the half type's
rounding; float32/float64 agree to their tolerances of docs/conventions.md."""

from __future__ import annotations

import pytest

import msdacore

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.cuda

TOL = {"float64": 1e-12, "float32": 5e-5, "float16": 1e-2, "bfloat16": 5e-2}


def _levels(count):
    shapes = [[max(1, 9 - l), max(1, 7 - (l % 5))] for l in range(count)]
    starts, total = [], 0
    for h, w in shapes:
        starts.append(total)
        total += h * w
    return shapes, starts, total


def _problem(seed, points, dtype, companion, layout_levels=3):
    g = torch.Generator().manual_seed(seed)
    shapes, starts, S = _levels(len(points))
    N, Lq, M, D = 2, 13, 3, 16
    value = torch.randn(N, S, M, D, generator=g, dtype=torch.float64)
    loc = torch.rand(N, Lq, M, sum(points), 2, generator=g, dtype=torch.float64) * 1.2 - 0.1
    attn = torch.rand(N, Lq, M, sum(points), generator=g, dtype=torch.float64)
    grad = torch.randn(N, Lq, M * D, generator=g, dtype=torch.float64)
    t = getattr(torch, dtype)
    c = getattr(torch, companion)
    return shapes, starts, value.to(t), loc.to(c), attn.to(c), grad.to(t)


def _rel(a, b):
    a, b = a.double().cpu(), b.double().cpu()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def _both(shapes, starts, value, loc, attn, grad, **kw):
    out = {}
    for device in ("cpu", "cuda"):
        args = [x.to(device) for x in (value, loc, attn, grad)]
        o = msdacore.ms_deform_attn(args[0], shapes, starts, args[1], args[2], **kw)
        gs = msdacore.ms_deform_attn_backward(args[0], shapes, starts, args[1], args[2],
                                              args[3], **kw)
        out[device] = (o,) + tuple(gs)
    return out


@pytest.mark.parametrize("mode", ["bilinear", "discrete"])
@pytest.mark.parametrize("points", [[3, 6, 3], [1], [1, 1, 2, 1, 1, 3, 1, 1, 2, 1]])
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_flattened_layout_and_modes_match_the_cpu(dtype, points, mode, deterministic):
    shapes, starts, value, loc, attn, grad = _problem(1, points, dtype, dtype)
    got = _both(shapes, starts, value, loc, attn, grad, points_per_level=points, mode=mode,
                deterministic=deterministic)
    for name, c, g in zip(("output", "grad_value", "grad_loc", "grad_attn"), got["cpu"],
                          got["cuda"]):
        assert g.device.type == "cuda" and g.dtype == c.dtype, name
        if name == "grad_loc" and mode == "discrete":
            assert not g.any(), name
            continue
        # Location gradients jump at cell borders; both backends pick the same cell for
        # the same rounding, so the tolerance holds.
        assert _rel(g, c) <= TOL[dtype], name


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_mixed_precision_matches_the_cpu(dtype):
    points = [3, 6, 3]
    shapes, starts, value, loc, attn, grad = _problem(2, points, dtype, "float32")
    got = _both(shapes, starts, value, loc, attn, grad, points_per_level=points)
    for name, c, g in zip(("output", "grad_value", "grad_loc", "grad_attn"), got["cpu"],
                          got["cuda"]):
        assert g.dtype == c.dtype, name
        assert _rel(g, c) <= TOL[dtype], name


def test_uniform_and_flattened_layouts_give_the_same_bits_on_cuda():
    shapes, starts, value, loc, attn, grad = _problem(3, [4, 4, 4], "float32", "float32")
    value, loc, attn, grad = (x.cuda() for x in (value, loc, attn, grad))
    N, Lq, M = loc.shape[:3]
    uniform = (loc.reshape(N, Lq, M, 3, 4, 2), attn.reshape(N, Lq, M, 3, 4))
    a = msdacore.ms_deform_attn(value, shapes, starts, *uniform)
    b = msdacore.ms_deform_attn(value, shapes, starts, loc, attn, points_per_level=[4, 4, 4])
    assert torch.equal(a, b)
    ga = msdacore.ms_deform_attn_backward(value, shapes, starts, *uniform, grad,
                                          deterministic=True)
    gb = msdacore.ms_deform_attn_backward(value, shapes, starts, loc, attn, grad,
                                          deterministic=True, points_per_level=[4, 4, 4])
    for x, y in zip(ga, gb):
        assert torch.equal(x.reshape(-1), y.reshape(-1))
