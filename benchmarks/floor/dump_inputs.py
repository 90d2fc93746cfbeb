"""Writes the sampling locations of a SPEC configuration to a binary file for floor.cpp.

    python benchmarks/floor/dump_inputs.py OUT.bin [--config detr-enc] [--seed 0]

The locations are msdacore.configs.make_inputs(config, float32, seed)["sampling_locations"],
the very inputs `python -m msdacore bench` uses. Layout (little-endian):

    8 bytes   magic b"MSDAFLR1"
    int64 x 9 N, Lq, M, L, P, D, S, align_corners (0/1), in-bounds samples (see below)
    int64 x L level heights H_l      int64 x L level widths W_l
    float32   sampling_locations, N*Lq*M*L*P*2 values, C order, last axis (x, y)

"in-bounds samples" counts the samples with -1 < h < H_l and -1 < w < W_l (SPEC
"Forward"), computed here in float32 like a float32 kernel, so that floor.cpp can
check that it reads the same file the same way.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from msdacore.configs import CONFIGS, make_inputs

MAGIC = b"MSDAFLR1"


def in_bounds_samples(cfg, locs: np.ndarray) -> int:
    """Number of samples whose pixel coordinates pass SPEC's bounds test."""
    count = 0
    one, half = np.float32(1), np.float32(0.5)
    for lvl, (h_size, w_size) in enumerate(cfg.levels):
        x = locs[:, :, :, lvl, :, 0]
        y = locs[:, :, :, lvl, :, 1]
        if cfg.align_corners:
            w = x * np.float32(w_size - 1)
            h = y * np.float32(h_size - 1)
        else:
            w = x * np.float32(w_size) - half
            h = y * np.float32(h_size) - half
        ok = (h > -one) & (h < np.float32(h_size)) & (w > -one) & (w < np.float32(w_size))
        count += int(ok.sum())
    return count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="binary file to write")
    parser.add_argument("--config", default="detr-enc", choices=list(CONFIGS))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    cfg = CONFIGS[args.config]
    locs = make_inputs(cfg, dtype=np.float32, seed=args.seed)["sampling_locations"]
    header = np.array([cfg.N, cfg.Lq, cfg.M, cfg.L, cfg.P, cfg.D, cfg.S,
                       int(cfg.align_corners), in_bounds_samples(cfg, locs)], dtype="<i8")
    heights = np.array([h for h, _ in cfg.levels], dtype="<i8")
    widths = np.array([w for _, w in cfg.levels], dtype="<i8")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "wb") as f:
        f.write(MAGIC)
        f.write(header.tobytes())
        f.write(heights.tobytes())
        f.write(widths.tobytes())
        f.write(np.ascontiguousarray(locs, dtype="<f4").tobytes())
    print(f"{cfg.describe()}: {locs.size // 2} samples, {int(header[8])} in bounds, "
          f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
