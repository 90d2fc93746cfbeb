// ms_deform_attn_op.cpp: shape and type inference of the OpenVINO operation, and its
// evaluate(), which hands the tensors to msdacore's C++ API.
#include "ms_deform_attn_op.hpp"

#include <numeric>
#include <sstream>
#include <utility>

#include "msdacore/ops.hpp"
#include "msdacore/tensor.hpp"

namespace msdacore_openvino {

namespace {

constexpr const char* kInputNames[5] = {
    "value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"};

bool is_float_type(const ov::element::Type& t) {
  return t == ov::element::f32 || t == ov::element::f64 || t == ov::element::f16 ||
         t == ov::element::bf16;
}

bool is_half_type(const ov::element::Type& t) {
  return t == ov::element::f16 || t == ov::element::bf16;
}

bool is_index_type(const ov::element::Type& t) {
  return t == ov::element::i64 || t == ov::element::i32;
}

// "(N, Lq, M, L, P, 2) = (1, ?, 8, 4, 4, 2)": the symbols and what is known of them.
std::string expected_shape(const char* symbols, const std::vector<ov::Dimension>& dims) {
  std::ostringstream out;
  out << "(" << symbols << ") = (";
  for (size_t i = 0; i < dims.size(); ++i) {
    out << (i ? ", " : "");
    if (dims[i].is_static())
      out << dims[i].get_length();
    else
      out << "?";
  }
  out << ")";
  return out.str();
}

// Merges `dim` into `into`; false when they disagree.
bool merge_into(ov::Dimension& into, const ov::Dimension& dim) {
  return ov::Dimension::merge(into, into, dim);
}

msdacore::DType msdacore_dtype(const ov::element::Type& t) {
  if (t == ov::element::f32) return msdacore::DType::Float32;
  if (t == ov::element::f64) return msdacore::DType::Float64;
  if (t == ov::element::f16) return msdacore::DType::Float16;
  if (t == ov::element::bf16) return msdacore::DType::BFloat16;
  if (t == ov::element::i64) return msdacore::DType::Int64;
  if (t == ov::element::i32) return msdacore::DType::Int32;
  OPENVINO_THROW(
      "msdacore MultiScaleDeformableAttention: element type ", t, " has no msdacore equivalent");
}

// A CPU TensorView of `shape` and `type` over `data`: row-major, or with the element
// strides of `byte_strides` when it is not null.
msdacore::TensorView view_over(
    void* data, const ov::Shape& shape, const ov::element::Type& type,
    const ov::Strides* byte_strides) {
  OPENVINO_ASSERT(
      shape.size() <= static_cast<size_t>(msdacore::TensorView::kMaxDims),
      "msdacore MultiScaleDeformableAttention: rank ", shape.size(), " too large");
  int64_t sizes[msdacore::TensorView::kMaxDims] = {};
  int64_t strides[msdacore::TensorView::kMaxDims] = {};
  const int32_t ndim = static_cast<int32_t>(shape.size());
  for (int32_t i = 0; i < ndim; ++i) sizes[i] = static_cast<int64_t>(shape[i]);
  msdacore::row_major_strides(ndim, sizes, strides);
  if (byte_strides != nullptr) {
    const int64_t item = static_cast<int64_t>(type.size());
    for (int32_t i = 0; i < ndim; ++i) strides[i] = static_cast<int64_t>((*byte_strides)[i]) / item;
  }
  return msdacore::TensorView(data, ndim, sizes, strides, msdacore_dtype(type));
}

// A CPU TensorView over an OpenVINO tensor (element strides from its byte strides).
msdacore::TensorView view_of(const ov::Tensor& t) {
  const bool strided = t.get_size() > 0 && !t.is_continuous();
  const ov::Strides byte_strides = strided ? t.get_strides() : ov::Strides{};
  return view_over(
      const_cast<void*>(t.data()), t.get_shape(), t.get_element_type(),
      strided ? &byte_strides : nullptr);
}

// A data-less CPU view of a static input (shape and element type only), for the core's
// check that needs no data.
msdacore::TensorView spec_of(const ov::PartialShape& partial, const ov::element::Type& type) {
  return view_over(nullptr, partial.to_shape(), type, nullptr);
}

}  // namespace

MultiScaleDeformableAttention::MultiScaleDeformableAttention(
    const ov::OutputVector& inputs, bool align_corners, std::string mode,
    std::vector<int64_t> points_per_level)
    : ov::op::Op(inputs),
      m_align_corners(align_corners),
      m_mode(std::move(mode)),
      m_points_per_level(std::move(points_per_level)) {
  constructor_validate_and_infer_types();
}

msdacore::Options MultiScaleDeformableAttention::options() const {
  msdacore::Options options;
  options.align_corners = m_align_corners;
  options.mode = msdacore::sampling_mode_from_name(m_mode);
  options.points_per_level = m_points_per_level;
  msdacore::check_options(options);
  return options;
}

void MultiScaleDeformableAttention::validate_attributes() const {
  try {
    (void)options();
  } catch (const std::exception& error) {  // the core's message
    NODE_VALIDATION_CHECK(this, false, error.what());
  }
}

void MultiScaleDeformableAttention::validate_element_types() const {
  const ov::element::Type value_type = get_input_element_type(0);
  NODE_VALIDATION_CHECK(
      this, value_type.is_dynamic() || is_float_type(value_type),
      "value must be f32, f64, f16 or bf16, got ", value_type);
  for (size_t i : {size_t(1), size_t(2)}) {
    const ov::element::Type t = get_input_element_type(i);
    NODE_VALIDATION_CHECK(
        this, t.is_dynamic() || is_index_type(t), kInputNames[i], " must be i64 (int64), got ", t);
  }
  for (size_t i : {size_t(3), size_t(4)}) {
    const ov::element::Type t = get_input_element_type(i);
    if (t.is_dynamic() || value_type.is_dynamic()) continue;
    const bool mixed = is_half_type(value_type) && t == ov::element::f32;
    NODE_VALIDATION_CHECK(
        this, t == value_type || mixed, kInputNames[i], " must have value's element type ",
        value_type, is_half_type(value_type) ? " (or f32)" : "", ", got ", t);
  }
}

void MultiScaleDeformableAttention::validate_and_infer_types() {
  NODE_VALIDATION_CHECK(
      this, get_input_size() == 5,
      "takes 5 inputs (value, spatial_shapes, level_start_index, "
      "sampling_locations, attention_weights), got ",
      get_input_size());
  validate_attributes();
  validate_element_types();

  // Static shapes and types: the core's own check (msdacore::check_shapes), in its words;
  // the index arrays' values are checked at run time. Otherwise what the partial shapes
  // tell, below.
  bool all_static = true;
  for (size_t i = 0; i < 5; ++i) {
    all_static = all_static && get_input_partial_shape(i).is_static() &&
                 get_input_element_type(i).is_static();
  }
  if (all_static) {
    msdacore::Shape output;
    try {
      msdacore::TensorView specs[5];
      for (size_t i = 0; i < 5; ++i) {
        specs[i] = spec_of(get_input_partial_shape(i), get_input_element_type(i));
      }
      output =
          msdacore::call_shapes(
              msdacore::check_shapes(specs[0], specs[1], specs[2], specs[3], specs[4], options()))
              .output;
    } catch (const std::exception& error) {  // the core's message
      NODE_VALIDATION_CHECK(this, false, error.what());
    }
    set_output_type(
        0, get_input_element_type(0), ov::PartialShape(ov::Shape(output.begin(), output.end())));
    return;
  }

  const bool flat = !m_points_per_level.empty();
  const ov::PartialShape value = get_input_partial_shape(0);
  const ov::PartialShape shapes = get_input_partial_shape(1);
  const ov::PartialShape starts = get_input_partial_shape(2);
  const ov::PartialShape loc = get_input_partial_shape(3);
  const ov::PartialShape attn = get_input_partial_shape(4);

  NODE_VALIDATION_CHECK(
      this, value.rank().compatible(4), "value must have shape (N, S, M, D), got ", value);
  NODE_VALIDATION_CHECK(
      this, shapes.rank().compatible(2) && (shapes.rank().is_dynamic() || shapes[1].compatible(2)),
      "spatial_shapes must have shape (L, 2), got ", shapes);
  NODE_VALIDATION_CHECK(
      this, starts.rank().compatible(1), "level_start_index must have shape (L,), got ", starts);

  // S (value.shape[1]) is checked against spatial_shapes' values by msdacore at run time.
  ov::Dimension N, M, D, Lq, L, P;
  if (value.rank().is_static()) {
    N = value[0];
    M = value[2];
    D = value[3];
  }
  if (shapes.rank().is_static()) L = shapes[0];
  if (flat) {
    P = ov::Dimension(
        static_cast<int64_t>(
            std::accumulate(m_points_per_level.begin(), m_points_per_level.end(), int64_t(0))));
    NODE_VALIDATION_CHECK(
        this, merge_into(L, ov::Dimension(static_cast<int64_t>(m_points_per_level.size()))),
        "points_per_level has ", m_points_per_level.size(), " counts but spatial_shapes has ",
        shapes, " rows");
  }
  NODE_VALIDATION_CHECK(
      this, starts.rank().is_dynamic() || merge_into(L, starts[0]),
      "level_start_index must have shape (L,) = ", expected_shape("L", {L}), ", got ", starts);

  const char* loc_symbols = flat ? "N, Lq, M, P_total, 2" : "N, Lq, M, L, P, 2";
  const char* attn_symbols = flat ? "N, Lq, M, P_total" : "N, Lq, M, L, P";
  const int64_t loc_rank = flat ? 5 : 6;
  auto loc_expected = [&]() {
    return flat ? std::vector<ov::Dimension>{N, Lq, M, P, 2}
                : std::vector<ov::Dimension>{N, Lq, M, L, P, 2};
  };
  // What value and the index arrays imply, before sampling_locations adds its own sizes.
  const std::string loc_message = expected_shape(loc_symbols, loc_expected());
  NODE_VALIDATION_CHECK(
      this, loc.rank().compatible(loc_rank), "sampling_locations must have shape ", loc_message,
      ", got ", loc);
  if (loc.rank().is_static()) {
    bool ok = merge_into(N, loc[0]) && merge_into(Lq, loc[1]) && merge_into(M, loc[2]) &&
              loc[loc_rank - 1].compatible(2);
    ok = ok && (flat ? merge_into(P, loc[3]) : merge_into(L, loc[3]) && merge_into(P, loc[4]));
    NODE_VALIDATION_CHECK(
        this, ok, "sampling_locations must have shape ", loc_message, ", got ", loc);
  }
  auto attn_expected = [&]() {
    std::vector<ov::Dimension> dims = loc_expected();
    dims.pop_back();
    return dims;
  };
  const std::string attn_message = expected_shape(attn_symbols, attn_expected());
  NODE_VALIDATION_CHECK(
      this, attn.rank().compatible(loc_rank - 1), "attention_weights must have shape ",
      attn_message, ", got ", attn);
  if (attn.rank().is_static()) {
    bool ok = merge_into(N, attn[0]) && merge_into(Lq, attn[1]) && merge_into(M, attn[2]);
    ok = ok && (flat ? merge_into(P, attn[3]) : merge_into(L, attn[3]) && merge_into(P, attn[4]));
    NODE_VALIDATION_CHECK(
        this, ok, "attention_weights must have shape ", attn_message, ", got ", attn);
  }
  ov::element::Type out_type = get_input_element_type(0);
  set_output_type(0, out_type, ov::PartialShape{N, Lq, M * D});
}

std::shared_ptr<ov::Node> MultiScaleDeformableAttention::clone_with_new_inputs(
    const ov::OutputVector& inputs) const {
  check_new_args_count(this, inputs);
  return std::make_shared<MultiScaleDeformableAttention>(
      inputs, m_align_corners, m_mode, m_points_per_level);
}

bool MultiScaleDeformableAttention::visit_attributes(ov::AttributeVisitor& visitor) {
  visitor.on_attribute("align_corners", m_align_corners);
  visitor.on_attribute("mode", m_mode);
  visitor.on_attribute("points_per_level", m_points_per_level);
  return true;
}

bool MultiScaleDeformableAttention::has_evaluate() const {
  const ov::element::Type value_type = get_input_element_type(0);
  return is_float_type(value_type) && is_index_type(get_input_element_type(1)) &&
         is_index_type(get_input_element_type(2));
}

bool MultiScaleDeformableAttention::evaluate(
    ov::TensorVector& outputs, const ov::TensorVector& inputs) const {
  OPENVINO_ASSERT(
      inputs.size() == 5 && outputs.size() == 1,
      "msdacore MultiScaleDeformableAttention: 5 inputs and 1 output expected");
  const ov::Shape& value = inputs[0].get_shape();
  const ov::Shape& loc = inputs[3].get_shape();
  // Shapes were checked by validate_and_infer_types (ranks) and are checked in full by
  // msdacore; the output shape is set from them first so that a dynamic output has room.
  OPENVINO_ASSERT(
      value.size() == 4 && loc.size() >= 2,
      "msdacore MultiScaleDeformableAttention: value must have shape (N, S, M, D), "
      "got ",
      value);
  outputs[0].set_shape(ov::Shape{value[0], loc[1], value[2] * value[3]});

  try {
    msdacore::ms_deform_attn_forward(
        view_of(inputs[0]), view_of(inputs[1]), view_of(inputs[2]), view_of(inputs[3]),
        view_of(inputs[4]), view_of(outputs[0]), options());
  } catch (const std::exception& error) {
    OPENVINO_THROW(
        "msdacore MultiScaleDeformableAttention '", get_friendly_name(), "': ", error.what());
  }
  return true;
}

}  // namespace msdacore_openvino
