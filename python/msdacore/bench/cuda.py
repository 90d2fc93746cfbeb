"""The GPU benchmark: ``python -m msdacore bench --device cuda``.

Times msdacore's CUDA kernels against the grid_sample composition (msdacore.grid_sample)
on the same GPU, in the same run, on the same torch CUDA inputs:

- configurations ``detr-enc``, ``detr-enc-b8``, ``detr-dec`` (docs/benchmarks.md), dtypes float32,
  float16, bfloat16; passes forward, forward+backward (atomic grad_value) and
  forward+backward with ``deterministic=True``; grid_sample forward under no_grad and
  forward+backward through autograd;
- each measurement: ``warmup`` untimed calls, then ``repeats`` calls each timed with CUDA
  events, the median reported; inputs rotate among enough copies to exceed twice the L2
  cache, so repeated calls do not measure the cache; ratio = grid_sample / msdacore;
- achieved bandwidth: the fewest bytes a pass must move (each input read once, each
  output written once) over the median time, and that as a share of the device's
  copy bandwidth, measured in the same run (a device-to-device copy of 1 GiB, bytes
  read plus written);
- a correctness check of every configuration and dtype: msdacore against grid_sample,
  max|a - b| / max|b| of the output.

Needs torch with CUDA and a build of msdacore with CUDA kernels;
``cuda_unavailable_reason()`` says why not otherwise.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ..configs import CONFIGS, make_inputs
from .constants import (
    COPY_BYTES,
    CUDA_CONFIGS,
    CUDA_DTYPES,
    CUDA_PASSES,
    CUDA_REPEATS,
    CUDA_WARMUP,
    MAX_INPUT_SETS,
    PASS_LABELS,
)
from .problems import grid_sample_calls, msdacore_calls, problem_sizes, rel_error
from .report import printer, results_envelope
from .timing import summary, time_cuda_events

__all__ = ["cuda_unavailable_reason", "copy_bandwidth", "min_bytes", "run_cuda_bench"]


def cuda_unavailable_reason():
    """None when the CUDA benchmark can run, else a sentence saying why it cannot."""
    import msdacore

    if not msdacore.build_info().get("cuda_kernels"):
        return "msdacore was built without CUDA kernels (rebuild with a CUDA compiler on the PATH)"
    try:
        import torch
    except ImportError:
        return "torch is not installed (the CUDA benchmark uses torch CUDA tensors)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA support or sees no device"
    if msdacore.cuda_device_count() == 0:
        return "no CUDA device is visible"
    return None


def copy_bandwidth(torch, nbytes: int = COPY_BYTES, repeats: int = 20) -> float:
    """Device-to-device copy bandwidth of an nbytes copy, in bytes read + written per
    second (median of repeats)."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    median, _ = time_cuda_events(torch, lambda i: dst.copy_(src), repeats, 3)
    src = dst = None  # freed for empty_cache
    torch.cuda.empty_cache()
    return 2 * nbytes / median


def min_bytes(cfg, dtype: str) -> dict:
    """{pass: the fewest bytes it moves}: every input read once, every output written once,
    for cfg in dtype (a name in problems.ITEMSIZES)."""
    s = problem_sizes(cfg, dtype)
    forward = s["input_bytes"] + s["output_bytes"]
    backward = s["input_bytes"] + s["grad_output_bytes"] + s["grads_bytes"]
    return {"forward": forward, "forward_backward": forward + backward,
            "forward_backward_deterministic": forward + backward}


def _gpu_sets(torch, cfg, dtype_name: str, seed: int, l2_bytes: int) -> list:
    """Copies of the inputs (and grad_output) on the GPU in dtype_name, enough to exceed
    twice the L2 cache (at most MAX_INPUT_SETS); the index arrays stay NumPy."""
    dtype = getattr(torch, dtype_name)
    host = make_inputs(cfg, dtype=np.float32, seed=seed)
    rng = np.random.default_rng(seed + 1)
    host["grad_output"] = rng.standard_normal(cfg.output_shape).astype(np.float32)
    one = {k: (torch.from_numpy(v).to("cuda", dtype) if v.dtype.kind == "f" else v)
           for k, v in host.items()}
    set_bytes = sum(t.numel() * t.element_size() for t in one.values()
                    if isinstance(t, torch.Tensor))
    count = max(1, min(MAX_INPUT_SETS, math.ceil(2 * l2_bytes / max(set_bytes, 1))))
    return [one] + [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in one.items()}
                    for _ in range(count - 1)]


