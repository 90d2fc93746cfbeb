"""msdacore.jax.ms_deform_attn: the XLA FFI call under jit, grad, vmap and checkpoint,
against the NumPy API (itself tested) and the float64 reference; finite differences
(jax.test_util.check_grads); a small Deformable-DETR encoder layer trained in plain JAX."""

from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="JAX is not installed (pip install msdacore[jax])")
import jax.numpy as jnp  # noqa: E402
from jax.test_util import check_grads  # noqa: E402
from strategies import TOLERANCE, relative_error  # noqa: E402

import msdacore  # noqa: E402
from msdacore import reference  # noqa: E402
from msdacore.jax import ms_deform_attn  # noqa: E402
from msdacore.jax.composition import ms_deform_attn_composition  # noqa: E402

jax.config.update("jax_enable_x64", True)  # float64 cases; float32 ones pass float32 arrays

LEVELS = ((6, 7), (3, 4))
SHAPES = np.array(LEVELS, np.int64)
STARTS = np.array([0, 42], np.int64)
N, S, M, D, Lq, L, P = 2, 54, 2, 5, 7, 2, 3


def make(dtype="float64", seed=0, loc_dtype=None, shape=(N, Lq, M, L, P)):
    """value, sampling_locations, attention_weights (NumPy), locations spread a little
    past [0, 1] so that some samples fall outside their level."""
    rng = np.random.default_rng(seed)
    value = rng.standard_normal((N, S, M, D))
    loc = rng.uniform(-0.1, 1.1, shape + (2,))
    attn = rng.uniform(0.0, 1.0, shape)
    loc_dtype = loc_dtype or dtype
    return (value.astype(dtype), loc.astype(loc_dtype), attn.astype(loc_dtype))


def grad_output_for(dtype="float64", seed=1):
    return np.random.default_rng(seed).standard_normal((N, Lq, M * D)).astype(dtype)


def numpy_grads(value, loc, attn, g, **kw):
    return msdacore.ms_deform_attn_backward(value, SHAPES, STARTS, loc, attn, g, **kw)


def jax_grads(value, loc, attn, g, **kw):
    def loss(v, lo, a):
        return jnp.sum(ms_deform_attn(v, SHAPES, STARTS, lo, a, **kw) * g)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(value, loc, attn)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_jit_forward_matches_numpy_api_and_reference(dtype, align_corners):
    value, loc, attn = make(dtype)
    out = jax.jit(lambda v, lo, a: ms_deform_attn(v, SHAPES, STARTS, lo, a,
                                                  align_corners=align_corners))(value, loc, attn)
    assert out.dtype == dtype and out.shape == (N, Lq, M * D)
    np.testing.assert_array_equal(
        np.asarray(out),
        msdacore.ms_deform_attn(value, SHAPES, STARTS, loc, attn, align_corners=align_corners))
    ref = reference.ms_deform_attn(value, SHAPES, STARTS, loc, attn, align_corners)
    assert relative_error(out, ref) <= TOLERANCE[dtype]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_jit_grad_matches_numpy_backward(dtype, align_corners):
    value, loc, attn = make(dtype)
    g = grad_output_for(dtype)
    got = jax_grads(value, loc, attn, g, align_corners=align_corners)
    want = numpy_grads(value, loc, attn, g, align_corners=align_corners)
    ref = reference.ms_deform_attn_backward(value, SHAPES, STARTS, loc, attn, g, align_corners)
    # deterministic=True reaches the core; the CPU backward is deterministic either way
    got_det = jax_grads(value, loc, attn, g, align_corners=align_corners, deterministic=True)
    for name, a, b, r, like, d in zip(("value", "sampling_locations", "attention_weights"),
                                      got, want, ref, (value, loc, attn), got_det):
        assert a.dtype == like.dtype and a.shape == like.shape, name
        np.testing.assert_array_equal(np.asarray(a), b, err_msg=name)
        np.testing.assert_array_equal(np.asarray(d), b, err_msg=name)
        assert relative_error(a, r) <= TOLERANCE[dtype], name


