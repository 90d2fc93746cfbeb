// Internal: what both CPU kernels share: typed strided access to the float inputs, the
// level geometry, the common part of their arguments and the dtype dispatch, the task
// blocks, and the channel loops (over D), written once on GCC/Clang vector types of
// MSDACORE_VEC_BYTES bytes (16 by default: SSE2 / NEON; 32 when the file is compiled
// for AVX2, 64 for AVX-512).
//
// Every loop gives bitwise the same result whatever the vector width and whatever the
// strides: element-wise updates (the forward's chunk accumulation, the backward's
// grad_value update) are exact per element, and dot products always sum into
// kDotLanes = 32 / sizeof(T) running partial sums (lane d % kDotLanes) folded pairwise
// in a fixed order. So results do not depend on the ISA the
// dispatcher picks, nor on whether an input is contiguous.
#pragma once

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#if defined(__AVX__)
#include <immintrin.h>
#endif

#include "backend.hpp"  // TypeTag
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/ops.hpp"
#include "msdacore/tensor.hpp"

// The generic build passes 32-byte vectors (DotLanes) between inline functions, which
// GCC notes would change a non-inline function's ABI without AVX: not the case here.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

// Each kernel build defines its instruction set: MSDACORE_CPU_ISA names the namespace
// its code lives in, MSDACORE_VEC_BYTES the vector width.
#ifndef MSDACORE_CPU_ISA
#define MSDACORE_CPU_ISA generic
#endif
#ifndef MSDACORE_VEC_BYTES
#define MSDACORE_VEC_BYTES 16
#endif

namespace msdacore {
namespace cpu {
namespace MSDACORE_CPU_ISA {

// Pointer plus element strides of a float input, typed.
template <typename T, int Rank>
struct Strided {
  const T* data;
  int64_t stride[Rank];

