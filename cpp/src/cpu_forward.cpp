// CPU forward kernel: output (N, Lq, M*D), one OpenMP task per (n, q) output row.
#include <algorithm>

#include "cpu_access.hpp"
#include "cpu_kernels.hpp"
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/runtime.hpp"

namespace msdacore {
namespace cpu {
namespace {

template <typename T, bool kUnit>
void forward_impl(const Problem& p, bool align_corners, const TensorView& value_view,
                  const TensorView& loc_view, const TensorView& attn_view, T* out) {
  const Strided<T, 4> value(value_view);
  const Strided<T, 6> loc(loc_view);
  const Strided<T, 5> attn(attn_view);
  const int64_t M = p.M, D = p.D, L = p.L, P = p.P, Lq = p.Lq;
  const int64_t rows = p.N * Lq;

#pragma omp parallel for schedule(static) num_threads(get_num_threads())
  for (int64_t row = 0; row < rows; ++row) {
    const int64_t n = row / Lq, q = row % Lq;
    T* out_row = out + row * M * D;
    std::fill(out_row, out_row + M * D, T(0));
    for (int64_t m = 0; m < M; ++m) {
      T* acc = out_row + m * D;
      const T* value_head = value.data + n * value.stride[0] + m * value.stride[2];
      for (int64_t l = 0; l < L; ++l) {
        const int64_t H = p.heights[l], W = p.widths[l];
        const T* value_level = value_head + p.level_starts[l] * value.stride[1];
        for (int64_t pt = 0; pt < P; ++pt) {
          const T* xy = loc.data + n * loc.stride[0] + q * loc.stride[1] + m * loc.stride[2] +
                        l * loc.stride[3] + pt * loc.stride[4];
          const T h = detail::pixel_coord(xy[loc.stride[5]], H, align_corners);
          const T w = detail::pixel_coord(xy[0], W, align_corners);
          if (!detail::sample_in_range(h, w, H, W)) continue;
          const T A = attn.data[n * attn.stride[0] + q * attn.stride[1] + m * attn.stride[2] +
                                l * attn.stride[3] + pt * attn.stride[4]];
          detail::Corners<T> c;
          detail::make_corners(h, w, H, W, &c);
          for (int k = 0; k < 4; ++k) {
            if (!c.inside[k]) continue;
            axpy<kUnit>(D, A * c.weight[k], value_level + c.offset[k] * value.stride[1],
                        value.stride[3], acc);
          }
        }
      }
    }
  }
}

template <typename T>
void forward_typed(const Problem& p, bool align_corners, const TensorView& value,
                   const TensorView& loc, const TensorView& attn, const TensorView& output) {
  T* out = static_cast<T*>(output.data);
  if (value.strides[3] == 1) {
    forward_impl<T, true>(p, align_corners, value, loc, attn, out);
  } else {
    forward_impl<T, false>(p, align_corners, value, loc, attn, out);
  }
}

}  // namespace

void forward(const Problem& p, bool align_corners, const TensorView& value,
             const TensorView& sampling_locations, const TensorView& attention_weights,
             const TensorView& output) {
  if (p.dtype == DType::Float64) {
    forward_typed<double>(p, align_corners, value, sampling_locations, attention_weights, output);
  } else {
    forward_typed<float>(p, align_corners, value, sampling_locations, attention_weights, output);
  }
}

}  // namespace cpu
}  // namespace msdacore