def test_check_grads_float64():
    value, loc, attn = make("float64", seed=3)
    loc = loc * 0.8 + 0.1  # inside the levels, away from the border

    def f(v, lo, a):
        return ms_deform_attn(v, SHAPES, STARTS, lo, a)
    # reverse mode (custom_vjp); second order is not defined by msdacore's backward
    check_grads(f, (value, loc, attn), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)


def test_vmap_folds_batches_into_the_kernel_call():
    value, loc, attn = make("float64")
    g = grad_output_for("float64")
    B = 3
    rng = np.random.default_rng(5)
    locs = np.clip(loc[None] + 0.05 * rng.standard_normal((B,) + loc.shape), -0.2, 1.2)
    f = jax.jit(jax.vmap(lambda lo: ms_deform_attn(value, SHAPES, STARTS, lo, attn)))
    out = f(locs)
    assert out.shape == (B, N, Lq, M * D)
    for b in range(B):
        np.testing.assert_array_equal(np.asarray(out[b]),
                                      msdacore.ms_deform_attn(value, SHAPES, STARTS, locs[b], attn))
    # every argument batched, and nested vmaps (two leading dimensions folded into N):
    # nested[i, j] = f(values[j], locs[i + j], attns[j])
    values = np.stack([value, value[::-1]])
    attns = np.stack([attn, 2 * attn])
    nested = jax.vmap(jax.vmap(lambda v, lo, a: ms_deform_attn(v, SHAPES, STARTS, lo, a)),
                      in_axes=(None, 0, None))(values, np.stack([locs[:2], locs[1:3]]), attns)
    assert nested.shape == (2, 2, N, Lq, M * D)
    for i in range(2):
        for j in range(2):
            np.testing.assert_array_equal(
                np.asarray(nested[i, j]),
                msdacore.ms_deform_attn(values[j], SHAPES, STARTS, locs[i + j], attns[j]))
    # the vmapped backward: per-example gradients
    per_example = jax.jit(jax.vmap(jax.grad(
        lambda v, lo: jnp.sum(ms_deform_attn(v, SHAPES, STARTS, lo, attn) * g),
        argnums=(0, 1)), in_axes=(None, 0)))(value, locs)
    for b in range(B):
        gv, gl, _ = numpy_grads(value, locs[b], attn, g)
        np.testing.assert_array_equal(np.asarray(per_example[0][b]), gv)
        np.testing.assert_array_equal(np.asarray(per_example[1][b]), gl)


def test_flattened_layout_and_discrete_mode():
    counts = [2, 4]
    value, loc, attn = make("float64", shape=(N, Lq, M, sum(counts)))
    g = grad_output_for("float64")
    for mode in ("bilinear", "discrete"):
        kw = {"points_per_level": np.array(counts), "mode": mode}
        out = jax.jit(lambda v, lo, a, kw=kw: ms_deform_attn(v, SHAPES, STARTS, lo, a, **kw))(
            value, loc, attn)
        np.testing.assert_array_equal(
            np.asarray(out), msdacore.ms_deform_attn(value, SHAPES, STARTS, loc, attn, **kw))
        got = jax_grads(value, loc, attn, g, **kw)
        for a, b in zip(got, numpy_grads(value, loc, attn, g, **kw)):
            assert a.shape == b.shape
            np.testing.assert_array_equal(np.asarray(a), b)
        ref = reference.ms_deform_attn_backward(value, SHAPES, STARTS, loc, attn, g,
                                                points_per_level=counts, mode=mode)
        assert relative_error(got[0], ref[0]) <= 1e-12
        if mode == "discrete":
            assert not np.any(np.asarray(got[1]))


