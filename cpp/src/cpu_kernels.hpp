// Internal: the OpenMP CPU kernels (cpu_forward.cpp, cpu_backward.cpp).
//
// Parallel decomposition (no atomics, each output element written by exactly one task in
// a fixed order, so results are bitwise identical for any thread count):
//   forward:  one task per (n, q) row of the output;
//   backward: one task per (n, m, l): it owns grad_value of head m on level l's tokens
//             and grad_sampling_locations / grad_attention_weights of (n, :, m, l, :).
#pragma once

#include "msdacore/ops.hpp"

namespace msdacore {
namespace cpu {

void forward(const Problem& p, bool align_corners, const TensorView& value,
             const TensorView& sampling_locations, const TensorView& attention_weights,
             const TensorView& output);

void backward(const Problem& p, bool align_corners, const TensorView& value,
              const TensorView& sampling_locations, const TensorView& attention_weights,
              const TensorView& grad_output, const TensorView& grad_value,
              const TensorView& grad_sampling_locations,
              const TensorView& grad_attention_weights);

}  // namespace cpu
}  // namespace msdacore
