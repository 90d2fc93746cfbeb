// Internal: the OpenMP CPU kernels.
//
// cpu_forward.cpp and cpu_backward.cpp are compiled once per instruction set, each build
// in its own namespace (generic: SSE2 / NEON baseline; avx2 and avx512 on x86-64), and
// cpu_dispatch.cpp picks one at run time and is the CPU backend (backend.hpp). All
// builds give bitwise identical results.
//
// Parallel decomposition (no atomics, each output element written by exactly one task in
// a fixed order, so results are bitwise identical for any thread count):
//   forward:  one task per (n, block of queries in the visiting order of
//             cpu_query_order.hpp), all heads;
//   backward: one task per (n, level range, group of heads): it owns grad_value of its
//             heads on its levels' tokens and grad_sampling_locations /
//             grad_attention_weights of its (n, :, heads, levels' points).
#pragma once

#include <string>

#include "msdacore/ops.hpp"

namespace msdacore {
namespace cpu {

#define MSDACORE_DECLARE_CPU_KERNELS(isa)                                                   \
  namespace isa {                                                                           \
  void forward(                                                                             \
      const Problem& p, const Options& options, const TensorView& value,                    \
      const TensorView& sampling_locations, const TensorView& attention_weights,            \
      const TensorView& output);                                                            \
  void backward(                                                                            \
      const Problem& p, const Options& options, const TensorView& value,                    \
      const TensorView& sampling_locations, const TensorView& attention_weights,            \
      const TensorView& grad_output, const TensorView& grad_value,                          \
      const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights); \
  }

MSDACORE_DECLARE_CPU_KERNELS(generic)
MSDACORE_DECLARE_CPU_KERNELS(avx2)
MSDACORE_DECLARE_CPU_KERNELS(avx512)
#undef MSDACORE_DECLARE_CPU_KERNELS

// The instruction set the kernels run with ("generic", "avx2" or "avx512"): the widest
// compiled-in one this machine supports (AVX-512 F/VL/DQ/BW, else AVX2, else generic),
// unless the environment variable MSDACORE_CPU_ISA names another compiled-in one this
// machine supports. And the list of compiled-in ones ("generic,avx2,avx512").
std::string selected_isa();
std::string compiled_isas();

}  // namespace cpu
}  // namespace msdacore
