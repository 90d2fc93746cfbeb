"""Command line, benchmark configurations and the grid_sample composition."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest

from msdacore import configs

CPU_CONFIGS = [n for n, c in configs.CONFIGS.items() if not c.gpu]


def run_cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "msdacore", *args], capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- command line

def test_info_prints_build_info():
    res = run_cli("info")
    assert res.returncode == 0, res.stderr
    keys = {line.split(":", 1)[0].strip() for line in res.stdout.splitlines() if ":" in line}
    assert {"version", "openmp", "num_threads", "cuda_compiled", "cuda_devices"} <= keys


def test_demo_small_passes(tmp_path):
    out_json = tmp_path / "demo.json"
    res = run_cli("demo", "--config", "small", "--repeats", "1", "--json", str(out_json))
    assert res.returncode == 0, res.stdout + res.stderr
    text = res.stdout
    for needle in ("machine", "threads", "config  : small", "dtype   : float32",
                   "forward+backward", "output", "grad_value", "grad_sampling_locations",
                   "grad_attention_weights", "result  : PASS"):
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert "FAIL" not in text
    results = json.loads(out_json.read_text())
    assert results["ok"] is True
    assert results["config"] == "small"
    assert results["checks"]["queries"] == 64
    assert results["msdacore_s"]["forward"] > 0
    assert set(results["checks"]["errors"]) == {"output", "grad_value", "grad_sampling_locations",
                                                "grad_attention_weights"}


def test_demo_float64_dat_passes():
    res = run_cli("demo", "--config", "dat", "--dtype", "float64", "--repeats", "1",
                  "--threads", "1", "--check-queries", "16", "--no-grid-sample")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "tolerance 1e-12" in res.stdout
    assert "result  : PASS" in res.stdout


def test_demo_rejects_unknown_config():
    res = run_cli("demo", "--config", "no-such-config")
    assert res.returncode == 2
    assert "no-such-config" in res.stderr


def test_demo_without_torch_skips_grid_sample():
    code = ("import sys; sys.modules['torch'] = None\n"
            "from msdacore.cli import main\n"
            "sys.exit(main(['demo', '--config', 'dat', '--repeats', '1', '--check-queries', '8']))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "torch not importable" in res.stdout
    assert "result  : PASS" in res.stdout


# ----------------------------------------------------------------------------- configs

def test_config_table():
    c = configs.CONFIGS
    assert set(c) >= {"detr-enc", "detr-dec", "small", "dat", "detr-enc-b8"}
    assert c["detr-enc"].S == 22223 and c["detr-enc"].Lq == 22223 and c["detr-enc"].L == 4
    assert c["detr-dec"].Lq == 300 and c["detr-dec"].levels == c["detr-enc"].levels
    assert c["small"].S == 1360 and c["small"].Lq == 1360 and c["small"].N == 2
    assert (c["dat"].levels, c["dat"].M, c["dat"].P, c["dat"].Lq) == (((56, 56),), 4, 1, 784)
    assert c["dat"].align_corners and not c["detr-enc"].align_corners
    assert c["detr-enc-b8"].N == 8 and c["detr-enc-b8"].Lq == 22223
    for cfg in c.values():
        assert (cfg.M, cfg.D) == ((4, 32) if cfg.name == "dat" else (8, 32))
    with pytest.raises(dataclasses.FrozenInstanceError):
        c["small"].N = 3


@pytest.mark.parametrize("name", CPU_CONFIGS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_make_inputs_shapes_and_dtypes(name, dtype):
    cfg = configs.CONFIGS[name]
    inp = configs.make_inputs(cfg, dtype=dtype, seed=3)
    N, S, M, D, L, P, Lq = cfg.N, cfg.S, cfg.M, cfg.D, cfg.L, cfg.P, cfg.Lq
    expected = {
        "value": ((N, S, M, D), dtype),
        "spatial_shapes": ((L, 2), np.int64),
        "level_start_index": ((L,), np.int64),
        "sampling_locations": ((N, Lq, M, L, P, 2), dtype),
        "attention_weights": ((N, Lq, M, L, P), dtype),
    }
    assert set(inp) == set(expected)
    for key, (shape, dt) in expected.items():
        assert inp[key].shape == shape, key
        assert inp[key].dtype == dt, key
        assert inp[key].flags.c_contiguous, key
        assert np.all(np.isfinite(inp[key])), key
    assert inp["spatial_shapes"].tolist() == [list(hw) for hw in cfg.levels]
    sizes = [h * w for h, w in cfg.levels]
    assert inp["level_start_index"].tolist() == [sum(sizes[:i]) for i in range(L)]
    assert 0.5 < inp["value"].std() < 1.5 and abs(inp["value"].mean()) < 0.05


def test_make_inputs_deterministic():
    a = configs.make_inputs("small", seed=7)
    b = configs.make_inputs("small", seed=7)
    c = configs.make_inputs("small", seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["value"], c["value"])
    assert not np.array_equal(a["sampling_locations"], c["sampling_locations"])
    # float32 inputs are the float64 inputs rounded
    d = configs.make_inputs("small", dtype=np.float64, seed=7)
    for key in ("value", "sampling_locations", "attention_weights"):
        np.testing.assert_array_equal(a[key], d[key].astype(np.float32))


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_attention_weights_softmax(name):
    cfg = configs.CONFIGS[name]
    w = configs.make_inputs(cfg, dtype=np.float64)["attention_weights"]
    assert np.all(w > 0)
    sums = w.reshape(cfg.N, cfg.Lq, cfg.M, cfg.L * cfg.P).sum(-1)
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-12)
    if cfg.L * cfg.P > 1:
        assert w.std() > 0  # not uniform


@pytest.mark.parametrize("name", CPU_CONFIGS)
def test_border_queries_sample_outside(name):
    cfg = configs.CONFIGS[name]
    locs = configs.make_inputs(cfg, dtype=np.float64)["sampling_locations"]
    outside = (locs < 0) | (locs > 1)
    assert outside.any()
    assert outside.mean() < 0.5  # most samples are inside
    # at most P ring pixels plus a few noise pixels beyond the map, in the coarsest level
    coarsest = min(min(h, w) for h, w in cfg.levels) - (1 if cfg.align_corners else 0)
    assert np.all(np.abs(locs - 0.5) < 0.5 + (cfg.P + 6) / max(coarsest, 1))


def test_encoder_reference_points_are_pixel_centres():
    # Ring offsets cancel over the evenly spread head angles, so the mean sample
    # location of a query is its reference point up to the averaged noise.
    cfg = configs.CONFIGS["small"]
    locs = configs.make_inputs(cfg, dtype=np.float64)["sampling_locations"]
    mean = locs.mean(axis=(2, 3, 4))  # (N, Lq, 2)
    centres = []
    for h, w in cfg.levels:
        ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
        centres.append(np.stack([xs.ravel(), ys.ravel()], -1))
    centres = np.concatenate(centres)
    assert np.abs(mean - centres[None]).max() < 0.1
    # the very first query (top-left pixel of level 0) samples left of and above the map
    assert (locs[:, 0, ..., 0] < 0).any() and (locs[:, 0, ..., 1] < 0).any()


# ----------------------------------------------------------------------------- grid_sample

@pytest.mark.parametrize("name", ["small", "dat"])
def test_grid_sample_composition_matches_reference(name):
    torch = pytest.importorskip("torch")
    from msdacore import reference
    from msdacore.grid_sample import ms_deform_attn_grid_sample

    cfg = configs.CONFIGS[name]
    inp = configs.make_inputs(cfg, dtype=np.float64, seed=5)
    q = np.r_[0:24, cfg.Lq - 24:cfg.Lq]  # border queries included
    locs = np.ascontiguousarray(inp["sampling_locations"][:, q])
    weights = np.ascontiguousarray(inp["attention_weights"][:, q])
    grad_out = np.random.default_rng(0).standard_normal((cfg.N, len(q), cfg.M * cfg.D))
    common = (inp["value"], inp["spatial_shapes"], inp["level_start_index"], locs, weights)

    ref = reference.ms_deform_attn(*common, align_corners=cfg.align_corners)
    ref_grads = reference.ms_deform_attn_backward(*common, grad_out,
                                                  align_corners=cfg.align_corners)

    leaves = [torch.from_numpy(a).requires_grad_() for a in (inp["value"], locs, weights)]
    for shapes in (torch.from_numpy(inp["spatial_shapes"]), list(cfg.levels)):
        out = ms_deform_attn_grid_sample(leaves[0], shapes, leaves[1], leaves[2],
                                         align_corners=cfg.align_corners)
        assert out.shape == (cfg.N, len(q), cfg.M * cfg.D) and out.is_contiguous()
        np.testing.assert_allclose(out.detach().numpy(), ref, rtol=0,
                                   atol=1e-12 * np.abs(ref).max())
    grads = torch.autograd.grad(out, leaves, torch.from_numpy(grad_out))
    for name_, g, r in zip(("value", "sampling_locations", "attention_weights"), grads, ref_grads):
        np.testing.assert_allclose(g.numpy(), r, rtol=0, atol=1e-12 * np.abs(r).max(),
                                   err_msg=name_)


def test_grid_sample_composition_float32_close_to_float64():
    torch = pytest.importorskip("torch")
    from msdacore.grid_sample import ms_deform_attn_grid_sample

    inp32 = configs.make_inputs("small", dtype=np.float32, seed=2)
    inp64 = configs.make_inputs("small", dtype=np.float64, seed=2)
    outs = []
    for inp in (inp32, inp64):
        outs.append(ms_deform_attn_grid_sample(
            torch.from_numpy(inp["value"]), inp["spatial_shapes"],
            torch.from_numpy(inp["sampling_locations"]),
            torch.from_numpy(inp["attention_weights"])).numpy())
    assert outs[0].dtype == np.float32
    err = np.abs(outs[0].astype(np.float64) - outs[1]).max() / np.abs(outs[1]).max()
    assert err < 5e-5

