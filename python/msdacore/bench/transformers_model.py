"""Forward time of a transformers Deformable DETR with and without msdacore.

    python -m msdacore.bench.transformers_model [--height 800] [--width 1066] [--repeats 3]

Builds DeformableDetrModel from its default configuration (ResNet-50 backbone from
transformers' own ResNet, 4 levels, 6 + 6 layers, 300 queries) with random weights, so
nothing is downloaded; runs one image in float32 under torch.no_grad, alternating the
original model and a copy switched over with patch_transformers, and prints the median
times, the time spent inside the deformable attention modules, and the ratios. Both
models run in the same process, so the ratio holds on a busy machine where absolute
times drift. Needs torch and transformers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from .command import bounded

__all__ = ["build_model", "AttentionTimer", "run_model_bench", "main"]


def build_model():
    """DeformableDetrModel of the default configuration (ResNet-50 backbone), random
    weights (torch seed 0), in eval mode."""
    import torch
    from transformers import DeformableDetrConfig, DeformableDetrModel, ResNetConfig

    backbone = ResNetConfig(out_features=["stage2", "stage3", "stage4"])  # ResNet-50
    config = DeformableDetrConfig(backbone_config=backbone)
    torch.manual_seed(0)
    return DeformableDetrModel(config).eval()


class AttentionTimer:
    """Wall time spent inside the deformable attention modules of a model (forward hooks
    on the modules patch_transformers would switch); ``total`` accumulates seconds."""

    def __init__(self, model):
        from ..torch.transformers_patch import _targets

        self.total = 0.0
        self._start = None
        for module in _targets(model):
            module.register_forward_pre_hook(self._pre)
            module.register_forward_hook(self._post)

    def _pre(self, module, args):
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self.total += time.perf_counter() - self._start


def run_model_bench(height: int, width: int, repeats: int) -> dict:
    """Times the original and the patched model alternately on one random image, after
    one warm-up each. Returns {"modules": attention modules switched, "max_abs_diff": of
    last_hidden_state, "forward_s" / "attention_s": {"grid_sample"|"msdacore": median}}."""
    import torch

    from ..torch.transformers_patch import patch_transformers

    original = build_model()
    patched = copy.deepcopy(original)
    n = patch_transformers(patched).total
    models = {"grid_sample": original, "msdacore": patched}
    timers = {name: AttentionTimer(model) for name, model in models.items()}
    pixel_values = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))

    times = {name: [] for name in models}
    attention = {name: [] for name in models}
    outputs = {}
    with torch.no_grad():
        for name, model in models.items():  # warm-up
            outputs[name] = model(pixel_values=pixel_values).last_hidden_state
        for _ in range(repeats):
            for name, model in models.items():
                timers[name].total = 0.0
                start = time.perf_counter()
                model(pixel_values=pixel_values)
                times[name].append(time.perf_counter() - start)
                attention[name].append(timers[name].total)
    return {"modules": n,
            "max_abs_diff": (outputs["msdacore"] - outputs["grid_sample"]).abs().max().item(),
            "forward_s": {k: statistics.median(v) for k, v in times.items()},
            "attention_s": {k: statistics.median(v) for k, v in attention.items()}}


def main(argv=None) -> None:
    """Command line: parses argv (default sys.argv[1:]), runs and prints the table."""
    import torch

    import msdacore

    parser = argparse.ArgumentParser(prog="python -m msdacore.bench.transformers_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=bounded(int, 1), default=800)
    parser.add_argument("--width", type=bounded(int, 1), default=1066)
    parser.add_argument("--repeats", type=bounded(int, 1), default=3)
    args = parser.parse_args(argv)

    res = run_model_bench(args.height, args.width, args.repeats)
    info = msdacore.build_info()
    med, att = res["forward_s"], res["attention_s"]
    print(f"DeformableDetrModel (default config, ResNet-50), 1 x 3 x {args.height} x {args.width}, "
          f"float32, no_grad; {res['modules']} attention modules switched")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; msdacore "
          f"{info['version']}, {msdacore.get_num_threads()} threads ({info.get('cpu_isa', '?')})")
    print(f"max |difference| of last_hidden_state: {res['max_abs_diff']:.2e}")
    print(f"{'':12}{'forward s':>12}{'attention s':>14}")
    for name in med:
        print(f"{name:12}{med[name]:12.3f}{att[name]:14.3f}")
    print(f"ratio grid_sample / msdacore: forward {med['grid_sample'] / med['msdacore']:.2f}x, "
          f"attention {att['grid_sample'] / att['msdacore']:.2f}x  (median of {args.repeats})")


if __name__ == "__main__":
    main()