def _bench_one(torch, cfg, dtype_name: str, sets: list, repeats: int, warmup: int,
               grid_sample: bool) -> dict:
    """Times every pass of msdacore (and grid_sample) on sets; one result row."""
    ac = cfg.align_corners
    ours = [msdacore_calls(s, s["grad_output"], ac) for s in sets]
    determ = [msdacore_calls(s, s["grad_output"], ac, deterministic=True) for s in sets]
    row = {"config": cfg.name, "dtype": dtype_name, "msdacore": {}, "grid_sample": None}
    for key, calls in (("forward", ours), ("forward_backward", ours),
                       ("forward_backward_deterministic", determ)):
        fn_key = "forward" if key == "forward" else "forward_backward"
        _, times = time_cuda_events(torch, lambda i, calls=calls, fn_key=fn_key: calls[i][fn_key](),
                                    repeats, warmup, len(sets))
        row["msdacore"][key] = summary(times)

    output = ours[0]["forward"]()
    torch.cuda.synchronize()
    if grid_sample:
        gs = [grid_sample_calls(torch, s, s["grad_output"], ac) for s in sets]
        row["grid_sample"] = {}
        # forward rotates over the input sets; forward+backward runs on the first one
        for key, rotate in (("forward", len(sets)), ("forward_backward", 1)):
            _, times = time_cuda_events(
                torch, lambda i, key=key: gs[i][key](), repeats, warmup, rotate
            )
            row["grid_sample"][key] = summary(times)
        row["grid_sample"]["forward_backward_deterministic"] = row["grid_sample"][
            "forward_backward"]
        row["check_output_vs_grid_sample"] = rel_error(
            output.double().cpu().numpy(), gs[0]["forward"]().double().cpu().numpy())
    return row


def run_cuda_bench(configs=CUDA_CONFIGS, dtypes=CUDA_DTYPES, *, repeats=CUDA_REPEATS,
                   warmup=CUDA_WARMUP, grid_sample=True, seed=0, copy_bytes=COPY_BYTES,
                   command_line=None, out=sys.stdout) -> dict:
    """Runs the GPU benchmark on configs (names in CONFIGS) and dtypes ("float32",
    "float64", "float16", "bfloat16"); prints a table to out (None: silent); returns the
    results as a JSON-able dict. Raises RuntimeError when cuda_unavailable_reason() says
    it cannot run."""
    import torch

    say = printer(out)
    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the CUDA benchmark cannot run: {reason}")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    bandwidth = copy_bandwidth(torch, copy_bytes)
    device = {"name": props.name, "multiprocessors": props.multi_processor_count,
              "memory_bytes": props.total_memory, "l2_bytes": l2,
              "capability": f"{props.major}.{props.minor}",
              "copy_bandwidth_bytes_per_s": bandwidth}
    results = results_envelope("bench --device cuda", command_line, torch.__version__,
                               device=device)
    results.update({"settings": {"repeats": repeats, "warmup": warmup, "seed": seed,
                                 "configs": list(configs), "dtypes": list(dtypes),
                                 "timing": "CUDA events around each call, median"},
                    "results": []})
    say(f"msdacore {results['msdacore']['version']} bench --device cuda, {results['date']}")
    say(f"device  : {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} "
        f"SMs, L2 {l2 >> 20} MB), torch {torch.__version__}")
    say(f"copy bw : {bandwidth / 1e9:.0f} GB/s (device-to-device, read + write)")
    say(f"timing  : median of {repeats} calls after {warmup} warm-up, CUDA events; "
        "ratio = grid_sample / msdacore; GB/s = fewest bytes / time")
    say()
    say(f"{'config':<12}{'dtype':<9}{'pass':<17}{'msdacore ms':>12}{'grid_sample ms':>15}"
        f"{'ratio':>8}{'GB/s':>8}{'% copy':>8}")
    for name in configs:
        cfg = CONFIGS[name]
        for dtype_name in dtypes:
            sets = _gpu_sets(torch, cfg, dtype_name, seed, l2)
            row = _bench_one(torch, cfg, dtype_name, sets, repeats, warmup, grid_sample)
            nbytes = min_bytes(cfg, dtype_name)
            row["input_sets"] = len(sets)
            row["min_bytes"] = nbytes
            row["ratios"] = {}
            for key in CUDA_PASSES:
                ours = row["msdacore"][key]["median_s"]
                gs = row["grid_sample"][key]["median_s"] if row["grid_sample"] else None
                ratio = gs / ours if gs else None
                gbs = nbytes[key] / ours
                row["ratios"][key] = ratio
                row["msdacore"][key]["bytes_per_s"] = gbs
                row["msdacore"][key]["share_of_copy_bandwidth"] = gbs / bandwidth
                gs_ms = "-" if gs is None else f"{gs * 1e3:.3f}"
                ratio_txt = "-" if ratio is None else f"{ratio:.1f}"
                say(f"{name:<12}{dtype_name:<9}{PASS_LABELS[key]:<17}{ours * 1e3:>12.3f}"
                    f"{gs_ms:>15}{ratio_txt:>8}"
                    f"{gbs / 1e9:>8.0f}{100 * gbs / bandwidth:>7.0f}%")
            if "check_output_vs_grid_sample" in row:
                say(f"{'':<12}{'':<9}check: output vs grid_sample, max|a-b|/max|b| = "
                    f"{row['check_output_vs_grid_sample']:.2e}")
            results["results"].append(row)
            del sets
            torch.cuda.empty_cache()
    return results
