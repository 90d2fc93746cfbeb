"""msdacore.torch.ms_deform_attn: the torch operator against a grid_sample composition,
gradcheck, opcheck, torch.compile, autocast, errors, CUDA (when present)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import msdacore  # noqa: E402
import msdacore.torch as mt  # noqa: E402

LEVELS = ((5, 7), (3, 4), (1, 2), (2, 1))


def grid_sample_msda(value, levels, sampling_locations, attention_weights, align_corners=False):
    """Deformable attention from torch.nn.functional.grid_sample, one level at a time.

    value (N, S, M, D); levels [(H, W), ...]; sampling_locations (N, Lq, M, L, P, 2);
    attention_weights (N, Lq, M, L, P) -> (N, Lq, M*D). Differentiable by autograd.
    """
    N, S, M, D = value.shape
    Lq, P = sampling_locations.shape[1], sampling_locations.shape[4]
    out = value.new_zeros(N, M, D, Lq)
    start = 0
    for lvl, (h, w) in enumerate(levels):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        image = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(N * M, D, h, w)
        start += h * w
        # (N, Lq, M, P, 2) -> (N*M, Lq, P, 2) in grid_sample's [-1, 1]
        grid = sampling_locations[:, :, :, lvl].permute(0, 2, 1, 3, 4).reshape(N * M, Lq, P, 2)
        sampled = F.grid_sample(image, grid * 2 - 1, mode="bilinear", padding_mode="zeros",
                                align_corners=align_corners)  # (N*M, D, Lq, P)
        weights = attention_weights[:, :, :, lvl].permute(0, 2, 1, 3).reshape(N * M, 1, Lq, P)
        out = out + (sampled * weights).sum(-1).reshape(N, M, D, Lq)
    return out.permute(0, 3, 1, 2).reshape(N, Lq, M * D)


def make_problem(seed=0, N=2, levels=LEVELS, M=3, D=5, P=3, Lq=11, dtype=torch.float64,
                 requires_grad=False):
    """Random inputs; locations spread over [-0.15, 1.15] so that some fall outside."""
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in levels)
    L = len(levels)
    value = torch.randn(N, S, M, D, generator=g, dtype=dtype)
    loc = torch.rand(N, Lq, M, L, P, 2, generator=g, dtype=dtype) * 1.3 - 0.15
    attn = torch.rand(N, Lq, M, L, P, generator=g, dtype=dtype) * 1.5 - 0.5
    for t in (value, loc, attn):
        t.requires_grad_(requires_grad)
    return value, loc, attn


def index_arrays(levels, kind):
    """spatial_shapes / level_start_index in the forms the op accepts."""
    starts, total = [], 0
    for h, w in levels:
        starts.append(total)
        total += h * w
    if kind == "list":
        return [tuple(s) for s in levels], starts
    if kind == "list-derived":
        return [tuple(s) for s in levels], None
    dtype = torch.int32 if kind == "int32" else torch.int64
    shapes = torch.tensor(levels, dtype=dtype)
    if kind == "tensor-derived":
        return shapes, None
    return shapes, torch.tensor(starts, dtype=dtype)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# ---------------------------------------------------------------------------
# Against grid_sample


@pytest.mark.parametrize("kind", ["tensor", "int32", "list", "list-derived", "tensor-derived"])
@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_forward_matches_grid_sample(dtype, align_corners, kind):
    value, loc, attn = make_problem(seed=1, dtype=dtype)
    shapes, starts = index_arrays(LEVELS, kind)
    out = mt.ms_deform_attn(value, shapes, starts, loc, attn, align_corners=align_corners)
    ref = grid_sample_msda(value.double(), LEVELS, loc.double(), attn.double(), align_corners)
    assert out.dtype == dtype and out.shape == ref.shape and out.is_contiguous()
    assert rel_err(out.double(), ref) < (1e-12 if dtype == torch.float64 else 5e-5)


@pytest.mark.parametrize("align_corners", [False, True])
def test_gradients_match_grid_sample(align_corners):
    value, loc, attn = make_problem(seed=2, requires_grad=True)
    shapes, starts = index_arrays(LEVELS, "tensor")
    out = mt.ms_deform_attn(value, shapes, starts, loc, attn, align_corners=align_corners)
    ref = grid_sample_msda(value, LEVELS, loc, attn, align_corners)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (value, loc, attn), grad_out)
    expected = torch.autograd.grad(ref, (value, loc, attn), grad_out)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), got, expected):
        assert a.shape == b.shape and a.dtype == b.dtype, name
        assert rel_err(a, b) < 1e-12, name


# ---------------------------------------------------------------------------
# gradcheck, opcheck


@pytest.mark.parametrize("align_corners", [False, True])
def test_gradcheck_float64(align_corners):
    levels = ((3, 4), (2, 2), (1, 3))
    value, loc, attn = make_problem(seed=3, N=2, levels=levels, M=2, D=3, P=2, Lq=3,
                                    requires_grad=True)

    def fn(v, s, a):
        return mt.ms_deform_attn(v, levels, None, s, a, align_corners=align_corners)

    assert torch.autograd.gradcheck(fn, (value, loc, attn), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("requires_grad", [True, False])
def test_opcheck_forward(requires_grad):
    value, loc, attn = make_problem(seed=4, N=2, M=2, D=3, P=2, Lq=4, requires_grad=requires_grad)
    shapes, starts = index_arrays(LEVELS, "tensor")
    torch.library.opcheck(torch.ops.msdacore.ms_deform_attn.default,
                          (value, shapes, starts, loc, attn, False))
    torch.library.opcheck(torch.ops.msdacore.ms_deform_attn.default,
                          (value.float(), shapes.int(), starts.int(), loc.float(), attn.float(),
                           True))


def test_opcheck_backward():
    value, loc, attn = make_problem(seed=5, N=2, M=2, D=3, P=2, Lq=4)
    shapes, starts = index_arrays(LEVELS, "tensor")
    grad_out = torch.randn(2, 4, 6, dtype=torch.float64)
    torch.library.opcheck(torch.ops.msdacore.ms_deform_attn_backward.default,
                          (value, shapes, starts, loc, attn, grad_out, False))


# ---------------------------------------------------------------------------
# torch.compile


def _loss_and_grads(fn, value, loc, attn, *extra):
    out = fn(value, loc, attn, *extra)
    grads = torch.autograd.grad((out * out.detach().cos()).sum(), (value, loc, attn))
    return (out,) + grads


@pytest.mark.parametrize("kind", ["list-derived", "tensor"])
def test_compile_fullgraph_matches_eager(kind):
    torch._dynamo.reset()
    value, loc, attn = make_problem(seed=6, dtype=torch.float32, requires_grad=True)
    shapes, starts = index_arrays(LEVELS, kind)

    def fn(v, s, a):
        return mt.ms_deform_attn(v, shapes, starts, s, a)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    eager = _loss_and_grads(fn, value, loc, attn)
    got = _loss_and_grads(compiled, value, loc, attn)
    for a, b in zip(got, eager):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compile_dynamic_shapes_no_recompile_break():
    torch._dynamo.reset()

    def fn(v, s, a):
        return mt.ms_deform_attn(v, LEVELS, None, s, a, align_corners=True)

    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for Lq in (3, 8, 13):
        value, loc, attn = make_problem(seed=Lq, Lq=Lq, dtype=torch.float32, requires_grad=True)
        for a, b in zip(_loss_and_grads(compiled, value, loc, attn),
                        _loss_and_grads(fn, value, loc, attn)):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_compile_inductor_matches_eager():
    torch._dynamo.reset()
    value, loc, attn = make_problem(seed=7, dtype=torch.float32, requires_grad=True)

    def fn(v, s, a):
        return mt.ms_deform_attn(v, LEVELS, None, s, a)

    compiled = torch.compile(fn, fullgraph=True)
    out = compiled(value, loc, attn)
    grad_out = torch.randn_like(out)
    got = (out,) + torch.autograd.grad(out, (value, loc, attn), grad_out)
    ref = fn(value, loc, attn)
    expected = (ref,) + torch.autograd.grad(ref, (value, loc, attn), grad_out)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Autocast, gradients requested, layouts, empty sizes, determinism


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_cpu_autocast_mixed_precision(half):
    """value follows the autocast dtype, locations and weights are computed in float32;
    gradients come back in each input's dtype (test_torch_autocast.py has the rest)."""
    value, loc, attn = make_problem(seed=8, dtype=half, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    assert out.dtype == torch.bfloat16
    expected = mt.ms_deform_attn(value.bfloat16(), LEVELS, None, loc.float(), attn.float())
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    grads = torch.autograd.grad(out.sum(), (value, loc, attn))
    assert all(g.dtype == half for g in grads)


def test_cpu_autocast_casts_float32_value_and_leaves_float64():
    value, loc, attn = make_problem(seed=9, dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out, mt.ms_deform_attn(value.bfloat16(), LEVELS, None, loc, attn),
                               rtol=0, atol=0)
    value, loc, attn = make_problem(seed=9, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, mt.ms_deform_attn(value, LEVELS, None, loc, attn),
                               rtol=0, atol=0)


def test_only_requested_gradients_and_no_grad():
    value, loc, attn = make_problem(seed=10)
    value.requires_grad_(True)
    out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    (grad_value,) = torch.autograd.grad(out.sum(), (value,))
    assert grad_value.shape == value.shape
    with torch.no_grad():
        assert mt.ms_deform_attn(value, LEVELS, None, loc, attn).grad_fn is None


def test_noncontiguous_inputs_give_the_same_results():
    value, loc, attn = make_problem(seed=11, requires_grad=True)
    # The same numbers behind transposed / strided layouts.
    value_t = value.detach().transpose(0, 1).contiguous().transpose(0, 1).requires_grad_(True)
    attn_t = torch.stack([attn.detach(), attn.detach()], -1)[..., 0].requires_grad_(True)
    assert not value_t.is_contiguous() and not attn_t.is_contiguous()
    def f(v, s, w):
        return mt.ms_deform_attn(v, LEVELS, None, s, w)

    a = _loss_and_grads(f, value, loc, attn)
    b = _loss_and_grads(f, value_t, loc, attn_t)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=0)


