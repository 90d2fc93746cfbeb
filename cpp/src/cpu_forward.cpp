// CPU forward kernel: output (N, Lq, M*D).
//
// One OpenMP task per (n, block of queries); a task computes every head of its queries.
// Nearby queries sample nearby tokens, and the heads of one token share its cache lines,
// so this order reads value with the best locality (measured: 1.6x faster than one head
// at a time on detr-enc, docs/benchmarks.md). For each (q, m) the D channels are
// accumulated in register-sized chunks (kChunk channels) over all L*P points, then stored.
#include "cpu_simd.hpp"
#include "cpu_kernels.hpp"
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/runtime.hpp"

namespace msdacore {
namespace cpu {
namespace MSDACORE_CPU_ISA {
namespace {

constexpr int64_t kQueryBlock = 64;  // queries per task

template <typename T>
struct ForwardArgs {
  const Problem& p;
  Strided<T, 4> value;  // (N, S, M, D)
  Strided<T, 6> loc;    // (N, Lq, M, L, P, 2)
  Strided<T, 5> attn;   // (N, Lq, M, L, P)
  T* out;               // (N, Lq, M*D) contiguous
  const LevelGeometry<T>* levels;  // L levels' geometry
};

// Sums A * B over the L*P points of (n, q, m) for channels d0 .. d0 + len of head m and
// stores them in the output. kVector: unit-stride channels and len == kChunk<T>, summed in
// registers; otherwise element by element, with the same arithmetic per element.
template <typename T, bool kVector>
void head_chunk(const ForwardArgs<T>& a, int64_t n, int64_t q, int64_t m, int64_t d0,
                int64_t len) {
  const Problem& p = a.p;
  ChunkAccumulator<T> vec_acc;
  T acc[kChunk<T>] = {};
  const int64_t vs = a.value.stride[3];
  const T* value_head = a.value.data + n * a.value.stride[0] + m * a.value.stride[2] + d0 * vs;
  const T* loc_head = a.loc.data + n * a.loc.stride[0] + q * a.loc.stride[1] + m * a.loc.stride[2];
  const T* attn_head =
      a.attn.data + n * a.attn.stride[0] + q * a.attn.stride[1] + m * a.attn.stride[2];
  for (int64_t l = 0; l < p.L; ++l) {
    const detail::Level<T>& level = a.levels[l];
    const T* value_level = value_head + p.level_starts[l] * a.value.stride[1];
    for (int64_t pt = 0; pt < p.P; ++pt) {
      const T* xy = loc_head + l * a.loc.stride[3] + pt * a.loc.stride[4];
      detail::Corners<T> c;
      if (!detail::sample_corners(level, xy[0], xy[a.loc.stride[5]], &c)) continue;
      const T A = attn_head[l * a.attn.stride[3] + pt * a.attn.stride[4]];
      for (int k = 0; k < 4; ++k) {
        if (!c.inside[k]) continue;
        const T weight = A * c.weight[k];
        const T* v = value_level + c.offset[k] * a.value.stride[1];
        if (kVector) {
          vec_acc.add(weight, v);
        } else {
          for (int64_t i = 0; i < len; ++i) acc[i] += weight * v[i * vs];
        }
      }
    }
  }
  T* dst = a.out + (n * p.Lq + q) * p.M * p.D + m * p.D + d0;
  if (kVector) {
    vec_acc.store(dst);
  } else {
    for (int64_t i = 0; i < len; ++i) dst[i] = acc[i];
  }
}

template <typename T>
void forward_impl(const ForwardArgs<T>& a) {
  const Problem& p = a.p;
  const int64_t blocks = (p.Lq + kQueryBlock - 1) / kQueryBlock;
  const int64_t tasks = p.N * blocks;
  constexpr int64_t chunk = kChunk<T>;
  const bool unit = a.value.stride[3] == 1;

#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (parallel_worth_it(p))
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t n = task / blocks, block = task % blocks;
    const int64_t q_begin = block * kQueryBlock;
    const int64_t q_end = q_begin + kQueryBlock < p.Lq ? q_begin + kQueryBlock : p.Lq;
    for (int64_t q = q_begin; q < q_end; ++q) {
      for (int64_t m = 0; m < p.M; ++m) {
        for (int64_t d0 = 0; d0 < p.D; d0 += chunk) {
          const int64_t len = p.D - d0 < chunk ? p.D - d0 : chunk;
          if (unit && len == chunk) {
            head_chunk<T, true>(a, n, q, m, d0, len);
          } else {
            head_chunk<T, false>(a, n, q, m, d0, len);
          }
        }
      }
    }
  }
}

template <typename T>
void forward_typed(const Problem& p, bool align_corners, const TensorView& value,
                   const TensorView& loc, const TensorView& attn, const TensorView& output) {
  const std::vector<LevelGeometry<T>> levels = level_geometry<T>(p, align_corners);
  const ForwardArgs<T> a{p,
                         Strided<T, 4>(value),
                         Strided<T, 6>(loc),
                         Strided<T, 5>(attn),
                         static_cast<T*>(output.data),
                         levels.data()};
  forward_impl<T>(a);
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

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