  // `t` of rank Rank; or, for the flattened point layout, of rank Rank - 1 without the
  // level axis: viewed with a zero level stride (the levels' offsets are in
  // LevelGeometry), so that the point axis is stride[Rank - 2] in both layouts.
  explicit Strided(const TensorView& t) : data(static_cast<const T*>(t.data)) {
    if (t.ndim == Rank) {
      for (int d = 0; d < Rank; ++d) stride[d] = t.strides[d];
    } else {
      for (int d = 0, from = 0; d < Rank; ++d) stride[d] = d == 3 ? 0 : t.strides[from++];
    }
  }
};

// A level's geometry (detail::Level) and where its points are: a type of this kernel
// build's own, so the std::vector code that holds it is never shared between builds
// compiled for different instruction sets.
template <typename T>
struct LevelGeometry : detail::Level<T> {
  int64_t points;       // P_l
  int64_t first_point;  // index of its first point among a head's P_total (output layout)
  int64_t loc_offset;   // element offset of its first point in sampling_locations[n, q, m]
  int64_t attn_offset;  // the same in attention_weights[n, q, m]
  int64_t token_start;  // index of its first token in value's S axis
};

// The geometry of every level of `p`, for inputs with the (rank-6 view) strides of
// `loc` and `attn` (see PointStrides).
template <typename T>
std::vector<LevelGeometry<T>> level_geometry(
    const Problem& p, bool align_corners, const int64_t* loc_strides, const int64_t* attn_strides) {
  std::vector<LevelGeometry<T>> levels(p.L);
  for (int64_t l = 0; l < p.L; ++l) {
    LevelGeometry<T>& g = levels[l];
    static_cast<detail::Level<T>&>(g) =
        detail::make_level<T>(p.heights[l], p.widths[l], align_corners);
    g.points = p.points[l];
    g.first_point = p.point_starts[l];
    // Uniform layout: level l at l * stride[3]; flattened: its first point at
    // point_starts[l] * (point stride).
    g.loc_offset = p.flattened ? p.point_starts[l] * loc_strides[4] : l * loc_strides[3];
    g.attn_offset = p.flattened ? p.point_starts[l] * attn_strides[4] : l * attn_strides[3];
    g.token_start = p.level_starts[l];
  }
  return levels;
}

// What both kernels' arguments share (ForwardArgs and BackwardArgs derive from it): the
// problem, the three float inputs and the levels' geometry.
template <typename T>
struct InputArgs {
  const Problem& p;
  Strided<T, 4> value;  // (N, S, M, D)
  Strided<T, 6> loc;    // (N, Lq, M, L, P, 2), or (N, Lq, M, P_total, 2) with level stride 0
  Strided<T, 5> attn;   // (N, Lq, M, L, P), or (N, Lq, M, P_total) likewise
  const LevelGeometry<T>* levels;  // L levels' geometry and point offsets
  bool discrete;                   // mode=discrete: one clamped pixel per sample
};

// Calls f(TypeTag<T>{}, in) with T the kernels' element type for p.dtype (double for
// Float64, else float: validation lets only Float32 and Float64 reach the CPU kernels)
// and `in` the InputArgs<T> of value, loc and attn, whose level geometry (for
// options.align_corners) lives until f returns.
template <typename F>
void with_inputs(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, F&& f) {
  const auto run = [&](auto tag) {
    using T = typename decltype(tag)::type;
    const Strided<T, 6> loc_view(loc);
    const Strided<T, 5> attn_view(attn);
    const std::vector<LevelGeometry<T>> levels =
        level_geometry<T>(p, options.align_corners, loc_view.stride, attn_view.stride);
    f(tag, InputArgs<T>{
               p, Strided<T, 4>(value), loc_view, attn_view, levels.data(),
               p.mode == SamplingMode::Discrete});
  };
  if (p.dtype == DType::Float64) {
    run(TypeTag<double>{});
  } else {
    run(TypeTag<float>{});
  }
}

// `items` (queries or heads) cut into `count` blocks of `size` items, the last one
// possibly shorter: block b is items begin(b) .. end(b) - 1.
struct Blocks {
  int64_t items, size, count;
  Blocks(int64_t items_, int64_t size_)
      : items(items_), size(size_), count((items_ + size_ - 1) / size_) {}
  // First item of block b.
  int64_t begin(int64_t b) const { return b * size; }
  // One past the last item of block b.
  int64_t end(int64_t b) const { return b * size + size < items ? b * size + size : items; }
};

// Whether a call has enough work to pay for waking other threads (a parallel region
// costs microseconds, and much more when the cores are busy). Results do not depend on it.
inline bool parallel_worth_it(const Problem& p) {
  // In double: the product of valid sizes may still pass 2^63.
  const double multiply_adds = static_cast<double>(p.N) * static_cast<double>(p.Lq) *
                               static_cast<double>(p.M) * static_cast<double>(p.P_total) * 4.0 *
                               static_cast<double>(p.D);
  return multiply_adds >= 65536.0;
}

// A vector of kBytes bytes with x in every lane (Simd::splat): x - 0 is x for every x
// (-0 and NaN included), and the compilers emit it as one broadcast.
template <typename T, int kBytes>
struct Broadcast {
  typedef T Vec __attribute__((vector_size(kBytes)));
  static Vec of(T x) { return x - Vec{}; }
};

// Vectors of kBytes bytes of T.
template <typename T, int kBytesOf = MSDACORE_VEC_BYTES>
struct Simd {
  static constexpr int kBytes = kBytesOf;
  static constexpr int kLanes = kBytes / static_cast<int>(sizeof(T));
  typedef T Vec __attribute__((vector_size(kBytes)));

  static Vec load(const T* p) {
    Vec v;
    std::memcpy(&v, p, sizeof(Vec));
    return v;
  }
  static void store(T* p, Vec v) { std::memcpy(p, &v, sizeof(Vec)); }
  // x in every lane, a plain broadcast (-0 stays -0): one vbroadcastss / vbroadcastsd
  // where the build has AVX, a shuffle of lane 0 otherwise.
  static Vec splat(T x) { return Broadcast<T, kBytes>::of(x); }
};

// Channels accumulated in registers at once by the forward kernel (128 bytes).
template <typename T>
constexpr int kChunk = 128 / static_cast<int>(sizeof(T));

// Lanes of the running partial sums of a dot product (32 bytes, a multiple of every
// vector width used).
template <typename T>
constexpr int kDotLanes = 32 / static_cast<int>(sizeof(T));

// The vectors of the dot products: the build's width up to 32 bytes, so that the lanes
// of the partial sums are the same in every build (the AVX-512 build's dot products
// run on 32-byte vectors).
template <typename T>
using DotSimd = Simd<T, (MSDACORE_VEC_BYTES < 32 ? MSDACORE_VEC_BYTES : 32)>;

// acc[0..kChunk) += a * x[0..kChunk) on unit-stride x, in registers.
template <typename T>
struct ChunkAccumulator {
  using S = Simd<T>;
  static constexpr int kVecs = kChunk<T> / S::kLanes;
  typename S::Vec acc[kVecs] = {};

