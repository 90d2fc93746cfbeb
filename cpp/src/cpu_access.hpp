// Internal: typed strided access to the float inputs of the CPU kernels, and the
// channel loops (axpy / dot over D) with a unit-stride fast path.
#pragma once

#include <cstdint>

#include "msdacore/tensor.hpp"

namespace msdacore {
namespace cpu {

// Pointer plus element strides of a float input, typed.
template <typename T, int Rank>
struct Strided {
  const T* data;
  int64_t stride[Rank];

  explicit Strided(const TensorView& t) : data(static_cast<const T*>(t.data)) {
    for (int d = 0; d < Rank; ++d) stride[d] = t.strides[d];
  }
};

// x[i * stride]; kUnit: stride == 1, known at compile time so loops vectorise.
template <bool kUnit, typename T>
inline const T& at(const T* x, int64_t i, int64_t stride) {
  return kUnit ? x[i] : x[i * stride];
}

// acc[d] += a * x[d * x_stride] for d < D.
template <bool kUnit, typename T>
inline void axpy(int64_t D, T a, const T* x, int64_t x_stride, T* acc) {
  for (int64_t d = 0; d < D; ++d) acc[d] += a * at<kUnit>(x, d, x_stride);
}

// sum_d x[d * x_stride] * y[d * y_stride], summed in a fixed order that does not depend
// on strides, ISA or thread count: 8 running partial sums (lane d % 8) combined pairwise.
template <bool kUnit, typename T>
inline T dot(int64_t D, const T* x, int64_t x_stride, const T* y, int64_t y_stride) {
  constexpr int kLanes = 8;
  T part[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes) {
    for (int k = 0; k < kLanes; ++k) {
      part[k] += at<kUnit>(x, d + k, x_stride) * at<kUnit>(y, d + k, y_stride);
    }
  }
  for (int k = 0; d < D; ++d, ++k) part[k] += at<kUnit>(x, d, x_stride) * at<kUnit>(y, d, y_stride);
  for (int width = kLanes / 2; width >= 1; width /= 2) {
    for (int k = 0; k < width; ++k) part[k] += part[k + width];
  }
  return part[0];
}

}  // namespace cpu
}  // namespace msdacore
