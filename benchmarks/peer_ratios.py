"""msdacore's CPU kernels against its peers, in one process and one run: the grid_sample
composition in torch eager (msdacore.grid_sample) and the same composition exported to
ONNX and run by ONNX Runtime (forward only), on a SPEC configuration's realistic inputs.

    python benchmarks/peer_ratios.py [--config detr-enc] [--threads 2] [--rounds 3]
                                     [--floor PATH/TO/floor/binary]

The calls alternate round by round (msdacore, torch, ONNX Runtime, then again), so a
change of machine load hits all of them; each time is the minimum over the rounds of the
median of a few calls. --floor runs benchmarks/floor's binary (built by
benchmarks/floor/run.sh) on the same configuration between the rounds, so that
msdacore / floor comes from the same window too. Needs torch; ONNX Runtime is skipped
when onnxruntime, onnx or onnxscript is missing (pip install onnxruntime==1.31.1
onnx==1.23.2 onnxscript==0.7.2). float32 only.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import msdacore
from msdacore.bench.problems import build_problem, grid_sample_calls, msdacore_calls
from msdacore.configs import CONFIGS


def median_ms(fn, calls: int) -> float:
    # Worker threads of the previous runtime (ONNX Runtime's pool, torch's OpenMP) spin for
    # a while after their last call and would take the cores from this one: let them sleep.
    time.sleep(0.5)
    fn()
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def ort_forward(torch, inputs, align_corners, threads):
    """A callable running the exported composition in ONNX Runtime, or None."""
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime as ort
        import onnxscript  # noqa: F401
    except ImportError as e:
        print(f"ONNX Runtime skipped: {e}")
        return None
    from msdacore.grid_sample import ms_deform_attn_grid_sample

    shapes = [tuple(int(x) for x in row) for row in inputs["spatial_shapes"]]

    class Composition(torch.nn.Module):
        def forward(self, value, loc, attn):
            return ms_deform_attn_grid_sample(value, shapes, loc, attn, align_corners)

    args = tuple(torch.from_numpy(inputs[k]) for k in
                 ("value", "sampling_locations", "attention_weights"))
    path = os.path.join(tempfile.mkdtemp(), "composition.onnx")
    torch.onnx.export(Composition(), args, path, dynamo=True, opset_version=20,
                      input_names=["value", "loc", "attn"])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    feed = {"value": inputs["value"], "loc": inputs["sampling_locations"],
            "attn": inputs["attention_weights"]}
    return lambda: session.run(None, feed)[0]


def run_floor(binary: str, config: str, threads: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "in.bin")
        out = os.path.join(tmp, "floor.json")
        here = os.path.dirname(os.path.abspath(__file__))
        subprocess.run([sys.executable, os.path.join(here, "floor", "dump_inputs.py"), data,
                        "--config", config], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([binary, data, "--threads", str(threads), "--repeats", "10", "--json",
                        out], check=True, stdout=subprocess.DEVNULL,
                       env=dict(os.environ, OMP_PROC_BIND="close"))
        with open(out) as f:
            return json.load(f)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="detr-enc", choices=list(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--floor", default=None, help="the floor binary (benchmarks/floor)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    msdacore.set_num_threads(args.threads)
    cfg = CONFIGS[args.config]
    inputs, grad_output = build_problem(cfg, "float32", 0)
    ours = msdacore_calls(inputs, grad_output, cfg.align_corners)
    theirs = grid_sample_calls(torch, inputs, grad_output, cfg.align_corners)
    ort_call = ort_forward(torch, inputs, cfg.align_corners, args.threads)
    if ort_call is not None:
        diff = np.max(np.abs(ort_call() - np.asarray(ours["forward"]())))
        print(f"ONNX Runtime output against msdacore: max |difference| {diff:.3g}")

    fast = 7  # calls per measurement of the fast ones
    results = {k: [] for k in ("msdacore_fwd", "msdacore_fb", "torch_fwd", "torch_fb",
                               "ort_fwd", "floor_fwd", "floor_fb")}
    for r in range(args.rounds):
        results["msdacore_fwd"].append(median_ms(ours["forward"], fast))
        results["msdacore_fb"].append(median_ms(ours["forward_backward"], fast))
        results["torch_fwd"].append(median_ms(theirs["forward"], 2))
        results["torch_fb"].append(median_ms(theirs["forward_backward"], 2))
        if ort_call is not None:
            results["ort_fwd"].append(median_ms(ort_call, 3))
        if args.floor:
            fl = run_floor(args.floor, args.config, args.threads)
            results["floor_fwd"].append(fl.get("forward_lean_ms", float("nan")))
            results["floor_fb"].append(fl.get("forward_backward_lean_ms", float("nan")))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()
                                           if v), flush=True)
    best = {k: min(v) for k, v in results.items() if v}
    print(f"\n{cfg.name}, float32, {args.threads} threads, min over {args.rounds} rounds (ms):")
    for k, v in best.items():
        print(f"  {k:14s} {v:10.2f}")
    print("ratios:")
    ratios = [
        ("torch eager forward / msdacore forward", "torch_fwd", "msdacore_fwd", 1),
        ("torch eager fwd+bwd / msdacore fwd+bwd", "torch_fb", "msdacore_fb", 1),
        ("ONNX Runtime forward / msdacore forward", "ort_fwd", "msdacore_fwd", 1),
        ("msdacore forward / lean floor forward", "msdacore_fwd", "floor_fwd", 2),
        ("msdacore fwd+bwd / lean floor fwd+bwd", "msdacore_fb", "floor_fb", 2),
    ]
    for label, top, bottom, digits in ratios:
        if top in best and bottom in best:
            print(f"  {label:44s} {best[top] / best[bottom]:.{digits}f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
