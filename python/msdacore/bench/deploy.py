"""Deployment runtimes with and without msdacore, on the CPU, in one run.

    python -m msdacore.bench.deploy [--config detr-enc --config ...] [--model ...]
        [--threads 2] [--repeats 5] [--no-calls] [--no-models] [--json PATH]

For each workload, each runtime runs the grid_sample composition and msdacore's kernel:

- ONNX Runtime: the composition exported by torch's dynamo exporter (GridSample nodes)
  vs the msdacore export in msdacore.onnxruntime.session;
- OpenVINO: the composition ONNX read by ``core.read_model`` vs the msdacore ONNX read
  with msdacore's OpenVINO extension (``msdacore.openvino.extension_path()``; rows
  skipped, with the reason, where that module is not importable);
- torch: the composition (stock code) vs msdacore (msdacore.torch).

Workloads: one call on the realistic inputs of the benchmark configurations
(msdacore.configs; default detr-enc, detr-dec, small), and whole detectors with random
weights, one image (msdacore.bench.transformers_model: Deformable DETR at 800 x 1066,
D-FINE at 640 x 640). Everything runs with --threads threads (ONNX Runtime intra-op,
OpenVINO INFERENCE_NUM_THREADS with float32 inference precision, torch and msdacore). Times
are medians; only the ratios of one run mean anything on a shared machine. Each row also
gives max|out - torch with msdacore| / max|torch with msdacore| of the first output.
Needs torch, onnx, onnxscript, onnxruntime, onnxruntime-extensions; openvino optional;
transformers for the detectors.
"""

from __future__ import annotations

import argparse
import copy
import functools
import os
import tempfile

import numpy as np

from ..configs import CONFIGS, make_inputs
from .command import bounded
from .problems import rel_error
from .report import machine_info, write_json
from .timing import time_call

__all__ = ["RUNTIMES", "run_deploy_bench", "main"]

RUNTIMES = ("onnxruntime", "openvino", "torch")
VARIANTS = ("composition", "msdacore")
DEFAULT_CONFIGS = ("detr-enc", "detr-dec", "small")
DEFAULT_MODELS = ("deformable-detr", "d-fine")


def _call_module(levels, align_corners: bool, with_msdacore: bool):
    """A torch module (value, sampling_locations, attention_weights) -> (N, Lq, M*D)
    calling msdacore or the grid_sample composition."""
    import torch

    from ..grid_sample import ms_deform_attn_grid_sample
    from ..torch import ms_deform_attn

    class Call(torch.nn.Module):
        def forward(self, value, sampling_locations, attention_weights):
            if with_msdacore:
                return ms_deform_attn(value, list(levels), None, sampling_locations,
                                      attention_weights, align_corners=align_corners)
            return ms_deform_attn_grid_sample(value, list(levels), sampling_locations,
                                              attention_weights, align_corners)

    return Call().eval()


def _export(model, args: tuple, kwargs: dict, path: str, with_msdacore: bool) -> str:
    """Writes model's ONNX to path: msdacore.onnx.export, or torch's dynamo exporter for
    the composition (with msdacore's translation of aten._is_all_true, which
    transformers' detectors need). Returns path."""
    import torch

    from ..onnx import export, translation_table

    if with_msdacore:
        export(model, args, path, kwargs=kwargs, verbose=False)
    else:
        table = {k: v for k, v in translation_table("msdacore").items()
                 if k is torch.ops.aten._is_all_true.default}
        torch.onnx.export(model, args, path, kwargs=kwargs, dynamo=True, verbose=False,
                          custom_translation_table=table)
    return path


def _onnxruntime(path: str, with_msdacore: bool, threads: int, spinning: bool = True):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    if not spinning:  # idle ONNX Runtime workers then leave the cores to msdacore's threads
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if with_msdacore:
        from ..onnxruntime import session
        sess = session(path, sess_options=options)
    else:
        sess = onnxruntime.InferenceSession(path, sess_options=options,
                                            providers=["CPUExecutionProvider"])
    return lambda feeds: sess.run(None, feeds)[0]


