"""Benchmarks: ``python -m msdacore bench``.

Times msdacore against the grid_sample composition (msdacore.grid_sample) on the
SPEC benchmark configurations, in the same process, on the same inputs and with the
same thread count for both (msdacore.set_num_threads and torch.set_num_threads):

- for every configuration, dtype and thread count, forward and forward+backward
  (forward then backward with a fixed grad_output; for grid_sample, a forward through
  autograd then torch.autograd.grad);
- each measurement: ``warmup`` untimed calls, then up to ``repeats`` timed calls
  (stopping early once ``max_seconds`` of timed calls are in and at least two were
  made), reporting the median; ratio = grid_sample median / msdacore median;
- peak memory of one extra, untimed call: the increase of the process's resident set
  over the call (high-water mark VmHWM, reset through /proc/self/clear_refs, minus the
  resident set before the call, after freed heap memory was returned to the system).
  It includes the call's outputs. None where /proc does not offer this (not Linux).

Absolute times on a shared machine drift from run to run; the ratios, measured side by
side, are the stable quantity (SPEC "Benchmark configurations").

The helpers here (time_call, machine_info, build_problem, time_msdacore,
time_grid_sample, ...) are also used by ``python -m msdacore demo``.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import datetime
import gc
import json
import os
import platform
import shlex
import statistics
import sys
import time

import numpy as np

from .configs import CONFIGS, make_inputs

__all__ = ["time_call", "machine_info", "build_problem", "time_msdacore", "time_grid_sample",
           "PeakMemory", "run_bench", "add_arguments", "cmd_bench", "SCHEMA"]

SCHEMA = 1  # version of the JSON layout written by --json

DTYPES = {"float32": np.float32, "float64": np.float64}
OP_KEYS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
           "attention_weights")
PASSES = ("forward", "forward_backward")
PASS_LABELS = {"forward": "forward", "forward_backward": "forward+backward"}


# ----------------------------------------------------------------------------- timing

def time_call(fn, repeats: int, warmup: int = 1, max_seconds: float | None = None,
              min_seconds: float = 0.0, max_runs: int = 100):
    """Calls fn() warmup times, then times repeats calls of it.

    With max_seconds, stops early once the timed calls add up to max_seconds and at
    least min(2, repeats) calls were made. With min_seconds, goes on past repeats
    while the timed calls add up to less than min_seconds (up to max_runs calls), so
    that fast calls get a stable median. Returns (median seconds, list of seconds,
    result of the last call).
    """
    result = None
    for _ in range(max(warmup, 0)):
        result = fn()
    repeats = max(int(repeats), 1)
    times = []
    while True:
        result = None  # drop the previous result before the next call
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
        total = sum(times)
        if (max_seconds is not None and len(times) >= min(2, repeats)
                and total >= max_seconds):
            break
        if len(times) >= repeats and (total >= min_seconds or len(times) >= max_runs):
            break
    return statistics.median(times), times, result


# ----------------------------------------------------------------------------- memory

def _read_status_kb(keys) -> dict:
    out = {}
    with open("/proc/self/status", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in keys:
                out[key] = int(rest.split()[0])
    return out


class PeakMemory:
    """Peak resident-set increase of one call, on Linux.

    measure(fn) frees what it can first (gc, then malloc_trim so that memory freed by
    earlier calls is not silently reused), reads VmRSS, resets the high-water mark by
    writing "5" to /proc/self/clear_refs, calls fn, then reads VmHWM. The difference is
    the most memory the call held at any moment beyond what was resident before it,
    outputs included, at page granularity. ``available`` is False where the kernel
    offers no resettable high-water mark; measure then returns (None, result).
    """

    method = "VmHWM - VmRSS before the call; VmHWM reset via /proc/self/clear_refs"

    def __init__(self):
        self._trim = None
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            trim = libc.malloc_trim
            trim.argtypes = [ctypes.c_size_t]
            trim.restype = ctypes.c_int
            self._trim = trim
        except (OSError, AttributeError, TypeError):
            self._trim = None
        self.available = self._probe()

    def _reset(self):
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")

    def _probe(self) -> bool:
        try:
            self._reset()
            kb = _read_status_kb(("VmHWM", "VmRSS"))
        except (OSError, ValueError, IndexError):
            return False
        return "VmHWM" in kb and "VmRSS" in kb

    def _release(self):
        gc.collect()
        if self._trim is not None:
            self._trim(0)

    def measure(self, fn):
        """Returns (peak increase in bytes or None, fn's result)."""
        if not self.available:
            return None, fn()
        self._release()
        try:
            before = _read_status_kb(("VmRSS",))["VmRSS"]
            self._reset()
        except (OSError, KeyError, ValueError, IndexError):
            return None, fn()
        result = fn()
        try:
            peak = _read_status_kb(("VmHWM",))["VmHWM"]
        except (OSError, KeyError, ValueError, IndexError):
            return None, result
        return max(peak - before, 0) * 1024, result


# ----------------------------------------------------------------------------- machine

def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else platform.processor(), else 'unknown'."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def cpu_caches() -> str | None:
    """Cache sizes of cpu0, e.g. 'L1d 48K, L1i 32K, L2 1024K, L3 32768K' (Linux sysfs)."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    parts = []
    try:
        for entry in sorted(os.listdir(base)):
            if not entry.startswith("index"):
                continue
            d = os.path.join(base, entry)

            def read(name, d=d):
                with open(os.path.join(d, name), encoding="ascii") as f:
                    return f.read().strip()

            level, kind, size = read("level"), read("type"), read("size")
            suffix = {"Data": "d", "Instruction": "i"}.get(kind, "")
            parts.append(f"L{level}{suffix} {size}")
    except OSError:
        return None
    return ", ".join(parts) or None


def machine_info() -> dict:
    """cpu model, logical cores and cores usable by this process, system, versions."""
    cores = os.cpu_count() or 1
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = cores
    return {"cpu": cpu_model(), "cores": cores, "usable_cores": usable,
            "caches": cpu_caches(),
            "system": f"{platform.system()} {platform.machine()}",
            "python": platform.python_version(), "numpy": np.__version__}


def load_average():
    """1, 5 and 15 minute load averages, or None."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def try_import_torch():
    """torch, or None when it is not importable."""
    try:
        import torch
    except ImportError:
        return None
    return torch


# ----------------------------------------------------------------------------- problems

def build_problem(cfg, dtype: str, seed: int):
    """Realistic inputs for cfg (see configs.make_inputs) and a standard normal
    grad_output (N, Lq, M*D) of the same dtype, both deterministic for seed."""
    inputs = make_inputs(cfg, dtype=DTYPES[dtype], seed=seed)
    rng = np.random.default_rng(seed + 1)
    grad_output = rng.standard_normal(cfg.output_shape).astype(DTYPES[dtype])
    return inputs, grad_output


def problem_sizes(cfg, dtype: str) -> dict:
    """Sizes of the problem, in elements and bytes, for context."""
    item = np.dtype(DTYPES[dtype]).itemsize
    n_value = cfg.N * cfg.S * cfg.M * cfg.D
    n_samples = cfg.N * cfg.Lq * cfg.M * cfg.L * cfg.P
    n_out = cfg.N * cfg.Lq * cfg.M * cfg.D
    return {
        "N": cfg.N, "S": cfg.S, "M": cfg.M, "D": cfg.D, "L": cfg.L, "P": cfg.P, "Lq": cfg.Lq,
        "align_corners": cfg.align_corners,
        "samples": n_samples,
        # value + sampling_locations + attention_weights (the index arrays are tiny)
        "input_bytes": (n_value + 3 * n_samples) * item,
        "output_bytes": n_out * item,
        "grad_output_bytes": n_out * item,
        # grad_value + grad_sampling_locations + grad_attention_weights
        "grads_bytes": (n_value + 3 * n_samples) * item,
    }


def rel_error(a, ref) -> float:
    """max|a - ref| / max|ref| (absolute error when ref is all zeros)."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(a - ref))) / (scale if scale > 0 else 1.0)


# ----------------------------------------------------------------------------- callables

def msdacore_calls(inputs: dict, grad_output, align_corners: bool) -> dict:
    """{"forward": fn, "forward_backward": fn} calling msdacore on NumPy inputs.

    forward_backward returns (output, (grad_value, grad_locations, grad_weights))."""
    import msdacore

    args = [inputs[k] for k in OP_KEYS]

    def forward():
        return msdacore.ms_deform_attn(*args, align_corners=align_corners)

    def forward_backward():
        out = msdacore.ms_deform_attn(*args, align_corners=align_corners)
        grads = msdacore.ms_deform_attn_backward(*args, grad_output, align_corners=align_corners)
        return out, grads

    return {"forward": forward, "forward_backward": forward_backward}


def grid_sample_calls(torch, inputs: dict, grad_output, align_corners: bool) -> dict:
    """{"forward": fn, "forward_backward": fn} calling the grid_sample composition on
    torch tensors sharing the NumPy inputs' memory. forward runs under no_grad;
    forward_backward runs autograd and returns the three input gradients."""
    from .grid_sample import ms_deform_attn_grid_sample

    shapes = [tuple(int(x) for x in row) for row in inputs["spatial_shapes"]]
    value = torch.from_numpy(inputs["value"])
    locs = torch.from_numpy(inputs["sampling_locations"])
    weights = torch.from_numpy(inputs["attention_weights"])
    g = torch.from_numpy(np.ascontiguousarray(grad_output))
    leaves = [t.detach().requires_grad_() for t in (value, locs, weights)]

    def forward():
        with torch.no_grad():
            return ms_deform_attn_grid_sample(value, shapes, locs, weights, align_corners)

    def forward_backward():
        out = ms_deform_attn_grid_sample(leaves[0], shapes, leaves[1], leaves[2], align_corners)
        return torch.autograd.grad(out, leaves, g)

    return {"forward": forward, "forward_backward": forward_backward}


def time_msdacore(inputs: dict, grad_output, align_corners: bool, repeats: int) -> dict:
    """Times msdacore forward and forward+backward on NumPy inputs (one warm-up each).

    Returns {"forward": s, "forward_backward": s, "output": array, "grads": tuple}."""
    calls = msdacore_calls(inputs, grad_output, align_corners)
    t_fwd, _, output = time_call(calls["forward"], repeats)
    t_fb, _, (_, grads) = time_call(calls["forward_backward"], repeats)
    return {"forward": t_fwd, "forward_backward": t_fb, "output": output, "grads": grads}


def time_grid_sample(torch, inputs: dict, grad_output, align_corners: bool, repeats: int) -> dict:
    """Times the grid_sample composition: forward under no_grad, forward+backward
    through autograd with the same grad_output. Returns seconds and the output."""
    calls = grid_sample_calls(torch, inputs, grad_output, align_corners)
    t_fwd, _, output = time_call(calls["forward"], repeats)
    t_fb, _, _ = time_call(calls["forward_backward"], repeats)
    return {"forward": t_fwd, "forward_backward": t_fb, "output": output.numpy()}


# ----------------------------------------------------------------------------- the run

def _measure(fn, settings: dict, repeats: int, memory: PeakMemory | None) -> tuple:
    """One measurement: warm-up, timed runs, then (optionally) one memory call.

    Returns ({"median_s", "min_s", "times_s", "runs", "peak_rss_bytes"}, result)."""
    median, times, result = time_call(fn, repeats, warmup=settings["warmup"],
                                      max_seconds=settings["max_seconds"],
                                      min_seconds=settings["min_seconds"])
    peak = None
    if memory is not None:
        result = None
        peak, result = memory.measure(fn)
    return {"median_s": median, "min_s": min(times), "times_s": times, "runs": len(times),
            "peak_rss_bytes": peak}, result


def _grid_sample_diffs(ours_out, ours_grads, gs_out, gs_grads) -> dict:
    """max|msdacore - grid_sample| / max|grid_sample| for output and gradients."""
    diffs = {"output": rel_error(ours_out, gs_out.numpy())}
    for name, a, b in zip(("grad_value", "grad_sampling_locations", "grad_attention_weights"),
                          ours_grads, gs_grads):
        diffs[name] = rel_error(a, b.numpy())
    return diffs


def _fmt_ms(seconds) -> str:
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def _fmt_mb(nbytes) -> str:
    return "-" if nbytes is None else f"{nbytes / 2**20:.1f}"


def _fmt_ratio(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.1f}x"


_TABLE = (("config", 11, "<"), ("dtype", 7, "<"), ("thr", 3, ">"), ("pass", 16, "<"),
          ("msdacore ms", 11, ">"), ("grid_sample ms", 14, ">"), ("ratio", 8, ">"),
          ("msdacore MB", 11, ">"), ("grid_sample MB", 14, ">"))


def _table_line(cells) -> str:
    return " ".join(f"{str(c):{align}{width}}" for c, (_, width, align) in zip(cells, _TABLE))


def table_header() -> str:
    return _table_line([name for name, _, _ in _TABLE])


def table_rows(row: dict) -> list:
    """Table lines (one per pass) of one result row."""
    lines = []
    for key in PASSES:
        ours = row["msdacore"][key]
        gs = row["grid_sample"][key] if row["grid_sample"] else None
        lines.append(_table_line([
            row["config"], row["dtype"], row["threads"], PASS_LABELS[key],
            _fmt_ms(ours["median_s"]), _fmt_ms(gs["median_s"] if gs else None),
            _fmt_ratio(row["ratios"][key]),
            _fmt_mb(ours["peak_rss_bytes"]), _fmt_mb(gs["peak_rss_bytes"] if gs else None)]))
    return lines


def run_bench(configs, dtypes, threads, *, repeats=5, gs_repeats=3, warmup=1, max_seconds=10.0,
              min_seconds=0.5, memory=True, grid_sample=True, seed=0, command_line=None,
              out=sys.stdout) -> dict:
    """Runs the benchmark; prints progress and the table to out; returns the results.

    configs: names in CONFIGS (GPU-only ones are skipped); dtypes: "float32"/"float64";
    threads: thread counts (each applied to msdacore and torch). grid_sample is timed
    when torch is importable and grid_sample is True. command_line is recorded as is.
    """
    import msdacore

    def say(text=""):
        if out is not None:
            print(text, file=out, flush=True)

    t_start = time.perf_counter()
    torch = try_import_torch() if grid_sample else None
    probe = PeakMemory() if memory else None
    mem = probe if probe is not None and probe.available else None
    settings = {"repeats": repeats, "grid_sample_repeats": gs_repeats, "warmup": warmup,
                "max_seconds": max_seconds, "min_seconds": min_seconds, "seed": seed,
                "memory": mem is not None,
                "memory_method": PeakMemory.method if mem is not None else None,
                "configs": list(configs), "dtypes": list(dtypes), "threads": list(threads)}
    build = msdacore.build_info()
    mach = machine_info()
    mach["loadavg_start"] = load_average()
    results = {
        "schema": SCHEMA,
        "command": "bench",
        "command_line": command_line,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": mach,
        "msdacore": {"version": getattr(msdacore, "__version__", None), "build_info": build},
        "torch": torch.__version__ if torch is not None else None,
        "settings": settings,
        "results": [],
        "skipped": [],
    }

    say(f"msdacore {results['msdacore']['version']} bench, {results['date']}")
    say(f"machine : {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable)"
        + (f", caches {mach['caches']}" if mach["caches"] else "")
        + f", {mach['system']}, load {mach['loadavg_start']}")
    say(f"build   : cpu_isa {build.get('cpu_isa', '?')}, openmp {build.get('openmp', '?')}, "
        f"compiler {build.get('compiler', '?')}")
    if torch is not None:
        say(f"compare : grid_sample composition, torch {torch.__version__}")
    elif grid_sample:
        say("compare : torch not importable, grid_sample comparison skipped")
    else:
        say("compare : grid_sample comparison disabled (--no-grid-sample)")
    say(f"timing  : median of {repeats} msdacore / {gs_repeats} grid_sample runs after {warmup} "
        f"warm-up (more while under {min_seconds:g} s; fewer past {max_seconds:g} s once 2 "
        "are in); ratio = grid_sample / msdacore")
    say("memory  : " + ("peak resident-set increase over one extra call, outputs included (MB)"
                        if mem is not None else "not measured" + (
                            "" if not memory else " (no resettable VmHWM on this system)")))

    msd_threads0 = msdacore.get_num_threads()
    torch_threads0 = torch.get_num_threads() if torch is not None else None
    try:
        for name in configs:
            cfg = CONFIGS[name]
            if cfg.gpu:
                results["skipped"].append({"config": name, "reason": "GPU-only configuration"})
                say()
                say(f"config  : {name} skipped (GPU-only configuration)")
                continue
            for dtype in dtypes:
                say()
                say(f"config  : {cfg.describe()}, {dtype}")
                sizes = problem_sizes(cfg, dtype)
                say(f"sizes   : {sizes['samples']} samples; inputs {_fmt_mb(sizes['input_bytes'])}"
                    f" MB, output {_fmt_mb(sizes['output_bytes'])} MB, gradients "
                    f"{_fmt_mb(sizes['grads_bytes'])} MB")
                inputs, grad_output = build_problem(cfg, dtype, seed)
                ours_calls = msdacore_calls(inputs, grad_output, cfg.align_corners)
                gs_calls = (grid_sample_calls(torch, inputs, grad_output, cfg.align_corners)
                            if torch is not None else None)
                say(table_header())
                for nthreads in threads:
                    msdacore.set_num_threads(nthreads)
                    if torch is not None:
                        torch.set_num_threads(nthreads)
                    row = {"config": name, "dtype": dtype, "threads": nthreads,
                           "threads_msdacore": msdacore.get_num_threads(),
                           "threads_torch": torch.get_num_threads() if torch is not None else None,
                           "sizes": sizes, "msdacore": {}, "grid_sample": None,
                           "ratios": {k: None for k in PASSES}, "grid_sample_rel_diff": None}
                    kept = {}
                    for key in PASSES:
                        row["msdacore"][key], kept[key] = _measure(ours_calls[key], settings,
                                                                   repeats, mem)
                    if gs_calls is not None:
                        row["grid_sample"] = {}
                        gs_kept = {}
                        for key in PASSES:
                            row["grid_sample"][key], gs_kept[key] = _measure(
                                gs_calls[key], settings, gs_repeats, mem)
                            ours_t = row["msdacore"][key]["median_s"]
                            row["ratios"][key] = (row["grid_sample"][key]["median_s"] / ours_t
                                                  if ours_t > 0 else None)
                        row["grid_sample_rel_diff"] = _grid_sample_diffs(
                            kept["forward"], kept["forward_backward"][1],
                            gs_kept["forward"], gs_kept["forward_backward"])
                        del gs_kept
                    del kept
                    for line in table_rows(row):
                        say(line)
                    diffs = row["grid_sample_rel_diff"]
                    if diffs and max(diffs.values()) > (1e-3 if dtype == "float32" else 1e-9):
                        say(f"warning : msdacore and grid_sample differ: {diffs}")
                    results["results"].append(row)
                del inputs, grad_output, ours_calls, gs_calls
                gc.collect()
    finally:
        msdacore.set_num_threads(msd_threads0)
        if torch is not None:
            torch.set_num_threads(torch_threads0)

    mach["loadavg_end"] = load_average()
    results["total_s"] = time.perf_counter() - t_start
    say()
    say(f"summary (load {mach['loadavg_end']} at the end, {results['total_s']:.0f} s in all)")
    say(table_header())
    for row in results["results"]:
        for line in table_rows(row):
            say(line)
    return results


# ----------------------------------------------------------------------------- command line

def _int_at_least(low: int):
    """argparse type: an int >= low."""
    def parse(text: str) -> int:
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if n < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {n}")
        return n
    return parse


def _positive_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not x > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return x


def _non_negative_float(text: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not x >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return x


DEFAULT_THREADS = (1, 2)
QUICK = {"repeats": 3, "gs_repeats": 1, "max_seconds": 2.0, "min_seconds": 0.1}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of the bench command."""
    cpu = [n for n, c in CONFIGS.items() if not c.gpu]
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help=f"repeatable; default: the CPU configurations ({', '.join(cpu)})")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                   help="cpu (default), or cuda: the GPU benchmark (msdacore.bench_cuda)")
    p.add_argument("--dtype", action="append",
                   choices=sorted(DTYPES) + ["bfloat16", "float16"],
                   help="repeatable; default: float32 and float64 on the CPU, float32, "
                        "float16 and bfloat16 on CUDA (half types: CUDA only)")
    p.add_argument("--threads", action="append", type=_int_at_least(1),
                   help="thread count for msdacore and torch, repeatable; default: "
                        + " and ".join(map(str, DEFAULT_THREADS)))
    p.add_argument("--repeats", type=_int_at_least(1), default=None,
                   help="timed msdacore runs per measurement (default 5)")
    p.add_argument("--gs-repeats", type=_int_at_least(1), default=None,
                   help="timed grid_sample runs per measurement (default 3)")
    p.add_argument("--warmup", type=_int_at_least(0), default=1,
                   help="untimed calls before each measurement (default 1)")
    p.add_argument("--max-seconds", type=_positive_float, default=None,
                   help="stop a measurement's timed runs once they add up to this many "
                        "seconds and two were made (default 10)")
    p.add_argument("--min-seconds", type=_non_negative_float, default=None,
                   help="go on past --repeats (up to 100 runs) while a measurement's timed "
                        "runs add up to less than this (default 0.5; 0: exactly --repeats)")
    p.add_argument("--quick", action="store_true",
                   help=f"short run: --repeats {QUICK['repeats']} --gs-repeats "
                        f"{QUICK['gs_repeats']} --max-seconds {QUICK['max_seconds']:g} "
                        f"--min-seconds {QUICK['min_seconds']:g} unless given")
    p.add_argument("--no-memory", action="store_true",
                   help="skip the peak-memory calls")
    p.add_argument("--no-grid-sample", action="store_true",
                   help="skip the grid_sample comparison even when torch is available")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")


