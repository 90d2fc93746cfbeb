"""ONNX Runtime with msdacore's kernel (needs onnx, onnxruntime and onnxruntime-extensions;
see docs/deploy.md).

- :func:`session`: an ``onnxruntime.InferenceSession`` in which the
  ``msdacore::MultiScaleDeformableAttention`` nodes of a model exported by
  :func:`msdacore.onnx.export` run on msdacore's CPU kernel.
"""

from __future__ import annotations

from .python_ops import CONTRIB_DOMAIN, OP_TYPES, session

__all__ = ["session", "CONTRIB_DOMAIN", "OP_TYPES"]
