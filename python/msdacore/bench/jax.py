"""``python -m msdacore.bench.jax``: msdacore.jax.ms_deform_attn against the plain-JAX
bilinear gather composition (msdacore.jax.composition), both under jax.jit, in one run.

For each configuration and dtype: forward, and forward+backward (jax.vjp with a fixed
grad_output: the output and the three input gradients), each compiled once, then timed as
``warmup`` untimed calls and up to ``repeats`` timed calls (timing.time_call, each waiting
for its results); the median is reported, ratio = composition / msdacore. msdacore runs
with ``--threads`` CPU threads; XLA's CPU thread pool is set to the same count through
XLA_FLAGS before JAX starts (so this module sets it when run as a command)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from ..configs import CONFIGS, make_inputs
from .constants import PASS_LABELS, PASSES, SCHEMA
from .problems import rel_error
from .report import fmt_ms, fmt_ratio, load_average, machine_info, write_json
from .timing import time_call

__all__ = ["run_jax_bench", "main"]

JAX_CONFIGS = ("detr-enc", "small")
JAX_REPEATS = 5


def _calls(impl, inputs: dict, grad_output, align_corners: bool) -> dict:
    """{"forward": f(), "forward_backward": f()} for one implementation under jax.jit, each
    returning device results after waiting for them."""
    import jax

    shapes, starts = inputs["spatial_shapes"], inputs["level_start_index"]
    args = [jax.device_put(inputs[k]) for k in ("value", "sampling_locations",
                                                 "attention_weights")]
    g = jax.device_put(grad_output)

    def attention(v, lo, a):
        return impl(v, shapes, starts, lo, a, align_corners=align_corners)

    forward = jax.jit(attention)

    @jax.jit
    def forward_backward(v, lo, a, g):
        out, vjp = jax.vjp(attention, v, lo, a)
        return out, vjp(g)
    return {"forward": lambda: jax.block_until_ready(forward(*args)),
            "forward_backward": lambda: jax.block_until_ready(forward_backward(*args, g))}


def _run_rows(configs, dtypes, repeats: int, warmup: int, seed: int, out) -> list:
    """The measurements of run_jax_bench: one row per configuration, dtype and pass, each
    printed to out as it comes."""
    import jax
    import numpy as np

    from ..jax import ms_deform_attn
    from ..jax.composition import ms_deform_attn_composition

    rows = []
    print(f"{'config':<10} {'dtype':<8} {'pass':<17} {'msdacore':>10} {'JAX gather':>11} "
          f"{'ratio':>7}  max rel diff", file=out)
    for cfg in configs:
        cfg = CONFIGS[cfg] if isinstance(cfg, str) else cfg
        name = cfg.name
        for dtype in dtypes:
            inputs = make_inputs(cfg, np.dtype(dtype), seed=seed)
            rng = np.random.default_rng(seed + 1)
            grad_output = rng.standard_normal(
                (cfg.N, cfg.Lq, cfg.M * cfg.D)).astype(dtype)
            ours = _calls(ms_deform_attn, inputs, grad_output, cfg.align_corners)
            theirs = _calls(ms_deform_attn_composition, inputs, grad_output, cfg.align_corners)
            for key in PASSES:
                t_ours, times_ours, r_ours = time_call(ours[key], repeats, warmup=warmup)
                t_theirs, times_theirs, r_theirs = time_call(theirs[key], repeats,
                                                             warmup=warmup)
                flat_ours = jax.tree_util.tree_leaves(r_ours)
                flat_theirs = jax.tree_util.tree_leaves(r_theirs)
                diff = max(rel_error(a, b) for a, b in zip(flat_ours, flat_theirs))
                rows.append({"config": name, "dtype": dtype, "pass": key,
                             "msdacore_s": t_ours, "msdacore_times_s": times_ours,
                             "composition_s": t_theirs, "composition_times_s": times_theirs,
                             "ratio": t_theirs / t_ours, "max_rel_diff": diff})
                print(f"{name:<10} {dtype:<8} {PASS_LABELS[key]:<17} {fmt_ms(t_ours):>10} "
                      f"{fmt_ms(t_theirs):>11} {fmt_ratio(t_theirs / t_ours):>7}  {diff:.1e}",
                      file=out, flush=True)
    return rows


def run_jax_bench(configs=JAX_CONFIGS, dtypes=("float32",), *, threads: int = 2,
                  repeats: int = JAX_REPEATS, warmup: int = 1, seed: int = 0,
                  out=sys.stdout, command: str | None = None) -> dict:
    """Runs the comparison (configs: names in CONFIGS, or Config objects); prints a table to
    out and returns the results (a dict, "results": one row per config, dtype and pass)."""
    import jax

    import msdacore

    if "float64" in dtypes:
        jax.config.update("jax_enable_x64", True)
    previous_threads = msdacore.get_num_threads()
    msdacore.set_num_threads(threads)
    try:
        rows = _run_rows(configs, dtypes, repeats, warmup, seed, out)
    finally:
        msdacore.set_num_threads(previous_threads)
    return {"schema": SCHEMA, "command": "bench.jax", "command_line": command,
            "machine": machine_info(), "load_average": load_average(),
            "threads": threads, "jax": jax.__version__,
            "msdacore": {"version": msdacore.__version__, "build_info": msdacore.build_info()},
            "results": rows}


def _command_line(argv) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "python -m msdacore.bench.jax " + " ".join(shlex.quote(a) for a in args)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m msdacore.bench.jax", description=__doc__)
    p.add_argument("--config", action="append", choices=list(CONFIGS),
                   help=f"repeatable; default: {' and '.join(JAX_CONFIGS)}")
    p.add_argument("--dtype", action="append", choices=["float32", "float64"],
                   help="repeatable; default float32")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2)")
    p.add_argument("--repeats", type=int, default=JAX_REPEATS)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    if args.threads < 1 or args.repeats < 1 or args.warmup < 0:
        p.error("--threads and --repeats must be >= 1, --warmup >= 0")
    # read when JAX starts its CPU backend, i.e. at the first computation below
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen=true"
                               f" intra_op_parallelism_threads={args.threads}").strip()
    results = run_jax_bench(list(dict.fromkeys(args.config or JAX_CONFIGS)),
                            list(dict.fromkeys(args.dtype or ["float32"])),
                            threads=args.threads, repeats=args.repeats, warmup=args.warmup,
                            seed=args.seed, command=_command_line(argv))
    if args.json:
        write_json(results, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
