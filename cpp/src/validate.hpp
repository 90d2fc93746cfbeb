// Internal: argument checks shared by the op entry points (validate.cpp).
#pragma once

#include <cstdint>
#include <initializer_list>

#include "msdacore/ops.hpp"

namespace msdacore {
namespace validate {

// A float input that must be on the problem's device with `dtype` (that of the input
// named `dtype_of`), with shape `dims` given symbolically (`symbols`, e.g.
// "N, Lq, M*D") and numerically; and, with need_data, a non-null aligned address.
void check_float_input(
    const char* name, const TensorView& t, const Problem& p, const char* symbols,
    std::initializer_list<int64_t> dims, DType dtype, const char* dtype_of = "value",
    bool need_data = true);

// A caller-provided output: device, dtype, shape as above, contiguous, non-null.
void check_output(
    const char* name, const TensorView& t, const Problem& p, const char* symbols,
    std::initializer_list<int64_t> dims, DType dtype, const char* dtype_of = "value");

// An argument's name and view, for check_no_overlap.
struct NamedView {
  const char* name;
  const TensorView* view;
};

// The bytes a call uses of a caller's workspace (data null: none given or none needed).
struct WorkspaceSpan {
  const void* data = nullptr;
  int64_t bytes = 0;
  Device device{};
};

// Error when an output's memory overlaps an input's or another output's, or when the
// caller's workspace overlaps any of them (same device; byte ranges from shapes and
// strides).
void check_no_overlap(
    std::initializer_list<NamedView> outputs, std::initializer_list<NamedView> inputs,
    const WorkspaceSpan& workspace = {});

}  // namespace validate
}  // namespace msdacore
