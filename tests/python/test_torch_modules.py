"""MSDeformAttn and DeformableAttention2d against pure-torch reference modules written
here on grid_sample, with the same weights: same outputs, same gradients."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
nn = torch.nn

from test_torch_op import grid_sample_msda  # noqa: E402

import msdacore.torch as mt  # noqa: E402

TOL = dict(rtol=1e-10, atol=1e-12)


def assert_same_grads(module, ref_module, inputs, ref_inputs, out, ref_out):
    grad_out = torch.randn_like(out)
    params = dict(module.named_parameters())
    ref_params = dict(ref_module.named_parameters())
    assert params.keys() == ref_params.keys()
    names = sorted(params)
    got = torch.autograd.grad(out, [params[n] for n in names] + inputs, grad_out)
    expected = torch.autograd.grad(ref_out, [ref_params[n] for n in names] + ref_inputs, grad_out)
    labels = names + [f"input {i}" for i in range(len(inputs))]
    for label, a, b in zip(labels, got, expected):
        torch.testing.assert_close(a, b, msg=lambda m, label=label: f"{label}: {m}", **TOL)


# ---------------------------------------------------------------------------
# Deformable DETR module


class ReferenceMSDeformAttn(nn.Module):
    """Deformable DETR's attention module computed with grid_sample."""

    def __init__(self, d_model, n_levels, n_heads, n_points):
        super().__init__()
        self.d_model, self.n_levels = d_model, n_levels
        self.n_heads, self.n_points = n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)

    def forward(self, query, reference_points, input_flatten, levels, padding_mask=None):
        N, Lq, C = query.shape
        M, L, P = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if padding_mask is not None:
            value = value * (~padding_mask)[..., None].to(value.dtype)
        value = value.reshape(N, -1, M, C // M)
        off = self.sampling_offsets(query).reshape(N, Lq, M, L, P, 2)
        logits = self.attention_weights(query).reshape(N, Lq, M, L * P)
        attn = torch.softmax(logits, dim=-1).reshape(N, Lq, M, L, P)
        ref = reference_points.reshape(N, Lq, 1, L, 1, -1)
        if ref.shape[-1] == 2:
            wh = torch.tensor([[w, h] for h, w in levels], dtype=query.dtype)
            loc = ref + off / wh.reshape(1, 1, 1, L, 1, 2)
        else:
            loc = ref[..., :2] + off * ref[..., 2:] / (2 * P)
        return self.output_proj(grid_sample_msda(value, levels, loc, attn))


def _random_weights(module, seed):
    """Non-trivial weights (the paper's initialisation makes attention uniform)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.3)


MSDA_CASES = [
    # (d_model, levels, n_heads, n_points, n_coords, mask, index form)
    (16, ((6, 5), (3, 3), (2, 1)), 2, 3, 2, False, "tensor"),
    (16, ((6, 5), (3, 3), (2, 1)), 4, 2, 4, True, "list"),
    (12, ((7, 9),), 3, 4, 2, True, "list"),  # single scale
    (12, ((4, 4), (2, 2), (1, 1), (1, 3)), 2, 1, 4, False, "tensor"),
]


@pytest.mark.parametrize("case", MSDA_CASES,
                         ids=lambda c: f"C{c[0]}L{len(c[1])}M{c[2]}P{c[3]}ref{c[4]}"
                         + ("mask" if c[5] else "") + c[6])
def test_msdeformattn_matches_reference(case):
    d_model, levels, M, P, n_coords, use_mask, form = case
    L = len(levels)
    torch.manual_seed(0)
    module = mt.MSDeformAttn(d_model=d_model, n_levels=L, n_heads=M, n_points=P).double()
    _random_weights(module, seed=1)
    ref_module = ReferenceMSDeformAttn(d_model, L, M, P).double()
    ref_module.load_state_dict(module.state_dict())

    g = torch.Generator().manual_seed(2)
    N, Lq, S = 2, 7, sum(h * w for h, w in levels)
    query = torch.randn(N, Lq, d_model, generator=g, dtype=torch.float64)
    flat = torch.randn(N, S, d_model, generator=g, dtype=torch.float64)
    refp = torch.rand(N, Lq, L, n_coords, generator=g, dtype=torch.float64)
    if n_coords == 4:
        refp[..., 2:] = refp[..., 2:] * 0.5 + 0.1
    mask = (torch.rand(N, S, generator=g) < 0.2) if use_mask else None
    if form == "tensor":
        shapes = torch.tensor(levels)
        starts = torch.tensor([0] + [h * w for h, w in levels][:-1]).cumsum(0)
    else:
        shapes, starts = [list(s) for s in levels], None

    inputs = [t.clone().requires_grad_(True) for t in (query, flat, refp)]
    ref_inputs = [t.clone().requires_grad_(True) for t in (query, flat, refp)]
    out = module(inputs[0], inputs[2], inputs[1], shapes, starts, mask)
    ref_out = ref_module(ref_inputs[0], ref_inputs[2], ref_inputs[1], levels, mask)
    assert out.shape == (N, Lq, d_model)
    torch.testing.assert_close(out, ref_out, **TOL)
    assert_same_grads(module, ref_module, inputs, ref_inputs, out, ref_out)


def test_msdeformattn_initialisation():
    M, L, P = 8, 4, 4
    module = mt.MSDeformAttn(d_model=64, n_levels=L, n_heads=M, n_points=P)
    assert torch.count_nonzero(module.sampling_offsets.weight) == 0
    assert torch.count_nonzero(module.attention_weights.weight) == 0
    assert torch.count_nonzero(module.attention_weights.bias) == 0
    assert torch.count_nonzero(module.value_proj.bias) == 0
    assert torch.count_nonzero(module.output_proj.bias) == 0
    bias = module.sampling_offsets.bias.detach().reshape(M, L, P, 2)
    for m in range(M):
        angle = 2 * math.pi * m / M
        direction = torch.tensor([math.cos(angle), math.sin(angle)])
        direction = direction / direction.abs().max()
        for p in range(P):
            for lvl in range(L):
                torch.testing.assert_close(bias[m, lvl, p], direction * (p + 1))
    # Xavier-uniform bound for a square d_model x d_model weight.
    bound = math.sqrt(6.0 / (64 + 64))
    assert module.value_proj.weight.abs().max() <= bound
    assert module.output_proj.weight.abs().max() <= bound


def test_msdeformattn_paper_initialisation_uniform_attention():
    """With the paper's initialisation every point of a head gets weight 1/(L*P)."""
    module = mt.MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2).double()
    q = torch.randn(1, 3, 32, dtype=torch.float64)
    logits = module.attention_weights(q)
    assert torch.count_nonzero(logits) == 0


