"""The CPU benchmark (``python -m msdacore bench``) and the demo's timings.

For every configuration, dtype and thread count: forward and forward+backward (forward
then backward with a fixed grad_output; for grid_sample, a forward through autograd then
torch.autograd.grad), each measured as ``warmup`` untimed calls, then up to ``repeats``
timed calls (see timing.time_call), the median reported; ratio = grid_sample median /
msdacore median; and the peak memory of one extra, untimed call (memory.PeakMemory).
"""

from __future__ import annotations

import gc
import sys
import time

from ..configs import CONFIGS
from .constants import (
    DIFF_WARNING,
    GS_REPEATS,
    MAX_SECONDS,
    MIN_SECONDS,
    PASS_LABELS,
    PASSES,
    REPEATS,
    WARMUP,
)
from .memory import PeakMemory
from .problems import (
    build_problem,
    grid_sample_calls,
    msdacore_calls,
    problem_sizes,
    rel_error,
    try_import_torch,
)
from .report import fmt_mb, fmt_ms, fmt_ratio, load_average, machine_info, printer, results_envelope
from .timing import summary, time_call

__all__ = ["run_bench", "time_passes", "demo_timings", "table_header", "table_rows"]


# ----------------------------------------------------------------------------- measuring

def time_passes(calls: dict, repeats: int, warmup: int = WARMUP) -> dict:
    """Times calls["forward"] and calls["forward_backward"] (see problems.msdacore_calls)
    repeats times each after warmup calls. Returns {pass: median seconds} plus
    "results": {pass: the last call's result}."""
    out = {"results": {}}
    for key in PASSES:
        out[key], _, out["results"][key] = time_call(calls[key], repeats, warmup=warmup)
    return out


def _measure(fn, settings: dict, repeats: int, memory: PeakMemory | None) -> tuple:
    """One measurement: warm-up, timed runs, then (optionally) one memory call.

    Returns ({"median_s", "min_s", "times_s", "runs", "peak_rss_bytes"}, result)."""
    _, times, result = time_call(fn, repeats, warmup=settings["warmup"],
                                 max_seconds=settings["max_seconds"],
                                 min_seconds=settings["min_seconds"])
    peak = None
    if memory is not None:
        result = None
        peak, result = memory.measure(fn)
    return {**summary(times), "peak_rss_bytes": peak}, result


def _grid_sample_diffs(ours: dict, theirs: dict) -> dict:
    """max|msdacore - grid_sample| / max|grid_sample| of the output and the gradients,
    from the results of the two passes of each."""
    diffs = {"output": rel_error(ours["forward"], theirs["forward"].numpy())}
    for name, a, b in zip(("grad_value", "grad_sampling_locations", "grad_attention_weights"),
                          ours["forward_backward"][1], theirs["forward_backward"]):
        diffs[name] = rel_error(a, b.numpy())
    return diffs


# ----------------------------------------------------------------------------- tables

_TABLE = (("config", 11, "<"), ("dtype", 7, "<"), ("thr", 3, ">"), ("pass", 16, "<"),
          ("msdacore ms", 11, ">"), ("grid_sample ms", 14, ">"), ("ratio", 8, ">"),
          ("msdacore MB", 11, ">"), ("grid_sample MB", 14, ">"))


def _table_line(cells) -> str:
    return " ".join(f"{str(c):{align}{width}}" for c, (_, width, align) in zip(cells, _TABLE))


def table_header() -> str:
    """The header line of the bench table."""
    return _table_line([name for name, _, _ in _TABLE])


def table_rows(row: dict) -> list:
    """Table lines (one per pass) of one result row of run_bench."""
    lines = []
    for key in PASSES:
        ours = row["msdacore"][key]
        gs = row["grid_sample"][key] if row["grid_sample"] else None
        lines.append(_table_line([
            row["config"], row["dtype"], row["threads"], PASS_LABELS[key],
            fmt_ms(ours["median_s"]), fmt_ms(gs["median_s"] if gs else None),
            fmt_ratio(row["ratios"][key]),
            fmt_mb(ours["peak_rss_bytes"]), fmt_mb(gs["peak_rss_bytes"] if gs else None)]))
    return lines