def test_checkpoint_and_static_index_kinds():
    value, loc, attn = make("float64")

    def loss(v, lo, a, shapes, starts):
        return jnp.sum(jnp.sin(ms_deform_attn(v, shapes, starts, lo, a)))
    want = jax.grad(loss, argnums=(0, 1, 2))(value, loc, attn, SHAPES, STARTS)
    remat = jax.jit(jax.grad(jax.checkpoint(loss, static_argnums=(3, 4)), argnums=(0, 1, 2)),
                    static_argnums=(3, 4))
    # lists / tuples of ints and int32 arrays are all accepted as static index arrays
    got = remat(value, loc, attn, tuple(map(tuple, LEVELS)), (0, 42))
    got32 = jax.grad(loss, argnums=(0, 1, 2))(value, loc, attn, SHAPES.astype(np.int32),
                                              [0, 42])
    for a, b, c in zip(got, want, got32):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        np.testing.assert_array_equal(np.asarray(c), np.asarray(b))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_types_mixed_precision(dtype):
    value, loc, attn = make("float64", seed=7)
    half = jnp.asarray(value).astype(dtype)
    g = grad_output_for("float64")
    out = jax.jit(lambda v, lo, a: ms_deform_attn(v, SHAPES, STARTS, lo, a))(
        half, loc.astype("float32"), attn.astype("float32"))
    assert out.dtype == half.dtype
    v64 = np.asarray(half.astype("float64"))
    ref = reference.ms_deform_attn(v64, SHAPES, STARTS, loc.astype("float32"),
                                   attn.astype("float32"))
    assert relative_error(out, ref) <= TOLERANCE[dtype]
    grads = jax_grads(half, loc.astype("float32"), attn.astype("float32"),
                      jnp.asarray(g).astype(dtype))
    assert [x.dtype.name for x in grads] == [dtype, "float32", "float32"]
    ref_grads = reference.ms_deform_attn_backward(
        v64, SHAPES, STARTS, loc.astype("float32"), attn.astype("float32"),
        np.asarray(jnp.asarray(g).astype(dtype).astype("float64")))
    assert relative_error(grads[0], ref_grads[0]) <= TOLERANCE[dtype]
    assert relative_error(grads[2], ref_grads[2]) <= TOLERANCE[dtype]


def test_empty_batch_and_queries():
    value, loc, attn = make("float64")
    assert ms_deform_attn(value[:0], SHAPES, STARTS, loc[:0], attn[:0]).shape == (0, Lq, M * D)
    gv = jax.grad(lambda v: jnp.sum(ms_deform_attn(v, SHAPES, STARTS, loc[:, :0],
                                                   attn[:, :0])))(value)
    assert gv.shape == value.shape and not np.any(np.asarray(gv))


def test_bad_inputs_raise_clear_errors_at_trace_time():
    value, loc, attn = make("float64")
    with pytest.raises(ValueError, match=r"sampling_locations must have shape "
                                         r"\(N, Lq, M, L, P, 2\) = \(2, 7, 2, 2, 3, 2\), got"):
        jax.jit(lambda lo: ms_deform_attn(value, SHAPES, STARTS, lo, attn))(loc[..., :1])
    with pytest.raises(ValueError, match="level_start_index must hold the prefix sums"):
        ms_deform_attn(value, SHAPES, [0, 41], loc, attn)
    with pytest.raises(TypeError, match="same dtype"):
        ms_deform_attn(value, SHAPES, STARTS, loc.astype("float32"), attn)
    with pytest.raises(TypeError, match=r"value must be a floating-point array \(float32, "
                                        r"float64, float16 or bfloat16\), got int32"):
        ms_deform_attn(value.astype("int32"), SHAPES, STARTS, loc, attn)
    with pytest.raises(TypeError, match=r"attention_weights has dtype complex64, which msdacore "
                                        r"does not support \(float32, float64, float16 or "
                                        r"bfloat16"):
        ms_deform_attn(value, SHAPES, STARTS, loc, attn.astype("complex64"))
    with pytest.raises(TypeError, match="spatial_shapes must be static"):
        jax.jit(lambda s: ms_deform_attn(value, s, STARTS, loc, attn))(SHAPES)
    with pytest.raises(TypeError,
                       match="spatial_shapes must be an int32 or int64 array, got float32"):
        ms_deform_attn(value, SHAPES.astype(np.float32), STARTS, loc, attn)
    # Unsigned index arrays refused as by the NumPy API, in its words (was: accepted, and a
    # uint64 past 2^63 wrapped to a negative size)
    for dtype in (np.uint64, np.uint8):
        for call in (ms_deform_attn, msdacore.ms_deform_attn):
            with pytest.raises(TypeError, match=f"spatial_shapes has dtype "
                                                f"{np.dtype(dtype).name}, which msdacore does "
                                                f"not support"):
                call(value, SHAPES.astype(dtype), STARTS, loc, attn)
    with pytest.raises(TypeError, match="deterministic must be a bool, got str"):
        ms_deform_attn(value, SHAPES, STARTS, loc, attn, deterministic="yes")
    with pytest.raises(ValueError, match='mode must be "bilinear" or "discrete"'):
        ms_deform_attn(value, SHAPES, STARTS, loc, attn, mode="nearest")
    with pytest.raises(ValueError, match="align_corners"):
        ms_deform_attn(value, SHAPES, STARTS, loc, attn, mode="discrete", align_corners=True)
    with pytest.raises(ValueError, match=r"sampling_locations must have shape "
                                         r"\(N, Lq, M, P_total, 2\) = \(2, 7, 2, 5, 2\)"):
        ms_deform_attn(value, SHAPES, STARTS, loc.reshape(N, Lq, M, L * P, 2),
                       attn.reshape(N, Lq, M, L * P), points_per_level=[2, 3])
    with pytest.raises(ValueError, match="points_per_level"):
        ms_deform_attn(value, SHAPES, STARTS, loc.reshape(N, Lq, M, L * P, 2),
                       attn.reshape(N, Lq, M, L * P), points_per_level=[6])


