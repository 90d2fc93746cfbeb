"""Central finite differences in float64 through msdacore's own forward, against
msdacore's backward (no reference involved).

The loss is <grad_output, out>. It is linear in value and attention_weights, and
inside one bilinear cell linear in each pixel coordinate separately, so central
differences are exact up to rounding once the points sit away from integer pixel
coordinates (and so from the -1 / H skip boundaries).
"""

from __future__ import annotations

import numpy as np
import pytest

import msdacore
from strategies import level_start_index, make_locations, move_off_integers

CONFIGS = [
    # (N, levels, M, D, P, Lq)
    (1, ((3, 4),), 1, 1, 1, 3),
    (2, ((3, 4), (1, 1), (2, 5)), 2, 3, 2, 4),
    (1, ((4, 1), (1, 6), (2, 2)), 3, 5, 3, 2),
]

# Entries of value / attention_weights to probe per config (all of them when fewer).
MAX_PROBES = 60


def _problem(rng, N, levels, M, D, P, Lq, align_corners):
    S = sum(h * w for h, w in levels)
    loc = make_locations(rng, N, Lq, M, levels, P, align_corners)
    move_off_integers(loc, levels, align_corners, rng, margin=1e-2)
    return dict(
        value=rng.standard_normal((N, S, M, D)),
        spatial_shapes=np.asarray(levels, dtype=np.int64),
        level_start_index=level_start_index(levels),
        sampling_locations=loc,
        attention_weights=rng.uniform(-0.5, 1.0, size=(N, Lq, M, len(levels), P)),
        grad_output=rng.standard_normal((N, Lq, M * D)),
    )


def _probe_indices(rng, shape, limit):
    every = list(np.ndindex(shape))
    if len(every) <= limit:
        return every
    picks = rng.choice(len(every), size=limit, replace=False)
    return [every[i] for i in picks]


@pytest.mark.parametrize("align_corners", [False, True])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"N{c[0]}L{len(c[1])}M{c[2]}D{c[3]}P{c[4]}Lq{c[5]}")
def test_gradients_match_finite_differences(config, align_corners):
    rng = np.random.default_rng(hash((config, align_corners)) % 2**32)
    p = _problem(rng, *config, align_corners)
    kw = dict(align_corners=align_corners)

    def loss():
        out = msdacore.ms_deform_attn(p["value"], p["spatial_shapes"], p["level_start_index"],
                                      p["sampling_locations"], p["attention_weights"], **kw)
        return float(np.sum(out * p["grad_output"]))

    grads = msdacore.ms_deform_attn_backward(
        p["value"], p["spatial_shapes"], p["level_start_index"], p["sampling_locations"],
        p["attention_weights"], p["grad_output"], **kw)
    analytic = dict(zip(("value", "sampling_locations", "attention_weights"), grads))

    # A 1e-6 step moves a pixel coordinate by at most 6e-6, well inside the 1e-2
    # margin kept from integers.
    for name, step, limit in (("value", 1e-3, MAX_PROBES),
                              ("attention_weights", 1e-3, MAX_PROBES),
                              ("sampling_locations", 1e-6, None)):
        x = p[name]
        g = analytic[name]
        indices = _probe_indices(rng, x.shape, limit if limit is not None else x.size)
        numeric = np.empty(len(indices))
        for k, index in enumerate(indices):
            saved = x[index]
            x[index] = saved + step
            up = loss()
            x[index] = saved - step
            down = loss()
            x[index] = saved
            numeric[k] = (up - down) / (2 * step)
        got = np.array([g[index] for index in indices])
        scale = max(np.max(np.abs(got)), np.max(np.abs(numeric)))
        assert scale > 0, f"{name}: all probed gradients are zero"
        err = np.max(np.abs(numeric - got)) / scale
        assert err < 1e-7, f"{name}: finite-difference relative error {err:.2e}"
