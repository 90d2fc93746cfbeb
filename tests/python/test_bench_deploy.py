"""The deployment benchmark harness (msdacore.bench.deploy) on a tiny workload: every
runtime and variant gets a row, with a time and the error against torch with msdacore,
or the reason it was skipped."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the harness exports torch models")
pytest.importorskip("onnx", reason="the harness needs onnx (pip install msdacore[onnx])")
pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
pytest.importorskip("onnxruntime", reason="the harness runs ONNX Runtime")
pytest.importorskip("onnxruntime_extensions", reason="msdacore.onnxruntime needs it")

from msdacore.bench import deploy  # noqa: E402
from msdacore.configs import Config, make_inputs  # noqa: E402


def test_every_runtime_and_variant_gets_a_row(tmp_path):
    cfg = Config("tiny", 1, ((6, 5), (3, 2)), 2, 4, 2, 9)
    inputs = make_inputs(cfg, seed=1)
    feeds = {k: inputs[k] for k in ("value", "sampling_locations", "attention_weights")}
    args = tuple(torch.from_numpy(v) for v in feeds.values())
    models = {v: deploy._call_module(cfg.levels, False, v == "msdacore")
              for v in deploy.VARIANTS}
    lines = []
    rows = deploy._measure("tiny", models, args, {}, feeds, str(tmp_path), 1, 1,
                           lines.append)
    assert [(r["runtime"], r["variant"]) for r in rows] == \
        [(rt, v) for rt in deploy.RUNTIMES for v in deploy.VARIANTS]
    assert len(lines) == len(rows)
    by = {(r["runtime"], r["variant"]): r for r in rows}
    for key in [("onnxruntime", "composition"), ("onnxruntime", "msdacore"),
                ("torch", "composition"), ("torch", "msdacore")]:
        assert by[key]["median_s"] > 0 and by[key]["rel_error"] < 5e-5, by[key]
    openvino = importlib.util.find_spec("openvino") is not None
    if not openvino:
        assert "openvino" in by[("openvino", "composition")]["skipped"]
    if importlib.util.find_spec("msdacore.openvino") is None:
        assert "msdacore.openvino is not importable" in \
            by[("openvino", "msdacore")]["skipped"] or not openvino
    found = deploy.ratios(rows)
    assert found[("tiny", "torch")] == pytest.approx(
        by[("torch", "composition")]["median_s"] / by[("torch", "msdacore")]["median_s"])
    assert np.isfinite(list(found.values())).all()
