"""The benchmark configurations (docs/benchmarks.md) and realistic inputs for them.

Every benchmark, test and document names its work by one of these configurations
so that numbers are comparable. ``make_inputs`` builds the "realistic inputs" of
docs/conventions.md: reference points plus per-head ring offsets and noise, so queries near
the borders sample outside [0, 1], and softmax attention weights. Never zeros.

NumPy only; no torch needed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ._arrays import aligned_empty

__all__ = ["Config", "CONFIGS", "make_inputs", "level_start_index"]

# How query reference points are placed (normalised (x, y) in [0, 1]):
#   "tokens":  the pixel centre of every value token, level by level (encoder, Lq = S)
#   "uniform": uniform random in [0, 1)^2 (decoder queries)
#   "grid":    the cell centres of a g x g grid with g*g = Lq (DAT: the queries live
#              on a grid downsampled from the value map, 28x28 over a 56x56 map)
_REFERENCE_KINDS = ("tokens", "uniform", "grid")


@dataclass(frozen=True)
class Config:
    """One benchmark configuration (docs/benchmarks.md, "Configurations").

    levels is a tuple of (H, W) per level; Lq is resolved (S for encoder configs).
    """

    name: str
    N: int
    levels: tuple  # ((H_0, W_0), (H_1, W_1), ...)
    M: int
    D: int
    P: int
    Lq: int
    align_corners: bool = False
    reference: str = "uniform"  # one of _REFERENCE_KINDS
    gpu: bool = False  # meant for GPU benchmarks (too large for a quick CPU run)

    def __post_init__(self):
        if self.reference not in _REFERENCE_KINDS:
            raise ValueError(f"reference must be one of {_REFERENCE_KINDS}, got {self.reference!r}")
        if self.reference == "tokens" and self.Lq != self.S:
            raise ValueError(f"reference='tokens' needs Lq = S = {self.S}, got {self.Lq}")
        if self.reference == "grid" and math.isqrt(self.Lq) ** 2 != self.Lq:
            raise ValueError(f"reference='grid' needs a square Lq, got {self.Lq}")

    @property
    def S(self) -> int:
        """Number of value tokens, sum of H*W over levels."""
        return sum(h * w for h, w in self.levels)

    @property
    def L(self) -> int:
        """Number of levels."""
        return len(self.levels)

    @property
    def output_shape(self) -> tuple:
        """(N, Lq, M*D)."""
        return (self.N, self.Lq, self.M * self.D)

    def describe(self) -> str:
        """One line: name, sizes and levels."""
        lv = " ".join(f"({h},{w})" for h, w in self.levels)
        return (f"{self.name}: N={self.N} M={self.M} D={self.D} P={self.P} L={self.L} "
                f"S={self.S} Lq={self.Lq} levels={lv} align_corners={self.align_corners}")


_DETR_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))
_DETR_S = sum(h * w for h, w in _DETR_LEVELS)  # 22223
_SMALL_LEVELS = ((32, 32), (16, 16), (8, 8), (4, 4))
_SMALL_S = sum(h * w for h, w in _SMALL_LEVELS)  # 1360

CONFIGS = {
    c.name: c
    for c in (
        Config("detr-enc", 1, _DETR_LEVELS, 8, 32, 4, _DETR_S, reference="tokens"),
        Config("detr-dec", 1, _DETR_LEVELS, 8, 32, 4, 300, reference="uniform"),
        Config("small", 2, _SMALL_LEVELS, 8, 32, 4, _SMALL_S, reference="tokens"),
        Config("dat", 1, ((56, 56),), 4, 32, 1, 784, align_corners=True, reference="grid"),
        Config("detr-enc-b8", 8, _DETR_LEVELS, 8, 32, 4, _DETR_S, reference="tokens", gpu=True),
    )
}


def level_start_index(levels) -> np.ndarray:
    """levels: sequence of (H, W). Returns (L,) int64 prefix sums of H*W, starting at 0."""
    sizes = np.array([h * w for h, w in levels], dtype=np.int64)
    return np.concatenate([np.zeros(1, np.int64), np.cumsum(sizes)[:-1]])


def _reference_points(config: Config, rng: np.random.Generator) -> np.ndarray:
    """Reference points of one batch element: (Lq, 2) float64, (x, y) in [0, 1]."""
    if config.reference == "tokens":
        parts = []
        for h, w in config.levels:
            ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
            parts.append(np.stack([xs.ravel(), ys.ravel()], axis=-1))
        return np.concatenate(parts, axis=0)
    if config.reference == "grid":
        g = math.isqrt(config.Lq)
        c = (np.arange(g) + 0.5) / g
        ys, xs = np.meshgrid(c, c, indexing="ij")
        return np.stack([xs.ravel(), ys.ravel()], axis=-1)
    return rng.random((config.Lq, 2))


def _pixel_size(config: Config) -> np.ndarray:
    """Size of one pixel in normalised units per level: (L, 2) float64, columns (x, y).

    align_corners=False: 1/W, 1/H; True: 1/(W-1), 1/(H-1) (1 for a size-1 axis).
    """
    hw = np.array(config.levels, dtype=np.float64)  # (L, 2) rows (H, W)
    if config.align_corners:
        hw = np.maximum(hw - 1.0, 1.0)
    return 1.0 / hw[:, ::-1]  # (x, y)


def _ring_offsets(config: Config) -> np.ndarray:
    """Per-head ring offsets in pixels: (M, P, 2) float64, point p at radius p+1
    in the direction of head angle 2*pi*m/M."""
    theta = 2.0 * np.pi * np.arange(config.M) / config.M
    direction = np.stack([np.cos(theta), np.sin(theta)], axis=-1)  # (M, 2)
    radius = np.arange(1, config.P + 1, dtype=np.float64)  # (P,)
    return direction[:, None, :] * radius[None, :, None]


def make_inputs(config, dtype=np.float32, seed: int = 0) -> dict:
    """Realistic inputs for a configuration (a Config or a name in CONFIGS).

    Returns a dict of NumPy arrays:
      value               (N, S, M, D)          dtype, standard normal
      spatial_shapes      (L, 2)                int64, rows (H, W)
      level_start_index   (L,)                  int64
      sampling_locations  (N, Lq, M, L, P, 2)   dtype, normalised (x, y)
      attention_weights   (N, Lq, M, L, P)      dtype, softmax over the L*P points of a head
    Deterministic for (config, seed); float32 inputs are the float64 ones rounded.
    Generated one batch element at a time in float64 and written straight into the
    output arrays, so detr-enc-b8 needs little more than the arrays themselves.
    """
    if isinstance(config, str):
        config = CONFIGS[config]
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a floating point type, got {dtype}")
    c = config
    rng = np.random.default_rng(seed)

    # Cache-line aligned, like a framework's tensors (see _arrays.aligned_empty).
    value = aligned_empty((c.N, c.S, c.M, c.D), dtype)
    locs = aligned_empty((c.N, c.Lq, c.M, c.L, c.P, 2), dtype)
    weights = aligned_empty((c.N, c.Lq, c.M, c.L, c.P), dtype)

    pixel = _pixel_size(c)  # (L, 2)
    # ring offsets in normalised units per level: (M, L, P, 2)
    ring = _ring_offsets(c)[:, None, :, :] * pixel[None, :, None, :]

    for n in range(c.N):
        value[n] = rng.standard_normal((c.S, c.M, c.D))
        ref = _reference_points(c, rng)  # (Lq, 2)
        noise = rng.standard_normal((c.Lq, c.M, c.L, c.P, 2))
        noise *= pixel[None, None, :, None, :]  # about one pixel, per level
        noise += ring[None]
        noise += ref[:, None, None, None, :]
        locs[n] = noise
        del noise
        logits = rng.standard_normal((c.Lq, c.M, c.L * c.P))
        logits -= logits.max(axis=-1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(axis=-1, keepdims=True)
        weights[n] = logits.reshape(c.Lq, c.M, c.L, c.P)
        del logits

    return {
        "value": value,
        "spatial_shapes": np.array(c.levels, dtype=np.int64).reshape(c.L, 2),
        "level_start_index": level_start_index(c.levels),
        "sampling_locations": locs,
        "attention_weights": weights,
    }
