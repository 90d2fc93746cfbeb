// The CPU backend (backend.hpp): a run-time choice between the CPU kernel builds (see
// cpu_kernels.hpp).
#include <cstdlib>
#include <cstring>

#include "backend.hpp"
#include "cpu_kernels.hpp"
#include "cpu_widen.hpp"

namespace msdacore {
namespace cpu {
namespace {

enum class Isa { Generic, Avx2, Avx512 };

bool supported(Isa isa) {
  if (isa == Isa::Generic) return true;
#if defined(MSDACORE_HAVE_AVX2_KERNELS)
  if (isa == Isa::Avx2) return __builtin_cpu_supports("avx2");
#endif
#if defined(MSDACORE_HAVE_AVX512_KERNELS)
  // The AVX-512 build is compiled with -mavx512f -mavx512vl -mavx512dq -mavx512bw.
  if (isa == Isa::Avx512) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw");
  }
#endif
  return false;
}

const char* name(Isa isa) {
  return isa == Isa::Avx512 ? "avx512" : isa == Isa::Avx2 ? "avx2" : "generic";
}

Isa choose() {
  const char* forced = std::getenv("MSDACORE_CPU_ISA");
  for (Isa isa : {Isa::Generic, Isa::Avx2, Isa::Avx512}) {
    if (forced != nullptr && std::strcmp(forced, name(isa)) == 0 && supported(isa)) return isa;
  }
  // The widest build this CPU runs: on the AMD EPYC (Zen 4) where it was measured, the
  // AVX-512 forward is 10-25% faster than the AVX2 one (docs/benchmarks.md).
  if (supported(Isa::Avx512)) return Isa::Avx512;
  return supported(Isa::Avx2) ? Isa::Avx2 : Isa::Generic;
}

Isa isa() {
  static const Isa chosen = choose();
  return chosen;
}

}  // namespace

// The float32 / float64 kernels of the instruction set in use, chosen once.
const FloatKernels& isa_kernels() {
  static const FloatKernels chosen = [] {
#if defined(MSDACORE_HAVE_AVX512_KERNELS)
    if (isa() == Isa::Avx512) return FloatKernels{avx512::forward, avx512::backward};
#endif
#if defined(MSDACORE_HAVE_AVX2_KERNELS)
    if (isa() == Isa::Avx2) return FloatKernels{avx2::forward, avx2::backward};
#endif
    return FloatKernels{generic::forward, generic::backward};
  }();
  return chosen;
}

// ---- the CPU backend (backend.hpp) ----------------------------------------------------

// The float32 / float64 kernels work in place; half types need float32 copies.
int64_t forward_workspace_size(const Problem& p, const Options&, const TensorView& value) {
  return needs_widening(p) ? widened_workspace_size(p, false, value) : 0;
}
int64_t backward_workspace_size(const Problem& p, const Options&, const TensorView& value) {
  return needs_widening(p) ? widened_workspace_size(p, true, value) : 0;
}

void forward(
    const Problem& p, const Options& options, const TensorView& value,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& output, Workspace& workspace) {
  if (needs_widening(p)) {
    widened_forward(
        p, options, value, sampling_locations, attention_weights, output, workspace, isa_kernels());
    return;
  }
  isa_kernels().forward(p, options, value, sampling_locations, attention_weights, output);
}

// Deterministic whatever options.deterministic says.
void backward(
    const Problem& p, const Options& options, const TensorView& value,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights,
    Workspace& workspace) {
  if (needs_widening(p)) {
    widened_backward(
        p, options, value, sampling_locations, attention_weights, grad_output, grad_value,
        grad_sampling_locations, grad_attention_weights, workspace, isa_kernels());
    return;
  }
  isa_kernels().backward(
      p, options, value, sampling_locations, attention_weights, grad_output, grad_value,
      grad_sampling_locations, grad_attention_weights);
}

std::string selected_isa() { return name(isa()); }

std::string compiled_isas() {
  std::string list = "generic";
#if defined(MSDACORE_HAVE_AVX2_KERNELS)
  list += ",avx2";
#endif
#if defined(MSDACORE_HAVE_AVX512_KERNELS)
  list += ",avx512";
#endif
  return list;
}

}  // namespace cpu
}  // namespace msdacore
