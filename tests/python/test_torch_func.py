"""torch.func and forward-mode AD through msdacore.torch.ms_deform_attn: reverse mode
(grad, vjp, jacrev) and vmap match autograd and a loop; forward mode (jvp, jacfwd,
forward_ad) matches central differences for value and attention_weights and refuses
sampling_locations with a clear error; the raw operators refuse forward mode; double
backward is refused. Never a silent zero tangent."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
import torch.autograd.forward_ad as fwAD  # noqa: E402

import msdacore.torch as mt  # noqa: E402

SHAPES = torch.tensor([[3, 4], [2, 2]])
STARTS = torch.tensor([0, 12])


def _inputs(seed=0, N=2):
    g = torch.Generator().manual_seed(seed)
    M, D, Lq, L, P = 2, 3, 5, 2, 2
    value = torch.randn(N, 16, M, D, dtype=torch.float64, generator=g)
    loc = torch.rand(N, Lq, M, L, P, 2, dtype=torch.float64, generator=g) * 0.8 + 0.1
    attn = torch.rand(N, Lq, M, L, P, dtype=torch.float64, generator=g)
    return value, loc, attn


def f(value, loc, attn):
    return mt.ms_deform_attn(value, SHAPES, STARTS, loc, attn)


def _central_difference(fn, x, t, eps=1e-6):
    return (fn(x + eps * t) - fn(x - eps * t)) / (2 * eps)


def test_func_grad_matches_autograd():
    value, loc, attn = _inputs()
    weight = torch.randn(2, 5, 6, dtype=torch.float64)
    loss = lambda v, l, a: (f(v, l, a) * weight).sum()  # noqa: E731
    got = torch.func.grad(loss, argnums=(0, 1, 2))(value, loc, attn)
    leaves = [x.clone().requires_grad_() for x in (value, loc, attn)]
    expected = torch.autograd.grad(loss(*leaves), leaves)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
        assert g.abs().sum() > 0


def test_jacrev_matches_central_differences():
    value, loc, attn = _inputs(1, N=1)
    jac = torch.func.jacrev(f, argnums=1)(value, loc, attn)  # (out..., loc...)
    t = torch.randn_like(loc)
    directional = (jac * t).sum(dim=tuple(range(3, jac.dim())))
    torch.testing.assert_close(directional,
                               _central_difference(lambda x: f(value, x, attn), loc, t),
                               rtol=1e-6, atol=1e-8)


def test_vmap_matches_a_loop_and_folds_into_one_call():
    value, loc, attn = _inputs(2)
    B = 3
    vs, ls, as_ = (torch.stack([x * (1 + 0.1 * b) for b in range(B)]) for x in (value, loc, attn))
    got = torch.func.vmap(f)(vs, ls.clamp(0, 1), as_)
    expected = torch.stack([f(vs[b], ls[b].clamp(0, 1), as_[b]) for b in range(B)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    # value shared by the batch (in_dims None)
    got = torch.func.vmap(f, in_dims=(None, 0, 0))(value, ls.clamp(0, 1), as_)
    expected = torch.stack([f(value, ls[b].clamp(0, 1), as_[b]) for b in range(B)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_vmap_of_grad_gives_per_sample_gradients():
    value, loc, attn = _inputs(3)
    B = 2
    vs = torch.stack([value, 2 * value])
    loss = lambda v, l, a: f(v, l, a).square().sum()  # noqa: E731
    got = torch.func.vmap(torch.func.grad(loss), in_dims=(0, None, None))(vs, loc, attn)
    expected = torch.stack([torch.func.grad(loss)(vs[b], loc, attn) for b in range(B)])
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


@pytest.mark.parametrize("arg", [0, 2])
def test_jvp_and_jacfwd_for_value_and_weights(arg):
    inputs = list(_inputs(4))
    t = torch.randn_like(inputs[arg])

    def along(x):
        args = list(inputs)
        args[arg] = x
        return f(*args)

    _, tangent = torch.func.jvp(along, (inputs[arg],), (t,))
    torch.testing.assert_close(tangent, _central_difference(along, inputs[arg], t),
                               rtol=1e-6, atol=1e-8)
    assert tangent.abs().sum() > 0
    torch.testing.assert_close(torch.func.jacfwd(along)(inputs[arg]),
                               torch.func.jacrev(along)(inputs[arg]), rtol=1e-12, atol=1e-12)
    with fwAD.dual_level():
        args = list(inputs)
        args[arg] = fwAD.make_dual(inputs[arg], t)
        dual = fwAD.unpack_dual(f(*args)).tangent
    torch.testing.assert_close(dual, tangent, rtol=0, atol=0)


def test_forward_mode_for_locations_is_refused():
    value, loc, attn = _inputs(5)
    with pytest.raises(RuntimeError, match="not for sampling_locations"):
        torch.func.jvp(lambda x: f(value, x, attn), (loc,), (torch.ones_like(loc),))
    with pytest.raises(RuntimeError, match="not for sampling_locations"):
        torch.func.jacfwd(f, argnums=1)(value, loc, attn)
    with fwAD.dual_level():
        with pytest.raises(RuntimeError, match="not for sampling_locations"):
            f(value, fwAD.make_dual(loc, torch.ones_like(loc)), attn)


def test_raw_operator_refuses_forward_mode():
    value, loc, attn = _inputs(6)
    with fwAD.dual_level():
        dual = fwAD.make_dual(value, torch.ones_like(value))
        with pytest.raises(RuntimeError, match="no forward-mode derivative"):
            torch.ops.msdacore.ms_deform_attn(dual, SHAPES, STARTS, loc, attn)


def test_double_backward_is_refused():
    value, loc, attn = (x.requires_grad_() for x in _inputs(7))
    (g,) = torch.autograd.grad(f(value, loc, attn).square().sum(), loc, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward"):
        g.sum().backward()


def test_level_start_index_of_widens_before_multiplying():
    shapes = torch.tensor([[50000, 50000], [3, 4]], dtype=torch.int32)
    assert mt.level_start_index_of(shapes).tolist() == [0, 2_500_000_000]
    import numpy as np
    assert mt.level_start_index_of(np.array([[50000, 50000], [3, 4]], np.int32)) == \
        [0, 2_500_000_000]