@pytest.mark.parametrize("N,Lq", [(0, 4), (2, 0)])
def test_empty_batch_or_queries(N, Lq):
    value, loc, attn = make_problem(seed=12, N=N, Lq=Lq, requires_grad=True)
    out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    assert out.shape == (N, Lq, 15)
    grads = torch.autograd.grad(out.sum(), (value, loc, attn))
    assert [g.shape for g in grads] == [value.shape, loc.shape, attn.shape]
    assert all(int(torch.count_nonzero(g)) == 0 for g in grads)


def test_bitwise_deterministic():
    value, loc, attn = make_problem(seed=13, dtype=torch.float32, requires_grad=True)
    fn = lambda v, s, a: mt.ms_deform_attn(v, LEVELS, None, s, a)  # noqa: E731
    first = _loss_and_grads(fn, value, loc, attn)
    for _ in range(2):
        for a, b in zip(_loss_and_grads(fn, value, loc, attn), first):
            assert torch.equal(a, b)


def test_same_as_numpy_level_api():
    value, loc, attn = make_problem(seed=14)
    out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    shapes, starts = index_arrays(LEVELS, "tensor")
    plain = msdacore.ms_deform_attn(value.numpy(), shapes.numpy(), starts.numpy(), loc.numpy(),
                                    attn.numpy())
    assert torch.equal(out, torch.from_numpy(plain))