def test_handler_errors_come_back_as_xla_errors_with_msdacore_message():
    from msdacore.jax import _ffi

    _ffi.library()
    value, loc, attn = make("float64")
    # the custom call itself, past ms_deform_attn's trace-time check
    call = jax.ffi.ffi_call(_ffi.FORWARD, jax.ShapeDtypeStruct((N, Lq, M * D), value.dtype))
    with pytest.raises(jax.errors.JaxRuntimeError,
                       match=r"msdacore: MSDACORE_ERROR_SHAPE: level_start_index must hold the "
                             r"prefix sums of H_l\*W_l from spatial_shapes: expected \[0, 42\], "
                             r"got \[0, 41\]"):
        jax.block_until_ready(call(
            value, loc.reshape(N, Lq, M, L * P, 2), attn.reshape(N, Lq, M, L * P),
            spatial_shapes=SHAPES.reshape(-1), level_start_index=np.array([0, 41]),
            points_per_level=np.array([P, P]), align_corners=np.int32(0), mode=np.int32(0),
            deterministic=np.int32(0)))


def test_composition_matches_reference_with_autodiff():
    value, loc, attn = make("float64", seed=11)
    g = grad_output_for("float64")

    @jax.jit
    def outputs_and_grads(v, lo, a):  # both align_corners variants, in one compilation
        results = []
        for align_corners in (False, True):
            out, vjp = jax.vjp(lambda *x, ac=align_corners: ms_deform_attn_composition(
                *x[:1], SHAPES, STARTS, *x[1:], align_corners=ac), v, lo, a)
            results.append((out, vjp(jnp.asarray(g))))
        return results
    for align_corners, (out, grads) in zip((False, True), outputs_and_grads(value, loc, attn)):
        ref = reference.ms_deform_attn(value, SHAPES, STARTS, loc, attn, align_corners)
        assert relative_error(out, ref) <= 1e-12
        refs = reference.ms_deform_attn_backward(value, SHAPES, STARTS, loc, attn, g,
                                                 align_corners)
        for a, r in zip(grads, refs):
            assert relative_error(a, r) <= 1e-12


def test_bench_runs_both_implementations_side_by_side():
    import io

    from msdacore.bench.jax import run_jax_bench
    from msdacore.configs import Config

    tiny = Config(name="tiny", N=1, levels=((4, 5),), M=2, D=4, P=2, Lq=6)
    out = io.StringIO()
    results = run_jax_bench([tiny], ["float64"], threads=1, repeats=1, warmup=0, out=out)
    rows = results["results"]
    assert [r["pass"] for r in rows] == ["forward", "forward_backward"]
    for row in rows:
        assert row["msdacore_s"] > 0 and row["composition_s"] > 0
        assert row["ratio"] == pytest.approx(row["composition_s"] / row["msdacore_s"])
        assert row["max_rel_diff"] <= 1e-12  # float64: the two agree
    assert "tiny" in out.getvalue() and "forward+backward" in out.getvalue()


