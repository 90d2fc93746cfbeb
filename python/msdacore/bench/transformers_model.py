"""Forward time of transformers detectors with and without msdacore.

    python -m msdacore.bench.transformers_model [--model deformable-detr|rt-detr-v2|d-fine|all]
        [--height H] [--width W] [--repeats 3]

Builds the model from its default configuration with random weights, so nothing is
downloaded: DeformableDetrModel (ResNet-50 backbone from transformers' own ResNet, 4
levels, 6 + 6 layers, 300 queries; 800 x 1066 by default), RTDetrV2Model (its ResNet
backbone, 3 levels, 4 points per level; 640 x 640) or DFineModel (HGNetV2 backbone, points
per level [3, 6, 3]: the flattened layout; 640 x 640); runs one image in float32 under
torch.no_grad, alternating the original model and a copy switched over with
patch_transformers, and prints the median times, the time spent inside the deformable
attention modules, and the ratios. Both models run in the same process, so the ratio holds
on a busy machine where absolute times drift. Needs torch and transformers.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from .command import bounded

__all__ = ["MODELS", "build_model", "AttentionTimer", "run_model_bench", "main"]

# name: (transformers model class, image (height, width) it is benchmarked at)
MODELS = {
    "deformable-detr": ("DeformableDetrModel", (800, 1066)),
    "rt-detr-v2": ("RTDetrV2Model", (640, 640)),
    "d-fine": ("DFineModel", (640, 640)),
}


def build_model(name: str = "deformable-detr"):
    """The model `name` (a key of MODELS) of its default configuration (Deformable DETR:
    a ResNet-50 backbone), random weights (torch seed 0), in eval mode."""
    import torch
    import transformers

    if name == "deformable-detr":
        backbone = transformers.ResNetConfig(out_features=["stage2", "stage3", "stage4"])
        config = transformers.DeformableDetrConfig(backbone_config=backbone)
    elif name == "rt-detr-v2":
        config = transformers.RTDetrV2Config()
    elif name == "d-fine":
        config = transformers.DFineConfig()
    else:
        raise ValueError(f"unknown model {name!r}: one of {', '.join(MODELS)}")
    torch.manual_seed(0)
    return getattr(transformers, MODELS[name][0])(config).eval()


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


def run_model_bench(height: int, width: int, repeats: int,
                    name: str = "deformable-detr") -> dict:
    """Times the original and the patched model alternately on one random image, after
    one warm-up each. Returns {"modules": attention modules switched, "max_abs_diff": of
    last_hidden_state, "forward_s" / "attention_s": {"grid_sample"|"msdacore": median}}."""
    import torch

    from ..torch.transformers_patch import patch_transformers

    original = build_model(name)
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
    """Command line: parses argv (default sys.argv[1:]), runs and prints the tables."""
    import torch

    import msdacore

    parser = argparse.ArgumentParser(prog="python -m msdacore.bench.transformers_model",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS) + ["all"], default="deformable-detr")
    parser.add_argument("--height", type=bounded(int, 1), default=None,
                        help="image height (default: the model's, see MODELS)")
    parser.add_argument("--width", type=bounded(int, 1), default=None)
    parser.add_argument("--repeats", type=bounded(int, 1), default=3)
    args = parser.parse_args(argv)

    info = msdacore.build_info()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; msdacore "
          f"{info['version']}, {msdacore.get_num_threads()} threads ({info.get('cpu_isa', '?')})")
    names = list(MODELS) if args.model == "all" else [args.model]
    for name in names:
        height = args.height or MODELS[name][1][0]
        width = args.width or MODELS[name][1][1]
        res = run_model_bench(height, width, args.repeats, name)
        med, att = res["forward_s"], res["attention_s"]
        print(f"\n{MODELS[name][0]} (default config), 1 x 3 x {height} x {width}, float32, "
              f"no_grad; {res['modules']} attention modules switched")
        print(f"max |difference| of last_hidden_state: {res['max_abs_diff']:.2e}")
        print(f"{'':12}{'forward s':>12}{'attention s':>14}")
        for key in med:
            print(f"{key:12}{med[key]:12.3f}{att[key]:14.3f}")
        print(f"ratio stock / msdacore: forward {med['grid_sample'] / med['msdacore']:.2f}x, "
              f"attention {att['grid_sample'] / att['msdacore']:.2f}x  "
              f"(median of {args.repeats})")


if __name__ == "__main__":
    main()