# ---------------------------------------------------------------------------
# Errors come from the core, with its messages


def test_errors_surface_from_the_core():
    value, loc, attn = make_problem(seed=15)
    with pytest.raises(ValueError,
                       match=r"sampling_locations must have shape \(N, Lq, M, L, P, 2\)"):
        mt.ms_deform_attn(value, LEVELS, None, loc[..., 0], attn)
    with pytest.raises(TypeError, match="same dtype"):
        mt.ms_deform_attn(value, LEVELS, None, loc.float(), attn)
    with pytest.raises(ValueError, match="level_start_index"):
        mt.ms_deform_attn(value, LEVELS, [0, 35, 47, 48], loc, attn)
    with pytest.raises(ValueError):
        mt.ms_deform_attn(value, [(5, 7), (3, 4), (1, 2), (2, 2)], None, loc, attn)
    with pytest.raises(TypeError):
        mt.ms_deform_attn(value, torch.tensor(LEVELS, dtype=torch.float32), None, loc, attn)


def test_errors_surface_under_compile():
    torch._dynamo.reset()
    value, loc, attn = make_problem(seed=16)
    compiled = torch.compile(lambda v, s, a: mt.ms_deform_attn(v, LEVELS, None, s, a),
                             fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="sampling_locations must have shape"):
        compiled(value, loc[..., 0], attn)


# ---------------------------------------------------------------------------
# CUDA (marker cuda: skipped without a visible GPU, see conftest.py)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch.cuda is not available")


@pytest.mark.cuda
@pytest.mark.parametrize("kind", ["list-derived", "tensor"])
def test_cuda_matches_cpu_on_a_side_stream(kind):
    value, loc, attn = make_problem(seed=17, dtype=torch.float32, requires_grad=True)
    shapes, starts = index_arrays(LEVELS, kind)
    fn = lambda v, s, a: mt.ms_deform_attn(v, shapes, starts, s, a)  # noqa: E731
    expected = _loss_and_grads(fn, value, loc, attn)
    device = torch.device("cuda", torch.cuda.device_count() - 1)
    inputs = [t.detach().to(device).requires_grad_(True) for t in (value, loc, attn)]
    stream = torch.cuda.Stream(device)
    with torch.cuda.stream(stream):
        got = _loss_and_grads(fn, *inputs)
    stream.synchronize()
    for a, b in zip(got, expected):
        assert a.device == device
        torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.cuda
@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_cuda_autocast_runs_natively(half):
    value, loc, attn = (t.cuda() for t in make_problem(seed=18, dtype=torch.float32))
    with torch.autocast("cuda", dtype=half):
        out = mt.ms_deform_attn(value, LEVELS, None, loc, attn)
    assert out.dtype == half
    ref = grid_sample_msda(value.double(), LEVELS, loc.double(), attn.double())
    assert rel_err(out.double(), ref) < (1e-2 if half == torch.float16 else 5e-2)


@needs_cuda
def test_cuda_without_cuda_kernels_raises_a_clear_error():
    if msdacore.build_info().get("cuda_kernels"):
        pytest.skip("this build has CUDA kernels")
    value, loc, attn = (t.cuda() for t in make_problem(seed=19, dtype=torch.float32))
    with pytest.raises(ValueError, match="CUDA"):
        mt.ms_deform_attn(value, LEVELS, None, loc, attn)