# ----------------------------------------------------------------------------- demo

def demo_timings(inputs: dict, grad_output, align_corners: bool, repeats: int,
                 gs_repeats: int, torch) -> tuple:
    """The demo's timings: msdacore forward and forward+backward (repeats runs each after
    one warm-up) and, when torch is not None, the grid_sample composition (gs_repeats
    runs); prints the table. Returns (ours, gs, ratios): ours and gs as time_passes
    gives them (gs None without torch), ratios {pass: grid_sample / msdacore or None}."""
    ours = time_passes(msdacore_calls(inputs, grad_output, align_corners), repeats)
    gs = (time_passes(grid_sample_calls(torch, inputs, grad_output, align_corners), gs_repeats)
          if torch is not None else None)
    print(f"timings (ms; median of {repeats} msdacore runs"
          + (f", {gs_repeats} grid_sample runs" if gs else "") + ", after one warm-up)")
    print(f"  {'':<18}{'msdacore':>12}{'grid_sample':>14}{'ratio':>10}")
    ratios = {}
    for key in PASSES:
        other = gs[key] if gs else None
        ratios[key] = other / ours[key] if gs and ours[key] > 0 else None
        print(f"  {PASS_LABELS[key]:<18}{fmt_ms(ours[key]):>12}{fmt_ms(other):>14}"
              f"{fmt_ratio(ratios[key]):>10}")
    if gs:
        print("  ratio = grid_sample time / msdacore time (higher: msdacore faster)")
    return ours, gs, ratios


# ----------------------------------------------------------------------------- the run

def run_bench(configs, dtypes, threads, *, repeats=REPEATS, gs_repeats=GS_REPEATS,
              warmup=WARMUP, max_seconds=MAX_SECONDS, min_seconds=MIN_SECONDS, memory=True,
              grid_sample=True, seed=0, command_line=None, out=sys.stdout) -> dict:
    """Runs the CPU benchmark; prints progress and the table to out (None: silent);
    returns the results as a JSON-able dict (the layout of ``bench --json``).

    configs: names in CONFIGS (GPU-only ones are skipped); dtypes: "float32"/"float64";
    threads: thread counts (each applied to msdacore and torch). grid_sample is timed
    when torch is importable and grid_sample is True. command_line is recorded as is.
    """
    import msdacore

    say = printer(out)
    t_start = time.perf_counter()
    torch = try_import_torch() if grid_sample else None
    probe = PeakMemory() if memory else None
    mem = probe if probe is not None and probe.available else None
    settings = {"repeats": repeats, "grid_sample_repeats": gs_repeats, "warmup": warmup,
                "max_seconds": max_seconds, "min_seconds": min_seconds, "seed": seed,
                "memory": mem is not None,
                "memory_method": PeakMemory.method if mem is not None else None,
                "configs": list(configs), "dtypes": list(dtypes), "threads": list(threads)}
    mach = machine_info()
    mach["loadavg_start"] = load_average()
    results = results_envelope("bench", command_line,
                               torch.__version__ if torch is not None else None, machine=mach)
    results.update({"settings": settings, "results": [], "skipped": []})
    build = results["msdacore"]["build_info"]

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
                say(f"sizes   : {sizes['samples']} samples; inputs {fmt_mb(sizes['input_bytes'])}"
                    f" MB, output {fmt_mb(sizes['output_bytes'])} MB, gradients "
                    f"{fmt_mb(sizes['grads_bytes'])} MB")
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
                        row["grid_sample_rel_diff"] = _grid_sample_diffs(kept, gs_kept)
                        del gs_kept
                    del kept
                    for line in table_rows(row):
                        say(line)
                    diffs = row["grid_sample_rel_diff"]
                    if diffs and max(diffs.values()) > DIFF_WARNING[dtype]:
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
