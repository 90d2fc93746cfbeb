// Internal: argument checks shared by the op entry points (validate.cpp).
#pragma once

#include <initializer_list>
#include <cstdint>

#include "msdacore/ops.hpp"

namespace msdacore {
namespace validate {

// A float input that must match the problem's device and dtype, with shape `dims` given
// symbolically (`symbols`, e.g. "N, Lq, M*D") and numerically.
void check_float_input(const char* name, const TensorView& t, const Problem& p,
                       const char* symbols, std::initializer_list<int64_t> dims);

// A caller-provided output: device, dtype, shape as above, contiguous, non-null.
void check_output(const char* name, const TensorView& t, const Problem& p, const char* symbols,
                  std::initializer_list<int64_t> dims);

}  // namespace validate
}  // namespace msdacore
