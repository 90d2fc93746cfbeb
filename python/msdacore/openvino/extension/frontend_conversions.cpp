// frontend_conversions.cpp: the ONNX and PyTorch frontend conversions (attribute
// mapping and input checks; the operation itself is in ms_deform_attn_op.cpp).
#include "frontend_conversions.hpp"

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ms_deform_attn_op.hpp"
#include "openvino/frontend/exception.hpp"
#include "openvino/frontend/onnx/extension/conversion.hpp"
#include "openvino/frontend/pytorch/extension/conversion.hpp"

namespace msdacore_openvino {

namespace {

constexpr const char* kInputNames[5] = {
    "value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"};

ov::OutputVector make_op(
    const ov::frontend::NodeContext& context, bool align_corners, const std::string& mode,
    const std::vector<int64_t>& points_per_level) {
  ov::OutputVector inputs;
  for (int i = 0; i < 5; ++i) inputs.push_back(context.get_input(i));
  auto op = std::make_shared<MultiScaleDeformableAttention>(
      inputs, align_corners, mode, points_per_level);
  return {context.mark_node(op)->output(0)};
}

// ONNX: attributes align_corners (int 0/1), mode (string), points_per_level (ints,
// absent for the uniform layout); index inputs int64 as SPEC.md writes them.
ov::OutputVector convert_onnx(const ov::frontend::NodeContext& context) {
  FRONT_END_GENERAL_CHECK(
      context.get_input_size() == 5,
      "msdacore MultiScaleDeformableAttention takes 5 inputs (value, "
      "spatial_shapes, level_start_index, sampling_locations, "
      "attention_weights), got ",
      context.get_input_size());
  for (int i : {1, 2}) {
    const ov::element::Type t = context.get_input(i).get_element_type();
    FRONT_END_GENERAL_CHECK(
        t.is_dynamic() || t == ov::element::i64, "msdacore MultiScaleDeformableAttention: input ",
        kInputNames[i], " must be int64, got ", t);
  }
  const int64_t align_corners = context.get_attribute<int64_t>("align_corners", 0);
  FRONT_END_GENERAL_CHECK(
      align_corners == 0 || align_corners == 1,
      "msdacore MultiScaleDeformableAttention: attribute align_corners must "
      "be 0 or 1, got ",
      align_corners);
  const std::string mode = context.get_attribute<std::string>("mode", "bilinear");
  const std::vector<int64_t> points_per_level =
      context.has_attribute("points_per_level")
          ? context.get_attribute<std::vector<int64_t>>("points_per_level")
          : std::vector<int64_t>{};
  FRONT_END_GENERAL_CHECK(
      !context.has_attribute("points_per_level") || !points_per_level.empty(),
      "msdacore MultiScaleDeformableAttention: attribute points_per_level "
      "is empty (leave it out for the uniform layout)");
  return make_op(context, align_corners == 1, mode, points_per_level);
}

// A constant argument of a PyTorch call, as T (bool, int64_t, std::string, ...).
template <typename T>
T torch_constant(const ov::frontend::NodeContext& context, int index, const char* name) {
  ov::Any any = context.get_values_from_const_input(index);
  FRONT_END_GENERAL_CHECK(
      !any.empty(), "msdacore::ms_deform_attn: argument ", name,
      " must be a constant of the traced call");
  return any.as<T>();
}

// A constant string argument. TorchScript gives a std::string; torch.export's decoder
// gives its bytes (a u8 constant) or its characters (a list of strings).
std::string torch_string(const ov::frontend::NodeContext& context, int index, const char* name) {
  ov::Any any = context.get_values_from_const_input(index);
  FRONT_END_GENERAL_CHECK(
      !any.empty(), "msdacore::ms_deform_attn: argument ", name,
      " must be a constant of the traced call");
  if (any.is<std::vector<std::string>>()) {
    std::string joined;
    for (const std::string& part : any.as<std::vector<std::string>>()) joined += part;
    return joined;
  }
  if (any.is<std::vector<uint8_t>>()) {  // the bytes of the string, as a u8 constant
    const auto bytes = any.as<std::vector<uint8_t>>();
    return std::string(bytes.begin(), bytes.end());
  }
  FRONT_END_GENERAL_CHECK(
      any.is<std::string>(), "msdacore::ms_deform_attn: argument ", name, " must be a string, got ",
      any.type_info().name());
  return any.as<std::string>();
}

// PyTorch: msdacore::ms_deform_attn(value, spatial_shapes, level_start_index,
// sampling_locations, attention_weights, align_corners=False, deterministic=False,
// mode="bilinear", points_per_level=None) (python/msdacore/torch/ops.py).
ov::OutputVector convert_pytorch(const ov::frontend::NodeContext& context) {
  const size_t count = context.get_input_size();
  FRONT_END_GENERAL_CHECK(
      count >= 5 && count <= 9, "msdacore::ms_deform_attn takes 5 to 9 arguments, got ", count);
  bool align_corners = false;
  if (count > 5 && !context.input_is_none(5))
    align_corners = torch_constant<bool>(context, 5, "align_corners");
  // argument 6, deterministic, concerns the CUDA backward only.
  std::string mode = "bilinear";
  if (count > 7 && !context.input_is_none(7)) mode = torch_string(context, 7, "mode");
  std::vector<int64_t> points_per_level;
  if (count > 8 && !context.input_is_none(8))
    points_per_level = torch_constant<std::vector<int64_t>>(context, 8, "points_per_level");
  return make_op(context, align_corners, mode, points_per_level);
}

}  // namespace

std::vector<ov::Extension::Ptr> onnx_conversions() {
  return {std::make_shared<ov::frontend::onnx::ConversionExtension>(
      "MultiScaleDeformableAttention", "msdacore", convert_onnx)};
}

std::vector<ov::Extension::Ptr> pytorch_conversions() {
  // TorchScript names the operator "msdacore::ms_deform_attn"; torch.export (FX) graphs
  // name its overload "msdacore.ms_deform_attn.default".
  return {
      std::make_shared<ov::frontend::pytorch::ConversionExtension>(
          "msdacore::ms_deform_attn", convert_pytorch),
      std::make_shared<ov::frontend::pytorch::ConversionExtension>(
          "msdacore.ms_deform_attn.default", convert_pytorch)};
}

}  // namespace msdacore_openvino
