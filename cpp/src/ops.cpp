// Op entry points: validate every argument, then dispatch on device (and, inside the
// backend, on dtype).
#include "msdacore/ops.hpp"

#include "cpu_kernels.hpp"
#include "validate.hpp"

namespace msdacore {

void ms_deform_attn_forward(const TensorView& value, const TensorView& spatial_shapes,
                            const TensorView& level_start_index,
                            const TensorView& sampling_locations,
                            const TensorView& attention_weights, const TensorView& output,
                            const Options& options) {
  const Problem p =
      check_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  validate::check_output("output", output, p, "N, Lq, M*D", {p.N, p.Lq, p.M * p.D});
  if (p.N == 0 || p.Lq == 0) return;
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
  cpu::backward(p, options.align_corners, value, sampling_locations, attention_weights,
                grad_output, grad_value, grad_sampling_locations, grad_attention_weights);
}

}  // namespace msdacore
