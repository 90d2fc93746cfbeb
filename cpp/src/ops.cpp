// Op entry points: validate every argument, then dispatch on device (and, inside the
// backend, on dtype).
#include "msdacore/ops.hpp"

#include "cpu_kernels.hpp"
#include "msdacore/errors.hpp"
#include "validate.hpp"

#ifdef MSDACORE_WITH_CUDA
#include "backend.hpp"  // cuda/
#endif

namespace msdacore {
namespace {

// True when the problem runs on the CUDA backend. check_inputs has already rejected
// devices this build cannot run on, so without CUDA this is always false.
bool on_cuda(const Problem& p) {
#ifdef MSDACORE_WITH_CUDA
  return p.device.type == DeviceType::CUDA;
#else
  if (p.device.type != DeviceType::CPU) {
    throw DeviceError("msdacore: " + device_name(p.device) + " is not supported by this build");
  }
  return false;
#endif
}

}  // namespace

void ms_deform_attn_forward(const TensorView& value, const TensorView& spatial_shapes,
                            const TensorView& level_start_index,
                            const TensorView& sampling_locations,
                            const TensorView& attention_weights, const TensorView& output,
                            const Options& options) {
  const Problem p =
      check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  validate::check_output("output", output, p, "N, Lq, M*D", {p.N, p.Lq, p.M * p.D});
  if (p.N == 0 || p.Lq == 0) return;
  if (on_cuda(p)) {
#ifdef MSDACORE_WITH_CUDA
    cuda::forward(p, options, value, sampling_locations, attention_weights, output);
#endif
    return;
  }
  cpu::forward(p, options.align_corners, value, sampling_locations, attention_weights, output);
}

void ms_deform_attn_backward(const TensorView& value, const TensorView& spatial_shapes,
                             const TensorView& level_start_index,
                             const TensorView& sampling_locations,
                             const TensorView& attention_weights, const TensorView& grad_output,
                             const TensorView& grad_value,
                             const TensorView& grad_sampling_locations,
                             const TensorView& grad_attention_weights,
                             const Options& options) {
  const Problem p =
      check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  validate::check_float_input("grad_output", grad_output, p, "N, Lq, M*D",
                              {p.N, p.Lq, p.M * p.D});
  validate::check_output("grad_value", grad_value, p, "N, S, M, D", {p.N, p.S, p.M, p.D});
  validate::check_output("grad_sampling_locations", grad_sampling_locations, p,
                         "N, Lq, M, L, P, 2", {p.N, p.Lq, p.M, p.L, p.P, 2});
  validate::check_output("grad_attention_weights", grad_attention_weights, p,
                         "N, Lq, M, L, P", {p.N, p.Lq, p.M, p.L, p.P});
  if (p.N == 0) return;
  if (on_cuda(p)) {
#ifdef MSDACORE_WITH_CUDA
    cuda::backward(p, options, value, sampling_locations, attention_weights, grad_output,
                   grad_value, grad_sampling_locations, grad_attention_weights);
#endif
    return;
  }
  // The CPU backend is deterministic whatever options.deterministic says.
  cpu::backward(p, options.align_corners, value, sampling_locations, attention_weights,
                grad_output, grad_value, grad_sampling_locations, grad_attention_weights);
}

}  // namespace msdacore
