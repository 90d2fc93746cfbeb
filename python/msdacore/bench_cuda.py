"""GPU benchmark: ``python -m msdacore bench --device cuda`` (also ``python -m
msdacore.bench_cuda``).

Times msdacore's CUDA kernels against the grid_sample composition
(msdacore.grid_sample) on the same GPU, in the same run, on the same torch CUDA inputs:

- configurations ``detr-enc``, ``detr-enc-b8``, ``detr-dec`` (SPEC), dtypes float32,
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

import argparse
import datetime
import json
import math
import os
import statistics
import sys

import numpy as np

from .configs import CONFIGS, make_inputs

__all__ = ["CUDA_CONFIGS", "CUDA_DTYPES", "cuda_unavailable_reason", "run_cuda_bench",
           "cmd_bench_cuda", "add_cuda_arguments", "main"]

CUDA_CONFIGS = ("detr-enc", "detr-enc-b8", "detr-dec")
CUDA_DTYPES = ("float32", "float16", "bfloat16")
OP_KEYS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
           "attention_weights")
PASSES = ("forward", "forward_backward", "forward_backward_deterministic")
PASS_LABELS = {"forward": "forward", "forward_backward": "forward+backward",
               "forward_backward_deterministic": "fwd+bwd determ."}


def cuda_unavailable_reason():
    """None when the CUDA benchmark can run, else why it cannot."""
    import msdacore

    info = msdacore.build_info()
    if not info.get("cuda_kernels"):
        return "msdacore was built without CUDA kernels (rebuild with a CUDA compiler on the PATH)"
    if info.get("cuda_devices", 0) == 0:
        return "no CUDA device is visible"
    try:
        import torch
    except ImportError:
        return "torch is not installed (the CUDA benchmark uses torch CUDA tensors)"
    if not torch.cuda.is_available():
        return f"torch {torch.__version__} has no CUDA support or sees no device"
    return None


# ----------------------------------------------------------------------------- timing

def _time_events(torch, fn, repeats, warmup, rotate=None):
    """Median and all times (seconds) of fn(i) over repeats calls, each between two CUDA
    events on the current stream; i cycles over range(rotate)."""
    n = rotate or 1
    for i in range(max(warmup, 1)):
        fn(i % n)
    torch.cuda.synchronize()
    times = []
    for i in range(repeats):
        start = torch.cuda.Event(enable_timing=True)
        stop = torch.cuda.Event(enable_timing=True)
        start.record()
        fn(i % n)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times), times


def copy_bandwidth(torch, nbytes=1 << 30, repeats=20):
    """Device-to-device copy bandwidth (bytes read + written per second), median."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda").normal_()
    dst = torch.empty_like(src)
    median, _ = _time_events(torch, lambda i: dst.copy_(src), repeats, 3)
    del src, dst
    torch.cuda.empty_cache()
    return 2 * nbytes / median


# ----------------------------------------------------------------------------- problems

def _min_bytes(cfg, itemsize):
    """Fewest bytes each pass moves: every input read once, every output written once."""
    value = cfg.N * cfg.S * cfg.M * cfg.D
    samples = cfg.N * cfg.Lq * cfg.M * cfg.L * cfg.P
    out = cfg.N * cfg.Lq * cfg.M * cfg.D
    forward = (value + 3 * samples + out) * itemsize
    backward = (value + 3 * samples + out + value + 3 * samples) * itemsize
    return {"forward": forward, "forward_backward": forward + backward,
            "forward_backward_deterministic": forward + backward}


def _gpu_sets(torch, cfg, dtype_name, seed, l2_bytes):
    """Copies of the inputs on the GPU, enough to exceed twice the L2 cache (at most 8)."""
    dtype = getattr(torch, dtype_name)
    host = make_inputs(cfg, dtype=np.float32, seed=seed)
    rng = np.random.default_rng(seed + 1)
    grad = rng.standard_normal(cfg.output_shape).astype(np.float32)
    one = {k: (torch.from_numpy(v).to("cuda", dtype) if v.dtype.kind == "f" else v)
           for k, v in host.items()}
    one["grad_output"] = torch.from_numpy(grad).to("cuda", dtype)
    set_bytes = sum(t.numel() * t.element_size() for t in one.values()
                    if isinstance(t, torch.Tensor))
    count = max(1, min(8, math.ceil(2 * l2_bytes / max(set_bytes, 1))))
    sets = [one] + [{k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in one.items()}
                    for _ in range(count - 1)]
    return sets


