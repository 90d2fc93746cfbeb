// CPU backward kernel: one OpenMP task per (n, m, l). A task owns grad_value of head m
// on level l's tokens of batch n (the only tokens its samples read) and the location and
// attention gradients of (n, :, m, l, :), so all three are produced in one pass, race
// free without atomics, and in an order that does not depend on the thread count.
#include "cpu_simd.hpp"
#include "cpu_kernels.hpp"
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/runtime.hpp"

namespace msdacore {
namespace cpu {
namespace MSDACORE_CPU_ISA {
namespace {

template <typename T>
struct GradOutputs {
  T* value;     // (N, S, M, D) contiguous
  T* location;  // (N, Lq, M, L, P, 2) contiguous
  T* weight;    // (N, Lq, M, L, P) contiguous
};

template <typename T>
void backward_impl(const Problem& p, bool align_corners, const TensorView& value_view,
                   const TensorView& loc_view, const TensorView& attn_view,
                   const TensorView& grad_out_view, GradOutputs<T> grad) {
  const Strided<T, 4> value(value_view);
  const Strided<T, 6> loc(loc_view);
  const Strided<T, 5> attn(attn_view);
  const Strided<T, 3> grad_out(grad_out_view);
  const int64_t S = p.S, M = p.M, D = p.D, L = p.L, P = p.P, Lq = p.Lq;
  const int64_t tasks = p.N * M * L;

#pragma omp parallel for schedule(static) num_threads(get_num_threads())
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / (M * L), m = (task / L) % M, l = task % L;
    const int64_t H = p.heights[l], W = p.widths[l], start = p.level_starts[l];
    const T sx = detail::coord_scale<T>(W, align_corners);
    const T sy = detail::coord_scale<T>(H, align_corners);

    // grad_value rows of this (n, level, m): tokens start .. start + H*W - 1.
    T* gv_level = grad.value + ((n * S + start) * M + m) * D;
    for (int64_t s = 0; s < H * W; ++s) {
      for (int64_t d = 0; d < D; ++d) gv_level[s * M * D + d] = T(0);
    }
    const T* value_level =
        value.data + n * value.stride[0] + start * value.stride[1] + m * value.stride[2];

    for (int64_t q = 0; q < Lq; ++q) {
      const T* g = grad_out.data + n * grad_out.stride[0] + q * grad_out.stride[1] +
                   m * D * grad_out.stride[2];
      const int64_t sample0 = (((n * Lq + q) * M + m) * L + l) * P;  // index of point 0
      for (int64_t pt = 0; pt < P; ++pt) {
        T* grad_xy = grad.location + (sample0 + pt) * 2;
        T* grad_a = grad.weight + sample0 + pt;
        const T* xy = loc.data + n * loc.stride[0] + q * loc.stride[1] + m * loc.stride[2] +
                      l * loc.stride[3] + pt * loc.stride[4];
        const T h = detail::pixel_coord(xy[loc.stride[5]], H, align_corners);
        const T w = detail::pixel_coord(xy[0], W, align_corners);
        if (!detail::sample_in_range(h, w, H, W)) {
          grad_xy[0] = grad_xy[1] = *grad_a = T(0);
          continue;
        }
        const T A = attn.data[n * attn.stride[0] + q * attn.stride[1] + m * attn.stride[2] +
                              l * attn.stride[3] + pt * attn.stride[4]];
        detail::Corners<T> c;
        detail::make_corners(h, w, H, W, &c);
        T dots[4];
        for (int k = 0; k < 4; ++k) {
          dots[k] = c.inside[k] ? dot(D, g, grad_out.stride[2],
                                             value_level + c.offset[k] * value.stride[1],
                                             value.stride[3])
                                : T(0);
        }
        detail::sample_gradients(c, dots, A, sx, sy, grad_a, &grad_xy[0], &grad_xy[1]);
        for (int k = 0; k < 4; ++k) {
          if (!c.inside[k]) continue;
          axpy(D, A * c.weight[k], g, grad_out.stride[2], gv_level + c.offset[k] * M * D);
        }
      }
    }
  }
}

template <typename T>
void backward_typed(const Problem& p, bool align_corners, const TensorView& value,
                    const TensorView& loc, const TensorView& attn, const TensorView& grad_output,
                    const TensorView& grad_value, const TensorView& grad_loc,
                    const TensorView& grad_attn) {
  const GradOutputs<T> grad{static_cast<T*>(grad_value.data), static_cast<T*>(grad_loc.data),
                            static_cast<T*>(grad_attn.data)};
  backward_impl<T>(p, align_corners, value, loc, attn, grad_output, grad);
}

}  // namespace

void backward(const Problem& p, bool align_corners, const TensorView& value,
              const TensorView& sampling_locations, const TensorView& attention_weights,
              const TensorView& grad_output, const TensorView& grad_value,
              const TensorView& grad_sampling_locations,
              const TensorView& grad_attention_weights) {
  if (p.dtype == DType::Float64) {
    backward_typed<double>(p, align_corners, value, sampling_locations, attention_weights,
                           grad_output, grad_value, grad_sampling_locations,
                           grad_attention_weights);
  } else {
    backward_typed<float>(p, align_corners, value, sampling_locations, attention_weights,
                          grad_output, grad_value, grad_sampling_locations,
                          grad_attention_weights);
  }
}

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
