"""Command line: ``python -m msdacore {info,demo,bench}``.

info   build information, one key per line.
demo   one benchmark configuration on realistic inputs: times msdacore forward and
       forward+backward, checks a sample of queries against the float64 NumPy
       reference, and (when torch is importable) times the grid_sample composition
       on the same inputs and prints the ratios. Exits non-zero if a check fails.
bench  msdacore against the grid_sample composition on the benchmark configurations:
       forward and forward+backward, float32/float64, 1 and 2 threads, medians,
       ratios and peak memory (--device cuda: the GPU benchmark); see msdacore.bench.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

from . import bench
from .bench import constants
from .bench.command import add_arguments, bounded, cmd_bench
from .bench.cpu import demo_timings
from .bench.problems import NUMPY_DTYPES, OP_KEYS, build_problem, rel_error, try_import_torch
from .bench.report import machine_info, write_json
from .configs import CONFIGS

# docs/conventions.md, "Numerics": max|a-b| / max|ref| against a float64 reference.
TOLERANCES = {"float32": 5e-5, "float64": 1e-12}


# ----------------------------------------------------------------------------- checks

def sample_queries(Lq: int, k: int, seed: int) -> np.ndarray:
    """k distinct query indices in [0, Lq), sorted (all of them when k >= Lq)."""
    if k >= Lq:
        return np.arange(Lq)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(Lq, size=k, replace=False))


def _slice_queries(inputs: dict, idx) -> dict:
    """The problem restricted to queries idx (queries are independent)."""
    out = dict(inputs)
    out["sampling_locations"] = np.ascontiguousarray(inputs["sampling_locations"][:, idx])
    out["attention_weights"] = np.ascontiguousarray(inputs["attention_weights"][:, idx])
    return out


def check_queries(inputs: dict, grad_output, output, grads, idx, align_corners: bool) -> dict:
    """Compares msdacore on queries idx against the float64 reference.

    output, grads: msdacore results on the full problem. Forward rows and the
    per-query gradients are taken from them; grad_value (which mixes all queries)
    comes from msdacore backward on the sliced problem. Returns {quantity: error}.
    """
    import msdacore

    from . import reference

    sliced = _slice_queries(inputs, idx)
    g_sliced = np.ascontiguousarray(grad_output[:, idx])
    args = [sliced[k] for k in OP_KEYS]
    args64 = [a.astype(np.float64) if a.dtype.kind == "f" else a for a in args]

    ref_out = reference.ms_deform_attn(*args64, align_corners=align_corners)
    ref_gv, ref_gl, ref_ga = reference.ms_deform_attn_backward(
        *args64, g_sliced.astype(np.float64), align_corners=align_corners)
    gv_sliced, _, _ = msdacore.ms_deform_attn_backward(*args, g_sliced,
                                                       align_corners=align_corners)
    _, gl_full, ga_full = grads
    return {
        "output": rel_error(np.asarray(output)[:, idx], ref_out),
        "grad_value": rel_error(gv_sliced, ref_gv),
        "grad_sampling_locations": rel_error(np.asarray(gl_full)[:, idx], ref_gl),
        "grad_attention_weights": rel_error(np.asarray(ga_full)[:, idx], ref_ga),
    }


# ----------------------------------------------------------------------------- commands

def cmd_info(args) -> int:
    import msdacore

    info = msdacore.build_info()
    try:  # asked for: the one place `info` starts the CUDA driver
        info["cuda_devices"] = msdacore.cuda_device_count()
    except RuntimeError as error:  # a driver too old for this build: say so
        info["cuda_devices"] = f"error: {error}"
    width = max((len(str(k)) for k in info), default=0)
    for key, val in info.items():
        print(f"{str(key):<{width}} : {val}")
    return 0


def _setup_threads(threads, torch):
    """Sets msdacore (and torch) thread counts; returns the count in use."""
    import msdacore

    if threads is not None:
        msdacore.set_num_threads(threads)
    n = msdacore.get_num_threads()
    if torch is not None:
        torch.set_num_threads(n)
    return n


def _print_header(title: str, threads: int, torch) -> dict:
    import msdacore

    mach = machine_info()
    print(f"msdacore {getattr(msdacore, '__version__', '?')} {title}")
    print(f"machine : {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable), "
          f"{mach['system']}, Python {mach['python']}, NumPy {mach['numpy']}")
    if torch is not None:
        print(f"threads : {threads} (msdacore and torch {torch.__version__})")
    else:
        print(f"threads : {threads} (msdacore; torch not used)")
    mach["torch"] = torch.__version__ if torch is not None else None
    return mach


def _print_checks(errors: dict, tol: float, k: int) -> bool:
    print(f"check vs float64 reference on {k} sampled queries "
          f"(max|a-b|/max|ref|, tolerance {tol:g})")
    ok = True
    for name, err in errors.items():
        good = err <= tol
        ok = ok and good
        print(f"  {name:<26}{err:>12.3e}  {'ok' if good else 'FAIL'}")
    return ok


def _gs_repeats(args) -> int:
    return (args.gs_repeats if args.gs_repeats is not None
            else min(args.repeats, constants.DEMO_GS_REPEATS))


def _outside_fraction(locs) -> float:
    """Fraction of sample points with a coordinate outside [0, 1]."""
    outside = np.zeros(locs.shape[:-1], dtype=bool)
    for c in range(2):
        x = locs[..., c]
        outside |= (x < 0) | (x > 1)
    return float(outside.mean()) if outside.size else 0.0


def cmd_demo(args) -> int:
    torch = None if args.no_grid_sample else try_import_torch()
    threads = _setup_threads(args.threads, torch)
    cfg = CONFIGS[args.config]
    mach = _print_header("demo", threads, torch)
    print(f"config  : {cfg.describe()}")
    print(f"dtype   : {args.dtype}")

    t0 = time.perf_counter()
    inputs, grad_output = build_problem(cfg, args.dtype, args.seed)
    outside = _outside_fraction(inputs["sampling_locations"])
    print(f"inputs  : built in {time.perf_counter() - t0:.2f} s, seed {args.seed}; "
          f"{100 * outside:.2f}% of sample points outside [0, 1]")

    gs_repeats = _gs_repeats(args)
    if torch is None and not args.no_grid_sample:
        print("grid_sample: torch not importable, comparison skipped")
    ours, gs, ratios = demo_timings(inputs, grad_output, cfg.align_corners, args.repeats,
                                   gs_repeats, torch)
    output, (_, grads) = ours["results"]["forward"], ours["results"]["forward_backward"]

    results = {"command": "demo", "machine": mach, "threads": threads, "config": cfg.name,
               "dtype": args.dtype, "seed": args.seed, "repeats": args.repeats,
               "grid_sample_repeats": gs_repeats if gs else None,
               "msdacore_s": {k: ours[k] for k in ("forward", "forward_backward")},
               "grid_sample_s": {k: gs[k] for k in ("forward", "forward_backward")} if gs else None,
               "ratios": ratios}
    if gs:
        diff = rel_error(output, gs["results"]["forward"].numpy())
        results["grid_sample_forward_rel_diff"] = diff
        print(f"grid_sample vs msdacore forward, all queries: max|a-b|/max|b| = {diff:.3e}")

    ok = True
    if args.check_queries > 0 and cfg.Lq > 0 and cfg.N > 0:
        idx = sample_queries(cfg.Lq, args.check_queries, args.seed + 2)
        errors = check_queries(inputs, grad_output, output, grads, idx, cfg.align_corners)
        tol = TOLERANCES[args.dtype]
        ok = _print_checks(errors, tol, len(idx))
        results["checks"] = {"queries": len(idx), "tolerance": tol, "errors": errors, "ok": ok}
    print("result  : " + ("PASS" if ok else "FAIL"))
    results["ok"] = ok
    if args.json:
        write_json(results, args.json)
    return 0 if ok else 1


# ----------------------------------------------------------------------------- parser

def _add_common(p):
    p.add_argument("--dtype", choices=sorted(NUMPY_DTYPES), default="float32")
    p.add_argument("--threads", type=bounded(int, 1), default=None,
                   help="thread count for msdacore and torch (default: msdacore's default)")
    p.add_argument("--repeats", type=bounded(int, 1), default=constants.DEMO_REPEATS,
                   help="timed runs after one warm-up; the median is reported "
                        f"(default {constants.DEMO_REPEATS})")
    p.add_argument("--gs-repeats", type=bounded(int, 1), default=None,
                   help="timed runs of the grid_sample composition (default "
                        f"min(repeats, {constants.DEMO_GS_REPEATS}))")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-grid-sample", action="store_true",
                   help="skip the grid_sample comparison even when torch is available")
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m msdacore",
                                     description="multi-scale deformable attention")
    sub = parser.add_subparsers(dest="command", required=True)

    p_info = sub.add_parser("info", help="print build information")
    p_info.set_defaults(func=cmd_info)

    p_demo = sub.add_parser("demo", help="time and check one configuration",
                            description=f"configurations: {', '.join(CONFIGS)}")
    p_demo.add_argument("--config", default="detr-enc", choices=list(CONFIGS))
    p_demo.add_argument("--check-queries", type=bounded(int, 0), default=64,
                        help="queries checked against the float64 reference (0: none)")
    _add_common(p_demo)
    p_demo.set_defaults(func=cmd_demo)

    p_bench = sub.add_parser("bench", help="msdacore against grid_sample on the benchmark "
                             "configurations: times, ratios, peak memory",
                             description=(bench.__doc__ or "").split("\n\n")[0])
    add_arguments(p_bench)
    p_bench.set_defaults(func=cmd_bench)
    return parser


def main(argv=None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    args = build_parser().parse_args(argv)
    args.argv = list(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into e.g. head
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
