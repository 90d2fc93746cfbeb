// extension.cpp: the library's entry point for OpenVINO (core.add_extension(path)): the
// operation itself (IR files, the CPU plugin) and the ONNX and PyTorch conversions.
#include "openvino/core/extension.hpp"

#include <vector>

#include "frontend_conversions.hpp"
#include "ms_deform_attn_op.hpp"
#include "openvino/core/op_extension.hpp"

namespace {

std::vector<ov::Extension::Ptr> all_extensions() {
  std::vector<ov::Extension::Ptr> extensions = {
      std::make_shared<ov::OpExtension<msdacore_openvino::MultiScaleDeformableAttention>>()};
  for (auto& e : msdacore_openvino::onnx_conversions()) extensions.push_back(e);
  for (auto& e : msdacore_openvino::pytorch_conversions()) extensions.push_back(e);
  return extensions;
}

}  // namespace

OPENVINO_CREATE_EXTENSIONS(all_extensions());