  void add(T a, const T* x) {
    const typename S::Vec va = S::splat(a);
    for (int j = 0; j < kVecs; ++j) acc[j] += va * S::load(x + j * S::kLanes);
  }
  void store(T* dst) const {
    for (int j = 0; j < kVecs; ++j) S::store(dst + j * S::kLanes, acc[j]);
  }
};

// Folds kDotLanes partial sums pairwise: ((p0+p4)+(p2+p6)) + ((p1+p5)+(p3+p7)) for 8.
template <typename T>
inline T fold_lanes(T* lanes) {
  for (int width = kDotLanes<T> / 2; width >= 1; width /= 2) {
    for (int k = 0; k < width; ++k) lanes[k] += lanes[k + width];
  }
  return lanes[0];
}

// One pass over the channels of a corner in the backward: returns
// sum_d g[d * g_stride] * v[d * v_stride] (in the fixed lane order described at the top
// of this file) and adds a * g[d * g_stride] to y[d] (y contiguous): the dot product and
// the grad_value update of one corner in a single pass.
template <typename T>
inline T dot_axpy(
    int64_t D, const T* g, int64_t g_stride, const T* v, int64_t v_stride, T a, T* y) {
  using S = DotSimd<T>;
  constexpr int kLanes = kDotLanes<T>;
  constexpr int kVecs = kLanes / S::kLanes;
  T lanes[kLanes];
  int64_t d = 0;
  if (g_stride == 1 && v_stride == 1) {
    typename S::Vec part[kVecs] = {};
    const typename S::Vec va = S::splat(a);
    for (; d + kLanes <= D; d += kLanes) {
      for (int j = 0; j < kVecs; ++j) {
        const typename S::Vec gj = S::load(g + d + j * S::kLanes);
        part[j] += gj * S::load(v + d + j * S::kLanes);
        S::store(y + d + j * S::kLanes, S::load(y + d + j * S::kLanes) + va * gj);
      }
    }
    std::memcpy(lanes, part, sizeof(lanes));
  } else {
    for (int k = 0; k < kLanes; ++k) lanes[k] = T(0);
    for (; d + kLanes <= D; d += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        const T gk = g[(d + k) * g_stride];
        lanes[k] += gk * v[(d + k) * v_stride];
        y[d + k] += a * gk;
      }
    }
  }
  for (int k = 0; d < D; ++d, ++k) {
    const T gd = g[d * g_stride];
    lanes[k] += gd * v[d * v_stride];
    y[d] += a * gd;
  }
  return fold_lanes(lanes);
}

// The kDotLanes<T> partial sums of a dot product as one 32-byte vector, and the fold of
// four of them at once: fold4(p)[k] == fold_lanes(lanes of p[k]) bitwise (each step adds
// the same pairs, lanes[i] + lanes[i + width], in SIMD lanes).
template <typename T>
struct DotLanes {
  static constexpr int kLanes = kDotLanes<T>;
  typedef T Vec __attribute__((vector_size(32)));
  typedef decltype(Vec{} < Vec{}) Index;

