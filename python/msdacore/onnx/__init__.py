"""ONNX export of models whose deformable attention runs through msdacore (needs torch,
onnx and onnxscript; see docs/deploy.md).

- :func:`export`: torch's dynamo exporter with one ``msdacore::MultiScaleDeformableAttention``
  node per call of ``torch.ops.msdacore.ms_deform_attn`` (SPEC "ONNX"), or, with
  ``target="tensorrt"``, TensorRT's built-in ``MultiscaleDeformableAttnPlugin_TRT`` node.
- :func:`register_schemas`: the schemas of both nodes for onnx's checker and shape
  inference in this process (done on import).

ONNX Runtime runs the msdacore nodes with :func:`msdacore.onnxruntime.session`.
"""

from __future__ import annotations

from .export import export, msdacore_calls
from .schema import DOMAIN, OP_TYPE, TRT_DOMAIN, TRT_OP_TYPE, TRT_PLUGIN_VERSION, register_schemas
from .translation import TARGETS, translation_table

register_schemas()

__all__ = ["export", "msdacore_calls", "translation_table", "register_schemas", "TARGETS",
           "DOMAIN", "OP_TYPE", "TRT_DOMAIN", "TRT_OP_TYPE", "TRT_PLUGIN_VERSION"]
