"""Instructions per sample of msdacore's CPU kernels, counted by valgrind's callgrind
(exact and immune to machine load, unlike times on a shared machine).

    python benchmarks/kernel_instructions.py [--config detr-enc] [--queries 2000]
                                              [--dtype float32] [--isa avx2]
                                              [--points-per-level 4,4,4,4]

Writes the inputs (a slice of `queries` evenly spaced queries of the configuration's
realistic inputs, configs.make_inputs, so the access pattern is the real one), then runs
one forward and one backward under callgrind with one thread, collecting only inside the
kernels of the chosen instruction set (--toggle-collect), and prints the instructions per
sample (N*Lq*M*P_total samples) of each. --points-per-level runs the flattened layout
(the same points, reshaped). Needs valgrind on PATH.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

RUNNER = r"""
import sys
import numpy as np
import msdacore
msdacore.set_num_threads(1)
d = np.load(sys.argv[1])
ppl = None if d["ppl"].size == 0 else [int(x) for x in d["ppl"]]
args = [d[k] for k in ("value", "spatial_shapes", "level_start_index",
                       "sampling_locations", "attention_weights")]
ac = bool(d["align_corners"])
msdacore.ms_deform_attn(*args, align_corners=ac, points_per_level=ppl)
msdacore.ms_deform_attn_backward(*args, d["grad_output"], align_corners=ac,
                                 points_per_level=ppl)
"""


def write_inputs(path: str, config: str, queries: int, dtype: str, ppl) -> int:
    """Writes the npz the runner reads; returns the number of samples."""
    from msdacore.configs import CONFIGS, make_inputs

    cfg = CONFIGS[config]
    np_dtype = {"float32": np.float32, "float64": np.float64}[dtype]
    inputs = make_inputs(cfg, dtype=np_dtype, seed=0)
    pick = np.linspace(0, cfg.Lq - 1, min(queries, cfg.Lq)).astype(np.int64)
    loc = np.ascontiguousarray(inputs["sampling_locations"][:, pick])
    attn = np.ascontiguousarray(inputs["attention_weights"][:, pick])
    n, lq, m = loc.shape[:3]
    if ppl:
        loc = loc.reshape(n, lq, m, -1, 2)
        attn = attn.reshape(n, lq, m, -1)
    rng = np.random.default_rng(1)
    grad_output = rng.standard_normal((n, lq, m * cfg.D)).astype(np_dtype)
    np.savez(path, value=inputs["value"], spatial_shapes=inputs["spatial_shapes"],
             level_start_index=inputs["level_start_index"], sampling_locations=loc,
             attention_weights=attn, grad_output=grad_output,
             align_corners=np.array(cfg.align_corners),
             ppl=np.array(ppl or [], dtype=np.int64))
    return attn.size


def count(npz: str, isa: str, function: str) -> int:
    """Instructions executed inside msdacore::cpu::<isa>::<function> (inclusive)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "cg.out")
        runner = os.path.join(tmp, "runner.py")
        with open(runner, "w") as f:
            f.write(RUNNER)
        env = dict(os.environ, MSDACORE_CPU_ISA=isa, OMP_NUM_THREADS="1")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        f"--toggle-collect=msdacore::cpu::{isa}::{function}(*",
                        sys.executable, runner, npz],
                       check=True, env=env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        with open(out) as f:
            text = f.read()
    match = re.search(r"^summary:\s+(\d+)", text, re.M) or re.search(r"^totals:\s+(\d+)",
                                                                      text, re.M)
    return int(match.group(1))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="detr-enc")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--isa", default="avx2")
    parser.add_argument("--points-per-level", default="")
    args = parser.parse_args(argv)
    ppl = [int(x) for x in args.points_per_level.split(",")] if args.points_per_level else None
    with tempfile.TemporaryDirectory() as tmp:
        npz = os.path.join(tmp, "inputs.npz")
        samples = write_inputs(npz, args.config, args.queries, args.dtype, ppl)
        fwd = count(npz, args.isa, "forward")
        bwd = count(npz, args.isa, "backward")
    layout = "flattened" if ppl else "uniform"
    print(f"{args.config} ({args.queries} queries, {samples} samples, {args.dtype}, "
          f"{layout}, isa {args.isa}): forward {fwd / samples:.1f}, "
          f"backward {bwd / samples:.1f} instructions per sample")
    return 0


if __name__ == "__main__":
    sys.exit(main())