  // a + b lane by lane after picking, from the concatenation (x, y), lanes I... and J...
  template <int... I>
  static Vec shuffle(Vec x, Vec y) {
#if defined(__clang__)
    return __builtin_shufflevector(x, y, I...);
#else
    return __builtin_shuffle(x, y, Index{I...});
#endif
  }
  // dots[k] = fold_lanes(p[k]) for k = 0..3: each step adds lanes i and i + width of
  // every vector, packing two vectors' results into one.
  static void fold4(const Vec p[4], T dots[4]) {
    Vec r;
    if constexpr (kLanes == 8) {
      // width 4: [p0 (4) | p1 (4)], [p2 | p3]
      const Vec a = shuffle<0, 1, 2, 3, 8, 9, 10, 11>(p[0], p[1]) +
                    shuffle<4, 5, 6, 7, 12, 13, 14, 15>(p[0], p[1]);
      const Vec b = shuffle<0, 1, 2, 3, 8, 9, 10, 11>(p[2], p[3]) +
                    shuffle<4, 5, 6, 7, 12, 13, 14, 15>(p[2], p[3]);
      // width 2: [p0 (2) | p1 (2) | p2 (2) | p3 (2)]
      const Vec c =
          shuffle<0, 1, 4, 5, 8, 9, 12, 13>(a, b) + shuffle<2, 3, 6, 7, 10, 11, 14, 15>(a, b);
      // width 1
      r = shuffle<0, 2, 4, 6, 8, 10, 12, 14>(c, c) + shuffle<1, 3, 5, 7, 9, 11, 13, 15>(c, c);
    } else {
      static_assert(kLanes == 4, "32-byte lanes of float or double");
      // width 2: [p0 (2) | p1 (2)], [p2 | p3]
      const Vec a = shuffle<0, 1, 4, 5>(p[0], p[1]) + shuffle<2, 3, 6, 7>(p[0], p[1]);
      const Vec b = shuffle<0, 1, 4, 5>(p[2], p[3]) + shuffle<2, 3, 6, 7>(p[2], p[3]);
      // width 1
      r = shuffle<0, 2, 4, 6>(a, b) + shuffle<1, 3, 5, 7>(a, b);
    }
    for (int k = 0; k < 4; ++k) dots[k] = r[k];
  }
};

// dot_axpy for a unit-stride row of kRowBytes / sizeof(T) channels (kRowBytes a multiple
// of 32) with grad_output's row held in registers across the corners of all points of a
// (query, head): the same operations in the same order as dot_axpy, so the same bits.
// The partial sums are returned unfolded (kDotLanes<T> lanes, see DotLanes::fold4).
template <typename T, int kRowBytes>
struct GradRow {
  using S = DotSimd<T>;  // the dot products' vectors (at most 32 bytes)
  using W = Simd<T>;     // the grad_value update's (the build's width: element-wise)
  static constexpr int kVecs = kRowBytes / S::kBytes;
  static constexpr int kWide = kRowBytes / W::kBytes;
  static constexpr int kParts = kDotLanes<T> / S::kLanes;  // dot_axpy's part[]
  static_assert(kRowBytes % 32 == 0 && kParts >= 1, "rows of whole 32-byte lane groups");
  static_assert(kRowBytes % W::kBytes == 0, "rows of whole vectors of the build");
  typename S::Vec g[kVecs];
  typename W::Vec gw[kWide];

  explicit GradRow(const T* row) {
    for (int b = 0; b < kVecs; ++b) g[b] = S::load(row + b * S::kLanes);
    for (int b = 0; b < kWide; ++b) gw[b] = W::load(row + b * W::kLanes);
  }
  typename DotLanes<T>::Vec dot_axpy(const T* v, T a, T* y) const {
    typename S::Vec part[kParts] = {};
    const typename W::Vec va = W::splat(a);
    if constexpr (kWide == kVecs) {  // one width: one pass
      for (int b = 0; b < kVecs; ++b) {
        part[b % kParts] += g[b] * S::load(v + b * S::kLanes);
        W::store(y + b * W::kLanes, W::load(y + b * W::kLanes) + va * gw[b]);
      }
    } else {
      for (int b = 0; b < kVecs; ++b) part[b % kParts] += g[b] * S::load(v + b * S::kLanes);
      for (int b = 0; b < kWide; ++b) {
        W::store(y + b * W::kLanes, W::load(y + b * W::kLanes) + va * gw[b]);
      }
    }
    typename DotLanes<T>::Vec lanes;
    std::memcpy(&lanes, part, sizeof(part));
    return lanes;
  }
};

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