def test_msdeformattn_rejects_bad_configuration_and_reference_points():
    with pytest.raises(ValueError, match="divisible"):
        mt.MSDeformAttn(d_model=30, n_heads=8)
    module = mt.MSDeformAttn(d_model=8, n_levels=1, n_heads=2, n_points=1)
    with pytest.raises(ValueError, match="2 \\(points\\) or 4 \\(boxes\\)"):
        module(torch.randn(1, 2, 8), torch.rand(1, 2, 1, 3), torch.randn(1, 6, 8), [(2, 3)])


def _small_msdeformattn(seed):
    """A 2-level MSDeformAttn (d_model 16) with random weights, and float32 inputs for it:
    (module, (query, reference_points, input_flatten, levels))."""
    levels = [(6, 5), (3, 3)]
    module = mt.MSDeformAttn(d_model=16, n_levels=2, n_heads=2, n_points=2)
    _random_weights(module, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    query = torch.randn(2, 5, 16, generator=g)
    flat = torch.randn(2, 39, 16, generator=g)
    refp = torch.rand(2, 5, 2, 2, generator=g)
    return module, (query, refp, flat, levels)


def test_msdeformattn_compiles_fullgraph():
    torch._dynamo.reset()
    module, (query, refp, flat, levels) = _small_msdeformattn(seed=3)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(query, refp, flat, levels)
    grads = torch.autograd.grad(out.sum(), list(module.parameters()))
    ref = module(query, refp, flat, levels)
    ref_grads = torch.autograd.grad(ref.sum(), list(module.parameters()))
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ---------------------------------------------------------------------------
# DAT-style module


class ReferenceDAT(nn.Module):
    """DAT-style deformable attention with grid_sample for the sampling and the bias."""

    def __init__(self, module):
        super().__init__()
        self.conv_offset = nn.Sequential(
            nn.Conv2d(module.group_channels, module.group_channels, module.kernel_size,
                      module.stride, module.kernel_size // 2, groups=module.group_channels),
            _NormNCHW(module.group_channels),
            nn.GELU(),
            nn.Conv2d(module.group_channels, 2, 1, bias=False))
        dim = module.dim
        bias = module.proj_q.bias is not None
        self.proj_q = nn.Conv2d(dim, dim, 1, bias=bias)
        self.proj_k = nn.Conv2d(dim, dim, 1, bias=bias)
        self.proj_v = nn.Conv2d(dim, dim, 1, bias=bias)
        self.proj_out = nn.Conv2d(dim, dim, 1)
        self.rpe_table = nn.Parameter(module.rpe_table.detach().clone()) if module.use_rpb else None
        self.m = dict(G=module.n_groups, heads=module.n_heads, factor=module.offset_range_factor,
                      q_size=module.q_size)

    def forward(self, x):
        B, C, H, W = x.shape
        G, nh = self.m["G"], self.m["heads"]
        gc, hc = C // G, C // nh
        q = self.proj_q(x)
        off = self.conv_offset(q.reshape(B * G, gc, H, W))  # (B*G, 2, Hk, Wk)
        Hk, Wk = off.shape[-2:]
        off_x = torch.tanh(off[:, 0]) * self.m["factor"] / Wk
        off_y = torch.tanh(off[:, 1]) * self.m["factor"] / Hk
        cy = (torch.arange(Hk, dtype=x.dtype)[:, None] + 0.5) / Hk
        cx = (torch.arange(Wk, dtype=x.dtype)[None, :] + 0.5) / Wk
        pos = torch.stack([cx + off_x, cy + off_y], dim=-1)  # (B*G, Hk, Wk, 2)
        sampled = F.grid_sample(x.reshape(B * G, gc, H, W), pos * 2 - 1, mode="bilinear",
                                padding_mode="zeros", align_corners=True)
        sampled = sampled.reshape(B, C, Hk, Wk)
        Ns = Hk * Wk
        k = self.proj_k(sampled).reshape(B, nh, hc, Ns)
        v = self.proj_v(sampled).reshape(B, nh, hc, Ns)
        qh = q.reshape(B, nh, hc, H * W)
        logits = torch.einsum("bhcq,bhck->bhqk", qh, k) / math.sqrt(hc)
        if self.rpe_table is not None:
            hm, wm = self.m["q_size"]
            # Query pixels and key pixels (align_corners=True), their difference placed
            # in the table whose centre (hm - 1, wm - 1) is displacement zero.
            qy, qx = torch.meshgrid(torch.arange(H, dtype=x.dtype), torch.arange(W, dtype=x.dtype),
                                    indexing="ij")
            kx = pos[..., 0].reshape(B * G, 1, Ns) * (W - 1)
            ky = pos[..., 1].reshape(B * G, 1, Ns) * (H - 1)
            tx = qx.reshape(1, H * W, 1) - kx + (wm - 1)
            ty = qy.reshape(1, H * W, 1) - ky + (hm - 1)
            grid = torch.stack([tx / max(2 * wm - 2, 1), ty / max(2 * hm - 2, 1)], -1) * 2 - 1
            table = self.rpe_table[None].expand(B, -1, -1, -1).reshape(B * G, nh // G, 2 * hm - 1,
                                                                       2 * wm - 1)
            bias = F.grid_sample(table, grid, mode="bilinear", padding_mode="zeros",
                                 align_corners=True)  # (B*G, nh/G, HW, Ns)
            logits = logits + bias.reshape(B, nh, H * W, Ns)
        attn = torch.softmax(logits, dim=-1)
        out = torch.einsum("bhqk,bhck->bhcq", attn, v).reshape(B, C, H, W)
        return self.proj_out(out)


class _NormNCHW(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


DAT_CASES = [
    # (dim, heads, groups, stride, H, W, use_rpb, q_size, factor)
    (16, 4, 2, 2, 8, 6, True, (8, 6), 2.0),
    (16, 4, 4, 3, 7, 9, True, (9, 11), 3.0),  # smaller than the table, odd stride
    (12, 2, 1, 4, 9, 8, False, None, 2.0),
    (8, 2, 2, 1, 5, 4, True, (5, 4), 1.0),
]


@pytest.mark.parametrize("case", DAT_CASES,
                         ids=lambda c: f"C{c[0]}h{c[1]}g{c[2]}r{c[3]}_{c[4]}x{c[5]}"
                         + ("rpb" if c[6] else ""))
def test_dat_matches_reference(case):
    dim, nh, G, r, H, W, use_rpb, q_size, factor = case
    torch.manual_seed(5)
    module = mt.DeformableAttention2d(dim, n_heads=nh, n_groups=G, stride=r,
                                      offset_range_factor=factor, use_rpb=use_rpb,
                                      q_size=q_size).double().eval()
    _random_weights(module, seed=6)
    ref_module = ReferenceDAT(module).double().eval()
    ref_module.load_state_dict(module.state_dict())

    x = torch.randn(2, dim, H, W, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    out, positions, reference = module(xa, return_positions=True)
    ref_out = ref_module(xb)
    assert out.shape == x.shape
    Hk, Wk = reference.shape[:2]
    assert (Hk, Wk) == (math.ceil(H / r), math.ceil(W / r))
    assert positions.shape == (2, G, Hk, Wk, 2)
    # Offsets stay within offset_range_factor reference cells.
    cell = torch.tensor([1.0 / Wk, 1.0 / Hk], dtype=torch.float64)
    assert ((positions - reference).abs() <= factor * cell + 1e-12).all()
    torch.testing.assert_close(out, ref_out, **TOL)
    assert_same_grads(module, ref_module, [xa], [xb], out, ref_out)


def test_dat_parameters_are_checked():
    with pytest.raises(ValueError, match="q_size"):
        mt.DeformableAttention2d(16, n_heads=4, n_groups=2, use_rpb=True)
    with pytest.raises(ValueError, match="divisible"):
        mt.DeformableAttention2d(16, n_heads=4, n_groups=3, use_rpb=False)
    with pytest.raises(ValueError, match="odd"):
        mt.DeformableAttention2d(16, n_heads=4, n_groups=2, kernel_size=4, use_rpb=False)
    assert mt.DAttention is mt.DeformableAttention2d


def test_dat_compiles_fullgraph():
    torch._dynamo.reset()
    module = mt.DeformableAttention2d(16, n_heads=4, n_groups=2, stride=2, q_size=(8, 8)).eval()
    x = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(8))
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    grads = torch.autograd.grad(out.square().sum(), list(module.parameters()))
    ref = module(x)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(module.parameters()))
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-7)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_msdeformattn_under_cpu_autocast():
    """Linear layers run in bfloat16, the deformable sampling in float32."""
    module, (query, refp, flat, levels) = _small_msdeformattn(seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(query, refp, flat, levels)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in module.parameters())
    ref = module(query, refp, flat, levels)
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)
