"""The numbers every benchmark shares: defaults, passes, and the JSON schema version."""

from __future__ import annotations

SCHEMA = 1  # version of the JSON layout written by ``bench --json``

# The passes timed, as JSON keys, and their labels in tables.
PASSES = ("forward", "forward_backward")
CUDA_PASSES = PASSES + ("forward_backward_deterministic",)
PASS_LABELS = {"forward": "forward", "forward_backward": "forward+backward",
               "forward_backward_deterministic": "fwd+bwd determ."}

# CPU bench (python -m msdacore bench)
REPEATS = 5          # timed msdacore runs per measurement
GS_REPEATS = 3       # timed grid_sample runs per measurement
WARMUP = 1           # untimed calls before each measurement
MAX_SECONDS = 10.0   # stop a measurement once its timed runs add up to this (and 2 are in)
MIN_SECONDS = 0.5    # go on past the repeats while the timed runs add up to less
MAX_RUNS = 100       # ... but no further than this many runs
THREADS = (1, 2)     # thread counts, each applied to msdacore and torch
DTYPES = ("float32", "float64")
QUICK = {"repeats": 3, "gs_repeats": 1, "max_seconds": 2.0, "min_seconds": 0.1}
# msdacore and grid_sample differing by more than this (max|a-b|/max|b|) prints a warning
DIFF_WARNING = {"float32": 1e-3, "float64": 1e-9}

# CUDA bench (python -m msdacore bench --device cuda)
CUDA_CONFIGS = ("detr-enc", "detr-enc-b8", "detr-dec")
CUDA_DTYPES = ("float32", "float16", "bfloat16")
CUDA_REPEATS = 50
CUDA_WARMUP = 5
COPY_BYTES = 1 << 30   # size of the copy that measures the device's copy bandwidth
MAX_INPUT_SETS = 8     # input copies rotated so repeated calls do not measure the L2 cache

# demo (python -m msdacore demo): one warm-up, then these many timed runs
DEMO_REPEATS = 5
DEMO_GS_REPEATS = 3    # at most this many grid_sample runs unless --gs-repeats says