def _rel(a, b):
    a = a.double()
    b = b.double()
    scale = float(b.abs().max()) if b.numel() else 0.0
    return float((a - b).abs().max()) / (scale if scale > 0 else 1.0) if b.numel() else 0.0


def _bench_one(torch, cfg, dtype_name, sets, repeats, warmup, grid_sample):
    import msdacore
    from .grid_sample import ms_deform_attn_grid_sample

    ac = cfg.align_corners
    shapes = [tuple(int(x) for x in row) for row in sets[0]["spatial_shapes"]]

    def args(i):
        return [sets[i][k] for k in OP_KEYS]

    def fwd(i):
        return msdacore.ms_deform_attn(*args(i), align_corners=ac)

    def fwd_bwd(i, deterministic=False):
        out = msdacore.ms_deform_attn(*args(i), align_corners=ac)
        grads = msdacore.ms_deform_attn_backward(*args(i), sets[i]["grad_output"],
                                                 align_corners=ac, deterministic=deterministic)
        return out, grads

    row = {"config": cfg.name, "dtype": dtype_name, "msdacore": {}, "grid_sample": None}
    for key, fn in (("forward", fwd), ("forward_backward", fwd_bwd),
                    ("forward_backward_deterministic", lambda i: fwd_bwd(i, True))):
        median, times = _time_events(torch, fn, repeats, warmup, len(sets))
        row["msdacore"][key] = {"median_s": median, "min_s": min(times), "runs": len(times)}

    ours = fwd(0)
    torch.cuda.synchronize()
    if grid_sample:
        s0 = sets[0]
        leaves = [s0[k].detach().requires_grad_() for k in
                  ("value", "sampling_locations", "attention_weights")]

        def gs_fwd(i):
            s = sets[i]
            with torch.no_grad():
                return ms_deform_attn_grid_sample(s["value"], shapes, s["sampling_locations"],
                                                  s["attention_weights"], ac)

        def gs_fwd_bwd(i):
            out = ms_deform_attn_grid_sample(leaves[0], shapes, leaves[1], leaves[2], ac)
            return torch.autograd.grad(out, leaves, s0["grad_output"])

        row["grid_sample"] = {}
        for key, fn in (("forward", gs_fwd), ("forward_backward", gs_fwd_bwd)):
            median, times = _time_events(torch, fn, repeats, warmup,
                                         len(sets) if key == "forward" else 1)
            row["grid_sample"][key] = {"median_s": median, "min_s": min(times),
                                       "runs": len(times)}
        row["grid_sample"]["forward_backward_deterministic"] = row["grid_sample"][
            "forward_backward"]
        row["check_output_vs_grid_sample"] = _rel(ours, gs_fwd(0))
    return row


# ----------------------------------------------------------------------------- the run

def _fmt(x, spec):
    return "-" if x is None else format(x, spec)


