// CPU forward kernel: output (N, Lq, M*D).
//
// One OpenMP task per (n, block of queries), the queries taken in the visiting order of
// cpu_query_order.hpp (vertical strips); a task computes every head of its queries.
// Nearby queries sample nearby tokens, and the heads of one token share its cache lines,
// so this order reads value with the best locality (measured: 1.6x faster than one head
// at a time on detr-enc, docs/benchmarks.md). For each (q, m) the P_total points are
// planned in SIMD lanes (cpu_points.hpp), then the D channels are accumulated in
// register-sized chunks (kChunk channels) over the planned corners, then stored.
#include "cpu_kernels.hpp"
#include "cpu_parallel.hpp"
#include "cpu_points.hpp"
#include "cpu_query_order.hpp"
#include "cpu_simd.hpp"
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/runtime.hpp"

namespace msdacore {
namespace cpu {
namespace MSDACORE_CPU_ISA {
namespace {

constexpr int64_t kMaxQueryBlock = 64;  // queries per task, at most

// Queries per task: at most kMaxQueryBlock, and few enough that every thread gets about
// four tasks (a decoder's 300 queries would otherwise split 3:2 over two threads).
// Each (n, q) row is computed the same way whatever the blocking.
int64_t query_block(const Problem& p, int threads) {
  const int64_t wanted_tasks = 4 * static_cast<int64_t>(threads);
  const int64_t rows = p.N * p.Lq;
  int64_t block = (rows + wanted_tasks - 1) / wanted_tasks;
  if (block > kMaxQueryBlock) block = kMaxQueryBlock;
  return block > 0 ? block : 1;
}

// The kernel's arguments: the shared part (cpu_simd.hpp) and the output.
template <typename T>
struct ForwardArgs : InputArgs<T> {
  T* out;  // (N, Lq, M*D) contiguous
};

// Sums A * B over the planned points of (n, q, m) for channels d0 .. d0 + len of head m
// and stores them in the output: for every point and corner k = 0..3 read, in that
// order, acc += (A * weight_k) * v_k. kVector: unit-stride channels and
// len == kChunk<T>, summed in registers; otherwise element by element, with the same
// arithmetic per element. kEveryCorner (with kVector): a sample's corners outside its
// level are added too, without a branch: the plan gives them weight +0 and token 0, and
// value's token-0 rows are finite (token0_rows_finite), so each adds +0 or -0, which
// leaves the sum's bits as they are (it starts at +0, so, rounding to nearest, it is
// never -0). Measured: the
// mispredicted corner branches cost `small` 13% (its samples often straddle a border).
template <typename T, bool kVector, bool kEveryCorner = false>
void head_chunk(
    const ForwardArgs<T>& a, const PointPlan<T>& plan, int64_t n, int64_t q, int64_t m, int64_t d0,
    int64_t len) {
  const Problem& p = a.p;
  ChunkAccumulator<T> vec_acc;
  T acc[kChunk<T>] = {};
  const int64_t vs = a.value.stride[3], token_stride = a.value.stride[1];
  const T* value_head = a.value.data + n * a.value.stride[0] + m * a.value.stride[2] + d0 * vs;
  for (size_t bi = 0; bi < plan.blocks.size(); ++bi) {
    const PlanBlock<T>& b = plan.blocks[bi];
    const int64_t count = plan.block_count(bi);
    for (int64_t j = 0; j < count; ++j) {
      const int32_t corners = b.corners[j];
      if (corners == 0) continue;  // a skipped sample
      if (kEveryCorner) {
        for (int k = 0; k < 4; ++k) {
          vec_acc.add(b.scaled[k][j], value_head + b.token[k][j] * token_stride);
        }
        continue;
      }
      for (int k = 0; k < 4; ++k) {
        if (!(corners & (1 << k))) continue;
        const T weight = b.scaled[k][j];
        const T* v = value_head + b.token[k][j] * token_stride;
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

// Whether every value[n, 0, m, :] is finite: the rows that a sample's corners outside its
// level point at (token 0), which head_chunk<.., kEveryCorner> adds times +0.
template <typename T>
bool token0_rows_finite(const ForwardArgs<T>& a) {
  const Problem& p = a.p;
  if (p.S == 0) return false;
  for (int64_t n = 0; n < p.N; ++n) {
    for (int64_t m = 0; m < p.M; ++m) {
      const T* row = a.value.data + n * a.value.stride[0] + m * a.value.stride[2];
      for (int64_t d = 0; d < p.D; ++d) {
        const T x = row[d * a.value.stride[3]];
        if (!(x - x == T(0))) return false;  // inf or NaN
      }
    }
  }
  return true;
}

template <typename T>
void forward_impl(const ForwardArgs<T>& a) {
  const Problem& p = a.p;
  const TaskRun run(p);
  const Blocks blocks(p.Lq, query_block(p, run.threads));
  const int64_t tasks = p.N * blocks.count;
  constexpr int64_t chunk = kChunk<T>;
  const bool unit = a.value.stride[3] == 1;
  const PointRun<T> points(a, 0, p.L);  // all P_total points of a head
  const bool every_corner = unit && token0_rows_finite(a);
  // The queries' visiting order (cpu_query_order.hpp; empty: index order).
  const std::vector<int64_t> order = query_order(p, a.loc.data, a.loc.stride[0], a.loc.stride[1]);

#pragma omp parallel for schedule(static) num_threads(run.threads) if (run.parallel)
  for (int64_t task = 0; task < tasks; ++task) {
    const ScopedFpMode caller_mode(run.fp_mode);
    const int64_t n = task / blocks.count, block = task % blocks.count;
    const int64_t q_begin = blocks.begin(block), q_end = blocks.end(block);
    PointPlan<T> plan;
    plan.resize(points.count());
    for (int64_t qi = q_begin; qi < q_end; ++qi) {
      const int64_t q = order.empty() ? qi : order[n * p.Lq + qi];
      for (int64_t m = 0; m < p.M; ++m) {
        const int64_t head = n * a.loc.stride[0] + q * a.loc.stride[1] + m * a.loc.stride[2];
        const int64_t attn_head =
            n * a.attn.stride[0] + q * a.attn.stride[1] + m * a.attn.stride[2];
        plan_points<T, false>(
            points, a.discrete, a.loc.data + head, a.attn.data + attn_head, &plan);
        for (int64_t d0 = 0; d0 < p.D; d0 += chunk) {
          const int64_t len = p.D - d0 < chunk ? p.D - d0 : chunk;
          if (unit && len == chunk && every_corner) {
            head_chunk<T, true, true>(a, plan, n, q, m, d0, len);
          } else if (unit && len == chunk) {
            head_chunk<T, true>(a, plan, n, q, m, d0, len);
          } else {
            head_chunk<T, false>(a, plan, n, q, m, d0, len);
          }
        }
      }
    }
  }
}

}  // namespace

void forward(
    const Problem& p, const Options& options, const TensorView& value,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& output) {
  with_inputs(
      p, options, value, sampling_locations, attention_weights, [&](auto tag, const auto& in) {
        using T = typename decltype(tag)::type;
        forward_impl<T>({in, static_cast<T*>(output.data)});
      });
}

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
