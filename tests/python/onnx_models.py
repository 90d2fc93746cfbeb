"""Models exported to ONNX for the ONNX and ONNX Runtime tests (test_deploy_onnx_export.py,
test_deploy_onnxruntime.py): small modules that call msdacore.torch.ms_deform_attn directly, in
every layout and mode, and tiny patched transformers detectors. Exports are cached per
process: a transformers export takes seconds, and both test files use them."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import torch
import transformers_families as families

# Levels of the direct-call modules: uneven sizes, S = 4*5 + 2*3 + 1*2 = 28.
LEVELS = ((4, 5), (2, 3), (1, 2))
S = sum(h * w for h, w in LEVELS)
HEADS, CHANNELS, QUERIES = 2, 3, 7


@dataclasses.dataclass(frozen=True)
class Call:
    """One kind of call: the options given to ms_deform_attn."""
    name: str
    mode: str = "bilinear"
    align_corners: bool = False
    points_per_level: tuple | None = None  # None: the uniform layout, P = 2

    @property
    def point_shape(self) -> tuple:
        """The (L, P) or (P_total,) part of the location and weight shapes."""
        return (len(LEVELS), 2) if self.points_per_level is None \
            else (sum(self.points_per_level),)


CALLS = [Call("bilinear"), Call("align_corners", align_corners=True),
         Call("flattened", points_per_level=(3, 1, 2)),
         Call("flattened_even", points_per_level=(2, 2, 2)),
         Call("discrete", mode="discrete"),
         Call("discrete_flattened", mode="discrete", points_per_level=(1, 4, 2))]
BY_NAME = {c.name: c for c in CALLS}


class DirectCall(torch.nn.Module):
    """Projects the queries into locations and weights and calls ms_deform_attn with the
    call's options: one msdacore call, surrounded by ordinary layers."""

    def __init__(self, call: Call):
        super().__init__()
        self.call = call
        points = int(np.prod(call.point_shape))
        self.locations = torch.nn.Linear(4, HEADS * points * 2)
        self.weights = torch.nn.Linear(4, HEADS * points)

    def sampling(self, queries):
        """(sampling_locations, attention_weights) of the queries (N, Lq, 4), in the
        call's layout; some locations fall outside [0, 1]."""
        n, q = queries.shape[:2]
        shape = (n, q, HEADS) + self.call.point_shape
        locations = torch.sigmoid(self.locations(queries)).reshape(shape + (2,)) * 1.2 - 0.1
        weights = torch.softmax(self.weights(queries).reshape(n, q, HEADS, -1), -1)
        return locations, weights.reshape(shape)

    def forward(self, value, queries):
        import msdacore.torch as mt

        locations, weights = self.sampling(queries)
        out = mt.ms_deform_attn(value, list(LEVELS), None, locations, weights,
                                align_corners=self.call.align_corners, mode=self.call.mode,
                                points_per_level=self.call.points_per_level)
        return out * 2.0


def direct_inputs(batch: int, dtype=torch.float32, seed: int = 0) -> tuple:
    """(value (batch, S, M, D), queries (batch, QUERIES, 4)) of dtype."""
    g = torch.Generator().manual_seed(seed)
    value = torch.randn(batch, S, HEADS, CHANNELS, generator=g, dtype=torch.float64)
    queries = torch.randn(batch, QUERIES, 4, generator=g, dtype=torch.float64)
    return value.to(dtype), queries.to(dtype)


def direct_model(name: str, dtype=torch.float32) -> DirectCall:
    torch.manual_seed(0)
    return DirectCall(BY_NAME[name]).to(dtype).eval()


@functools.lru_cache(maxsize=None)
def export_direct(name: str, target: str = "msdacore", dtype=torch.float32):
    """The ONNX model (onnx.ModelProto) of direct_model(name) with a dynamic batch,
    exported at batch 2."""
    import msdacore.onnx

    batch = torch.export.Dim("batch", min=1, max=64)
    program = msdacore.onnx.export(direct_model(name, dtype), direct_inputs(2, dtype),
                                   target=target,
                                   dynamic_shapes=({0: batch}, {0: batch}))
    return program.model_proto


# transformers detectors: name -> (family in transformers_families, dynamic batch). The
# RT-DETRv2 family specializes the batch size while tracing (in transformers' own code,
# patched or not), so D-FINE is exported at a fixed batch.
DETECTORS = {"deformable_detr": ("deformable_detr", True), "d_fine": ("d_fine", False)}


def detector(name: str):
    """The tiny float32 detector, patched with msdacore (random weights, seeded)."""
    import msdacore.torch as mt

    model = families.tiny_model(families.BY_NAME[DETECTORS[name][0]], torch.float32)
    mt.patch_transformers(model)
    return model


def detector_pixels(batch: int, seed: int = 0) -> torch.Tensor:
    return families._pixels(torch.Generator().manual_seed(seed), torch.float32, batch)


@functools.lru_cache(maxsize=None)
def export_detector(name: str, target: str = "msdacore"):
    """The ONNX model of detector(name), exported at batch 2 (dynamic batch where the
    model allows it)."""
    import msdacore.onnx

    dynamic = None
    if DETECTORS[name][1]:
        dynamic = {"pixel_values": {0: torch.export.Dim("batch", min=1, max=64)}}
    program = msdacore.onnx.export(detector(name), (),
                                   kwargs={"pixel_values": detector_pixels(2)},
                                   target=target, dynamic_shapes=dynamic)
    return program.model_proto


def nodes(model, domain: str, op_type: str) -> list:
    return [n for n in model.graph.node if n.domain == domain and n.op_type == op_type]


def op_types(model) -> set:
    return {n.op_type for n in model.graph.node}


def attributes(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
