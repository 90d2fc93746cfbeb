"""OpenVINO per-call benchmark: ``python -m msdacore.bench.openvino``.

One call of multi-scale deformable attention on a benchmark configuration's realistic
inputs (configs.make_inputs), float32, CPU, in one process with one thread count:
- OpenVINO running the grid_sample composition (msdacore.grid_sample converted from
  torch with ``ov.convert_model``: GridSample nodes and a weighted sum);
- OpenVINO running msdacore's operation (a torch call of msdacore.torch.ms_deform_attn
  converted with the msdacore.openvino extension: one MultiScaleDeformableAttention node);
- msdacore's NumPy API.
Both OpenVINO models are reshaped to the inputs' static shapes and compiled for the CPU
with INFERENCE_NUM_THREADS = threads and a float32 precision hint (the CPU plugin's
default is bfloat16 on CPUs that have it, which would time the composition in another
precision). Outputs are checked against msdacore's.
Needs openvino and torch. msdacore's kernel inside OpenVINO runs OMP_NUM_THREADS OpenMP
threads (default: the cores): set OMP_NUM_THREADS to the thread count measured.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

from ..configs import CONFIGS, make_inputs
from .deploy import _call_module
from .problems import OP_KEYS, rel_error
from .report import load_average, machine_info
from .timing import time_call

__all__ = ["openvino_per_call", "format_table"]

CONFIG_NAMES = ("detr-enc", "detr-dec", "small")


def openvino_per_call(configs=CONFIG_NAMES, threads: int = 2, repeats: int = 5,
                      min_seconds: float = 0.5, seed: int = 0) -> list:
    """Times one float32 call per configuration (names in msdacore.configs.CONFIGS):
    OpenVINO with the grid_sample composition, OpenVINO with the msdacore extension and
    msdacore's NumPy API, each the median of `repeats` (or more, up to min_seconds)
    calls after one warm-up. Returns one dict per configuration: seconds
    ("openvino_composition", "openvino_msdacore", "numpy"), the ratios
    "composition_over_msdacore" and "openvino_msdacore_over_numpy", the errors of both
    OpenVINO outputs against msdacore's, and the op counts of both models."""
    import numpy as np
    import openvino as ov
    import torch

    import msdacore
    import msdacore.openvino

    extension = msdacore.openvino.extension_path()
    msdacore.set_num_threads(threads)
    torch.set_num_threads(threads)
    properties = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32"}
    rows = []
    for name in configs:
        cfg = CONFIGS[name]
        inputs = make_inputs(cfg, dtype=np.float32, seed=seed)
        args = [inputs[k] for k in OP_KEYS]
        levels = [tuple(int(x) for x in row) for row in inputs["spatial_shapes"]]
        floats = [np.ascontiguousarray(inputs[k]) for k in
                  ("value", "sampling_locations", "attention_weights")]
        example = tuple(torch.from_numpy(x) for x in floats)
        composition, with_msdacore = (_call_module(levels, cfg.align_corners, m)
                                      for m in (False, True))
        row = {"config": name, "threads": threads}
        expected = msdacore.ms_deform_attn(*args, align_corners=cfg.align_corners)
        for key, module, ext in (("openvino_composition", composition, None),
                                 ("openvino_msdacore", with_msdacore, extension)):
            with torch.no_grad():
                model = ov.convert_model(module, example_input=example,
                                         **({"extension": ext} if ext else {}))
            # static shapes, as a deployment of one image size compiles them
            model.reshape({model.input(i): ov.PartialShape(list(x.shape))
                           for i, x in enumerate(floats)})
            types = [op.get_type_name() for op in model.get_ops()]
            row[key + "_ops"] = {"GridSample": types.count("GridSample"),
                                 "MultiScaleDeformableAttention":
                                     types.count("MultiScaleDeformableAttention")}
            request = ov.compile_model(model, "CPU", properties).create_infer_request()
            # inputs and outputs shared with NumPy (no copies), as msdacore's call has none
            seconds, _, result = time_call(
                functools.partial(request.infer, floats, share_inputs=True, share_outputs=True),
                repeats,
                min_seconds=min_seconds)
            row[key] = seconds
            row[key + "_error"] = rel_error(result[0], expected)
        row["numpy"], _, _ = time_call(
            functools.partial(msdacore.ms_deform_attn, *args, align_corners=cfg.align_corners),
            repeats,
            min_seconds=min_seconds)
        row["composition_over_msdacore"] = row["openvino_composition"] / row["openvino_msdacore"]
        row["openvino_msdacore_over_numpy"] = row["openvino_msdacore"] / row["numpy"]
        rows.append(row)
    return rows


def format_table(rows: list) -> str:
    """A Markdown table of openvino_per_call's rows (milliseconds and ratios)."""
    lines = ["| config | OpenVINO, composition (ms) | OpenVINO, msdacore (ms) | msdacore NumPy "
             "(ms) | composition / msdacore | OpenVINO msdacore / NumPy |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| `{r['config']}` | {r['openvino_composition'] * 1e3:.2f} | "
                     f"{r['openvino_msdacore'] * 1e3:.2f} | {r['numpy'] * 1e3:.2f} | "
                     f"{r['composition_over_msdacore']:.1f}x | "
                     f"{r['openvino_msdacore_over_numpy']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msdacore.bench.openvino",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIG_NAMES),
                        choices=sorted(CONFIGS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    import openvino

    mach = machine_info()
    print(f"machine : {mach['cpu']}, {mach['cores']} cores ({mach['usable_cores']} usable); "
          f"load {load_average()}")
    print(f"OpenVINO {openvino.get_version()}, threads {args.threads}, float32, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
    rows = openvino_per_call(args.configs, threads=args.threads, repeats=args.repeats)
    print(format_table(rows))
    for r in rows:
        print(f"{r['config']}: max|a-b|/max|b| against msdacore: composition "
              f"{r['openvino_composition_error']:.1e}, msdacore op "
              f"{r['openvino_msdacore_error']:.1e}; ops {r['openvino_composition_ops']} / "
              f"{r['openvino_msdacore_ops']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
