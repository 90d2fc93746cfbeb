// frontend_conversions.hpp: how OpenVINO's frontends turn msdacore's nodes into the
// MultiScaleDeformableAttention operation.
//   ONNX:    node "MultiScaleDeformableAttention" of domain "msdacore" (SPEC.md, "ONNX")
//   PyTorch: calls of the operator msdacore::ms_deform_attn (TorchScript and torch.export)
#pragma once

#include <vector>

#include "openvino/core/extension.hpp"

namespace msdacore_openvino {

std::vector<ov::Extension::Ptr> onnx_conversions();
std::vector<ov::Extension::Ptr> pytorch_conversions();

}  // namespace msdacore_openvino