def _openvino(path: str, with_msdacore: bool, threads: int, spinning: bool = True):
    """spinning is ONNX Runtime's option: OpenVINO ignores it."""
    import openvino

    core = openvino.Core()
    if with_msdacore:
        try:
            import msdacore.openvino as msdacore_openvino
        except ImportError as e:
            raise RuntimeError(f"msdacore.openvino is not importable ({e})") from None
        core.add_extension(msdacore_openvino.extension_path())
    compiled = core.compile_model(core.read_model(path), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads,
                                   "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    # inputs shared with NumPy: infer() would otherwise copy them first (56 ms per detr-enc
    # call), which neither ONNX Runtime's nor torch's rows pay
    return lambda feeds: np.asarray(request.infer(feeds, share_inputs=True)[compiled.output(0)])


def _torch(model):
    import torch

    def run(feeds):
        with torch.no_grad():
            out = model(**{k: torch.from_numpy(v) for k, v in feeds.items()})
        return (out if isinstance(out, torch.Tensor) else out[0]).numpy()
    return run


def _measure(workload: str, models: dict, args: tuple, kwargs: dict, feeds: dict,
             folder: str, threads: int, repeats: int, say, spinning: bool = True) -> list:
    """Times every runtime and variant on one workload. models: {variant: torch module}.
    Returns rows {workload, runtime, variant, median_s | skipped, rel_error}."""
    paths = {}
    for variant, model in models.items():
        path = os.path.join(folder, f"{workload}-{variant}.onnx")
        try:
            paths[variant] = _export(model, args, kwargs, path, variant == "msdacore")
        except Exception as e:  # noqa: BLE001 (reported in the table)
            paths[variant] = e
    reference = _torch(models["msdacore"])(feeds)
    rows = []
    for runtime in RUNTIMES:
        for variant in VARIANTS:
            row = {"workload": workload, "runtime": runtime, "variant": variant}
            try:
                if runtime == "torch":
                    run = _torch(models[variant])
                elif isinstance(paths[variant], Exception):
                    raise RuntimeError(f"export failed: {paths[variant]}")
                else:
                    make = _onnxruntime if runtime == "onnxruntime" else _openvino
                    run = make(paths[variant], variant == "msdacore", threads, spinning)
                median, _, out = time_call(functools.partial(run, feeds), repeats, warmup=1)
                row.update(median_s=median, rel_error=rel_error(out, reference))
            except Exception as e:  # noqa: BLE001 (a runtime that cannot run it: a row)
                row["skipped"] = " ".join(str(e).split())[:300]
            rows.append(row)
            say(_format_row(row))
    return rows


def _format_row(row: dict) -> str:
    head = f"{row['workload']:18} {row['runtime']:12} {row['variant']:12}"
    if "skipped" in row:
        return f"{head} skipped: {row['skipped']}"
    return f"{head} {row['median_s'] * 1e3:10.2f} ms   rel. error {row['rel_error']:.1e}"


def _call_workload(name: str, threads: int, repeats: int, folder: str, say,
                   spinning: bool) -> list:
    cfg = CONFIGS[name]
    inputs = make_inputs(cfg, dtype=np.float32, seed=0)
    feeds = {k: inputs[k] for k in ("value", "sampling_locations", "attention_weights")}
    import torch

    args = tuple(torch.from_numpy(v) for v in feeds.values())
    models = {v: _call_module(cfg.levels, cfg.align_corners, v == "msdacore")
              for v in VARIANTS}
    say(f"\n{cfg.describe()}")
    return _measure(name, models, args, {}, feeds, folder, threads, repeats, say, spinning)


def _model_workload(name: str, threads: int, repeats: int, folder: str, say,
                    spinning: bool) -> list:
    import torch

    from ..torch import patch_transformers
    from .transformers_model import MODELS, build_model

    height, width = MODELS[name][1]
    stock = build_model(name)
    patched = copy.deepcopy(stock)
    patch_transformers(patched)
    pixels = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    say(f"\n{MODELS[name][0]} (default config, random weights), 1 x 3 x {height} x {width}")
    return _measure(name, {"composition": stock, "msdacore": patched}, (),
                    {"pixel_values": pixels}, {"pixel_values": pixels.numpy()}, folder,
                    threads, repeats, say, spinning)


def ratios(rows: list) -> dict:
    """{(workload, runtime): composition time / msdacore time} where both ran."""
    times = {(r["workload"], r["runtime"], r["variant"]): r.get("median_s") for r in rows}
    out = {}
    for workload, runtime, variant in times:
        if variant == "msdacore":
            a, b = times.get((workload, runtime, "composition")), times[(workload, runtime,
                                                                         variant)]
            if a and b:
                out[(workload, runtime)] = a / b
    return out


def run_deploy_bench(configs=DEFAULT_CONFIGS, models=DEFAULT_MODELS, threads: int = 2,
                     repeats: int = 5, say=print, spinning: bool = True) -> dict:
    """Runs the benchmark (see the module doc); returns {"machine", "threads",
    "ort_spinning", "versions", "rows", "ratios"}. spinning: ONNX Runtime's idle
    intra-op workers spin (its default) or sleep."""
    import torch

    import msdacore

    torch.set_num_threads(threads)
    msdacore.set_num_threads(threads)
    versions = {"msdacore": msdacore.__version__, "torch": torch.__version__}
    for module in ("onnx", "onnxscript", "onnxruntime", "onnxruntime_extensions",
                   "openvino", "transformers"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = None
    say(f"{machine_info()['cpu']}; {threads} threads; ONNX Runtime spinning "
        f"{'on' if spinning else 'off'}; " +
        ", ".join(f"{k} {v}" for k, v in versions.items() if v))
    rows = []
    with tempfile.TemporaryDirectory(prefix="msdacore-deploy-") as folder:
        for name in configs:
            rows += _call_workload(name, threads, repeats, folder, say, spinning)
        for name in models:
            rows += _model_workload(name, threads, max(1, repeats // 2), folder, say,
                                    spinning)
    found = ratios(rows)
    say("\ncomposition / msdacore, per runtime:")
    for (workload, runtime), r in found.items():
        say(f"{workload:18} {runtime:12} {r:6.1f}x")
    return {"machine": machine_info(), "threads": threads, "ort_spinning": spinning,
            "versions": versions,
            "rows": rows, "ratios": {f"{w} {r}": x for (w, r), x in found.items()}}


def main(argv=None) -> None:
    """Command line: parses argv (default sys.argv[1:]) and runs."""
    from .transformers_model import MODELS

    parser = argparse.ArgumentParser(prog="python -m msdacore.bench.deploy",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append",
                        choices=[n for n, c in CONFIGS.items() if not c.gpu],
                        help=f"repeatable; default {', '.join(DEFAULT_CONFIGS)}")
    parser.add_argument("--model", action="append", choices=sorted(MODELS),
                        help=f"repeatable; default {', '.join(DEFAULT_MODELS)}")
    parser.add_argument("--no-calls", action="store_true", help="skip the single calls")
    parser.add_argument("--no-models", action="store_true", help="skip the detectors")
    parser.add_argument("--threads", type=bounded(int, 1), default=2)
    parser.add_argument("--repeats", type=bounded(int, 1), default=5,
                        help="timed runs per single call (half as many per detector)")
    parser.add_argument("--ort-no-spinning", action="store_true",
                        help="ONNX Runtime's idle intra-op workers sleep instead of "
                             "spinning (session.intra_op.allow_spinning=0), leaving the "
                             "cores to msdacore's threads between nodes")
    parser.add_argument("--json", metavar="PATH", default=None)
    args = parser.parse_args(argv)
    configs = [] if args.no_calls else list(dict.fromkeys(args.config or DEFAULT_CONFIGS))
    models = [] if args.no_models else list(dict.fromkeys(args.model or DEFAULT_MODELS))
    results = run_deploy_bench(configs, models, args.threads, args.repeats,
                               spinning=not args.ort_no_spinning)
    if args.json:
        write_json(results, args.json)


if __name__ == "__main__":
    main()
