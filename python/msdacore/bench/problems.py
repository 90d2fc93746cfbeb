"""The work being timed: realistic inputs for a configuration, their sizes, and the callables
that run msdacore and the grid_sample composition on them."""

from __future__ import annotations

import importlib

import numpy as np

from .._arrays import aligned_empty
from ..configs import make_inputs

__all__ = ["OP_KEYS", "NUMPY_DTYPES", "ITEMSIZES", "try_import_torch", "build_problem",
           "problem_sizes", "rel_error", "msdacore_calls", "grid_sample_calls"]

# The operator's array arguments, in call order.
OP_KEYS = ("value", "spatial_shapes", "level_start_index", "sampling_locations",
           "attention_weights")
# dtypes of the CPU benchmarks (NumPy inputs); every dtype's size in bytes.
NUMPY_DTYPES = {"float32": np.float32, "float64": np.float64}
ITEMSIZES = {"float64": 8, "float32": 4, "float16": 2, "bfloat16": 2}


def build_problem(cfg, dtype: str, seed: int):
    """(inputs, grad_output) for cfg: realistic inputs (configs.make_inputs) as a dict of
    NumPy arrays keyed by OP_KEYS, and a standard normal grad_output (N, Lq, M*D); dtype
    "float32" or "float64"; both deterministic for seed."""
    inputs = make_inputs(cfg, dtype=NUMPY_DTYPES[dtype], seed=seed)
    rng = np.random.default_rng(seed + 1)
    grad_output = aligned_empty(cfg.output_shape, NUMPY_DTYPES[dtype])
    grad_output[...] = rng.standard_normal(cfg.output_shape)
    return inputs, grad_output


def problem_sizes(cfg, dtype: str) -> dict:
    """Sizes of cfg's problem in dtype (a name in ITEMSIZES): its dimensions, samples
    (N*Lq*M*L*P), and input/output/grad_output/gradient bytes (index arrays left out)."""
    item = ITEMSIZES[dtype]
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
    """max|a - ref| / max|ref| of two array-likes, in float64 (absolute error when ref is
    all zeros; 0.0 when empty)."""
    a = np.asarray(a, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if ref.size == 0:
        return 0.0
    scale = float(np.max(np.abs(ref)))
    return float(np.max(np.abs(a - ref))) / (scale if scale > 0 else 1.0)


def try_import_torch():
    """The torch module, or None when it is not importable."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        return None


def msdacore_calls(inputs: dict, grad_output, align_corners: bool,
                   deterministic: bool | None = None) -> dict:
    """{"forward": fn, "forward_backward": fn}: msdacore on inputs (a dict keyed by
    OP_KEYS, of any array kind msdacore takes). forward returns the output;
    forward_backward returns (output, (grad_value, grad_locations, grad_weights)).
    deterministic, when given, is passed to the backward."""
    import msdacore

    args = [inputs[k] for k in OP_KEYS]
    extra = {} if deterministic is None else {"deterministic": deterministic}

    def forward():
        return msdacore.ms_deform_attn(*args, align_corners=align_corners)

    def forward_backward():
        out = msdacore.ms_deform_attn(*args, align_corners=align_corners)
        grads = msdacore.ms_deform_attn_backward(*args, grad_output,
                                                 align_corners=align_corners, **extra)
        return out, grads

    return {"forward": forward, "forward_backward": forward_backward}


def grid_sample_calls(torch, inputs: dict, grad_output, align_corners: bool) -> dict:
    """{"forward": fn, "forward_backward": fn}: the grid_sample composition on inputs
    (NumPy arrays, used as torch tensors sharing their memory, or torch tensors).
    forward runs under no_grad and returns the output; forward_backward runs autograd
    with grad_output and returns the three input gradients."""
    from ..grid_sample import ms_deform_attn_grid_sample

    def tensor(x):
        return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))

    shapes = [tuple(int(x) for x in row) for row in inputs["spatial_shapes"]]
    value, locs, weights = (tensor(inputs[k]) for k in
                            ("value", "sampling_locations", "attention_weights"))
    g = tensor(grad_output)
    leaves = [t.detach().requires_grad_() for t in (value, locs, weights)]

    def forward():
        with torch.no_grad():
            return ms_deform_attn_grid_sample(value, shapes, locs, weights, align_corners)

    def forward_backward():
        out = ms_deform_attn_grid_sample(leaves[0], shapes, leaves[1], leaves[2], align_corners)
        return torch.autograd.grad(out, leaves, g)

    return {"forward": forward, "forward_backward": forward_backward}