def _unique(items):
    seen = []
    for x in items:
        if x not in seen:
            seen.append(x)
    return seen


def cmd_bench(args) -> int:
    if args.device == "cuda":
        from .bench_cuda import cmd_bench_cuda
        return cmd_bench_cuda(args)
    half = [d for d in (args.dtype or []) if d not in DTYPES]
    if half:
        print(f"bench: {', '.join(half)} run on CUDA only (--device cuda)", file=sys.stderr)
        return 2
    defaults = {"repeats": 5, "gs_repeats": 3, "max_seconds": 10.0, "min_seconds": 0.5}
    if args.quick:
        defaults.update(QUICK)
    opts = {k: getattr(args, k) if getattr(args, k) is not None else v
            for k, v in defaults.items()}
    configs = _unique(args.config or [n for n, c in CONFIGS.items() if not c.gpu])
    argv = getattr(args, "argv", None)
    command_line = ("python -m msdacore " + " ".join(shlex.quote(a) for a in argv)
                    if argv is not None else None)
    results = run_bench(configs, _unique(args.dtype or ["float32", "float64"]),
                        _unique(args.threads or DEFAULT_THREADS), warmup=args.warmup,
                        memory=not args.no_memory, grid_sample=not args.no_grid_sample,
                        seed=args.seed, command_line=command_line, **opts)
    if args.json:
        directory = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(directory, exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
            f.write("\n")
        print(f"results written to {args.json}")
    return 0