def run_cuda_bench(configs=CUDA_CONFIGS, dtypes=CUDA_DTYPES, *, repeats=50, warmup=5,
                   grid_sample=True, seed=0, copy_bytes=1 << 30, command_line=None,
                   out=sys.stdout) -> dict:
    """Runs the GPU benchmark; prints a table to out; returns the results (JSON-able)."""
    import torch

    import msdacore

    def say(text=""):
        if out is not None:
            print(text, file=out, flush=True)

    reason = cuda_unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"the CUDA benchmark cannot run: {reason}")
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    l2 = int(getattr(props, "L2_cache_size", 50 << 20))
    bandwidth = copy_bandwidth(torch, copy_bytes)
    results = {
        "command": "bench --device cuda",
        "command_line": command_line,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": {"name": props.name, "multiprocessors": props.multi_processor_count,
                   "memory_bytes": props.total_memory, "l2_bytes": l2,
                   "capability": f"{props.major}.{props.minor}",
                   "copy_bandwidth_bytes_per_s": bandwidth},
        "msdacore": {"version": msdacore.__version__, "build_info": msdacore.build_info()},
        "torch": torch.__version__,
        "settings": {"repeats": repeats, "warmup": warmup, "seed": seed,
                     "configs": list(configs), "dtypes": list(dtypes),
                     "timing": "CUDA events around each call, median"},
        "results": [],
    }
    say(f"msdacore {msdacore.__version__} bench --device cuda, {results['date']}")
    say(f"device  : {props.name} (sm_{props.major}{props.minor}, {props.multi_processor_count} "
        f"SMs, L2 {l2 >> 20} MB), torch {torch.__version__}")
    say(f"copy bw : {bandwidth / 1e9:.0f} GB/s (device-to-device, read + write)")
    say(f"timing  : median of {repeats} calls after {warmup} warm-up, CUDA events; "
        "ratio = grid_sample / msdacore; GB/s = fewest bytes / time")
    header = (f"{'config':<12}{'dtype':<9}{'pass':<17}{'msdacore ms':>12}{'grid_sample ms':>15}"
              f"{'ratio':>8}{'GB/s':>8}{'% copy':>8}")
    say()
    say(header)
    for name in configs:
        cfg = CONFIGS[name]
        for dtype_name in dtypes:
            sets = _gpu_sets(torch, cfg, dtype_name, seed, l2)
            row = _bench_one(torch, cfg, dtype_name, sets, repeats, warmup, grid_sample)
            itemsize = sets[0]["value"].element_size()
            nbytes = _min_bytes(cfg, itemsize)
            row["input_sets"] = len(sets)
            row["min_bytes"] = nbytes
            row["ratios"] = {}
            for key in PASSES:
                ours = row["msdacore"][key]["median_s"]
                gs = row["grid_sample"][key]["median_s"] if row["grid_sample"] else None
                ratio = gs / ours if gs else None
                gbs = nbytes[key] / ours
                row["ratios"][key] = ratio
                row["msdacore"][key]["bytes_per_s"] = gbs
                row["msdacore"][key]["share_of_copy_bandwidth"] = gbs / bandwidth
                say(f"{name:<12}{dtype_name:<9}{PASS_LABELS[key]:<17}{ours * 1e3:>12.3f}"
                    f"{_fmt(gs * 1e3 if gs else None, '.3f'):>15}{_fmt(ratio, '.1f'):>8}"
                    f"{gbs / 1e9:>8.0f}{100 * gbs / bandwidth:>7.0f}%")
            if "check_output_vs_grid_sample" in row:
                say(f"{'':<12}{'':<9}check: output vs grid_sample, max|a-b|/max|b| = "
                    f"{row['check_output_vs_grid_sample']:.2e}")
            results["results"].append(row)
            del sets
            torch.cuda.empty_cache()
    return results


# ----------------------------------------------------------------------------- CLI

def add_cuda_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help=f"configuration (repeatable; default {', '.join(CUDA_CONFIGS)})")
    p.add_argument("--dtype", action="append", choices=["float32", "float64", "float16",
                                                        "bfloat16"],
                   help=f"dtype (repeatable; default {', '.join(CUDA_DTYPES)})")
    p.add_argument("--repeats", type=int, default=None, help="timed calls (default 50)")
    p.add_argument("--warmup", type=int, default=5, help="untimed calls first (default 5)")
    p.add_argument("--no-grid-sample", action="store_true", help="skip the grid_sample baseline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--copy-bytes", type=int, default=1 << 30,
                   help="size of the copy that measures the copy bandwidth (default 1 GiB)")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")


def cmd_bench_cuda(args) -> int:
    """Runs the GPU benchmark from parsed arguments (those of add_cuda_arguments, or the
    CPU bench's: config, dtype, repeats, warmup, no_grid_sample, seed, json)."""
    reason = cuda_unavailable_reason()
    if reason is not None:
        print(f"bench --device cuda: {reason}", file=sys.stderr)
        return 2
    configs = list(dict.fromkeys(getattr(args, "config", None) or CUDA_CONFIGS))
    dtypes = list(dict.fromkeys(getattr(args, "dtype", None) or CUDA_DTYPES))
    repeats = getattr(args, "repeats", None) or 50
    argv = getattr(args, "argv", None)
    results = run_cuda_bench(configs, dtypes, repeats=repeats,
                             warmup=getattr(args, "warmup", 5),
                             grid_sample=not getattr(args, "no_grid_sample", False),
                             seed=getattr(args, "seed", 0),
                             copy_bytes=getattr(args, "copy_bytes", None) or (1 << 30),
                             command_line=" ".join(argv) if argv else None)
    path = getattr(args, "json", None)
    if path:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"results written to {path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msdacore.bench_cuda",
                                     description=(__doc__ or "").split("\n\n")[0])
    add_cuda_arguments(parser)
    args = parser.parse_args(argv)
    args.argv = ["python", "-m", "msdacore.bench_cuda"] + list(argv if argv is not None
                                                              else sys.argv[1:])
    return cmd_bench_cuda(args)


if __name__ == "__main__":
    sys.exit(main())