# ---- a Deformable-DETR-style encoder layer in plain JAX ------------------------------

C = M * D


def init_layer(key, dtype):
    keys = jax.random.split(key, 6)

    def dense(k, fan_in, fan_out, scale=1.0):
        w = jax.random.normal(k, (fan_in, fan_out), dtype) * scale / np.sqrt(fan_in)
        return {"w": w, "b": jnp.zeros((fan_out,), dtype)}
    return {"value": dense(keys[0], C, C), "offsets": dense(keys[1], C, M * L * P * 2, 0.1),
            "weights": dense(keys[2], C, M * L * P), "out": dense(keys[3], C, C),
            "ffn1": dense(keys[4], C, 2 * C), "ffn2": dense(keys[5], 2 * C, C)}


def reference_points():
    """(S, 2): the pixel centre of every value token, normalized (the encoder's queries)."""
    points = []
    for H, W in LEVELS:
        y, x = np.meshgrid((np.arange(H) + 0.5) / H, (np.arange(W) + 0.5) / W, indexing="ij")
        points.append(np.stack([x.ravel(), y.ravel()], -1))
    return np.concatenate(points)


def encoder_layer(params, src, pos, attention):
    """src, pos (B, S, C) -> (B, S, C): deformable self-attention over the multi-scale
    tokens, residual + layer norm, feed-forward, residual + layer norm."""
    def dense(p, x):
        return x @ p["w"] + p["b"]

    def norm(x):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)
    B = src.shape[0]
    query = src + pos
    value = dense(params["value"], src).reshape(B, S, M, D)
    offsets = dense(params["offsets"], query).reshape(B, S, M, L, P, 2)
    weights = jax.nn.softmax(dense(params["weights"], query).reshape(B, S, M, L * P), -1)
    normalizer = jnp.asarray(SHAPES[:, ::-1], src.dtype)  # (W, H) per level
    locations = (jnp.asarray(reference_points(), src.dtype)[None, :, None, None, None, :]
                 + offsets / normalizer[None, None, None, :, None, :])
    sampled = attention(value, SHAPES, STARTS, locations, weights.reshape(B, S, M, L, P))
    src = norm(src + dense(params["out"], sampled))
    return norm(src + dense(params["ffn2"], jax.nn.relu(dense(params["ffn1"], src))))


def layer_loss(params, src, pos, target, attention):
    return jnp.mean((encoder_layer(params, src, pos, attention) - target) ** 2)


def test_encoder_layer_trains_and_matches_the_composition():
    key = jax.random.PRNGKey(0)
    k_params, k_src, k_pos, k_target = jax.random.split(key, 4)
    dtype = jnp.float64  # float64: no float32 cell-boundary ambiguity in the comparison
    params = init_layer(k_params, dtype)
    src = jax.random.normal(k_src, (N, S, C), dtype)
    pos = 0.1 * jax.random.normal(k_pos, (N, S, C), dtype)
    target = jax.random.normal(k_target, (N, S, C), dtype)

    def step_fn(attention):
        return jax.jit(jax.value_and_grad(lambda p: layer_loss(p, src, pos, target, attention)))
    step = step_fn(ms_deform_attn)
    losses, first_grads = [], None
    for _ in range(8):
        loss, grads = step(params)
        losses.append(float(loss))
        first_grads = first_grads or grads
        params = jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params, grads)
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses

    # the layer's gradients at the initial parameters through msdacore, and through JAX's
    # own differentiation of the plain gather composition
    _, theirs = step_fn(ms_deform_attn_composition)(init_layer(k_params, dtype))
    for name in first_grads:
        for leaf in ("w", "b"):
            assert relative_error(first_grads[name][leaf], theirs[name][leaf]) <= 1e-10, (
                name, leaf)
