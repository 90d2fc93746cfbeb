// ms_deform_attn_op.hpp: msdacore's MultiScaleDeformableAttention as an OpenVINO operation.
//
// Inputs (SPEC.md, "ONNX"; N and Lq may be dynamic):
//   0 value               (N, S, M, D)                          f32 | f64 | f16 | bf16 (T)
//   1 spatial_shapes      (L, 2) rows (H_l, W_l)                 i64 (i32 accepted: the CPU
//   2 level_start_index   (L,)                                   plugin may narrow indices)
//   3 sampling_locations  (N, Lq, M, L, P, 2) | (N, Lq, M, P_total, 2)   T (f32 with a half T)
//   4 attention_weights   (N, Lq, M, L, P)    | (N, Lq, M, P_total)      T (f32 with a half T)
// Attributes: align_corners (bool), mode ("bilinear" | "discrete"), points_per_level
// (empty: the uniform layout; else L counts: the flattened layout).
// Output: (N, Lq, M*D), T.
// evaluate() runs msdacore's CPU kernel (ms_deform_attn_forward); the op holds no math.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "msdacore/ops.hpp"
#include "openvino/op/op.hpp"

namespace msdacore_openvino {

class MultiScaleDeformableAttention : public ov::op::Op {
 public:
  OPENVINO_OP("MultiScaleDeformableAttention", "msdacore");

  MultiScaleDeformableAttention() = default;
  MultiScaleDeformableAttention(
      const ov::OutputVector& inputs, bool align_corners, std::string mode,
      std::vector<int64_t> points_per_level);

  void validate_and_infer_types() override;
  std::shared_ptr<ov::Node> clone_with_new_inputs(const ov::OutputVector& inputs) const override;
  bool visit_attributes(ov::AttributeVisitor& visitor) override;
  bool evaluate(ov::TensorVector& outputs, const ov::TensorVector& inputs) const override;
  bool has_evaluate() const override;

  bool align_corners() const { return m_align_corners; }
  const std::string& mode() const { return m_mode; }
  const std::vector<int64_t>& points_per_level() const { return m_points_per_level; }

 private:
  // The attributes as msdacore's options, checked by the core (msdacore::check_options).
  msdacore::Options options() const;
  void validate_attributes() const;
  void validate_element_types() const;

  bool m_align_corners = false;
  std::string m_mode = "bilinear";
  std::vector<int64_t> m_points_per_level;
};

}  // namespace msdacore_openvino
