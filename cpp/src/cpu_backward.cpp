// CPU backward kernel.
//
// One OpenMP task per (n, level range, group of heads) (TaskSplit: every level
// together, or one level per task when the heads alone cannot occupy the threads). A
// task owns grad_value of its heads on its levels' tokens of batch n (the only tokens
// its samples read) and the location and attention gradients of its (n, :, heads,
// levels' points), so all three are produced in one pass, race free without atomics.
// Each head's grad_value is accumulated by its own samples in the queries' visiting
// order (cpu_query_order.hpp: vertical strips), a query's points in point order,
// whatever the grouping, so the grouping may follow the thread count while results stay
// bitwise identical. Within a task, queries are the outer loop and heads the inner one:
// consecutive updates of grad_value then go to different rows (one query's heads sample
// in different directions), where heads outer (over blocks of 4 to 64 queries) makes
// neighbouring queries update the same rows back to back (measured 10-15% slower). For
// each (q, m) the points of the task's levels are planned in SIMD lanes (cpu_points.hpp)
// and visited round robin over the levels; grad_output's row stays in registers over
// their corners (GradRow), the four corners' dot products are folded at once and the
// location and attention gradients computed in lanes.
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

// The kernel's arguments: the shared part (cpu_simd.hpp), grad_output and the gradients.
template <typename T>
struct BackwardArgs : InputArgs<T> {
  Strided<T, 3> grad_out;  // (N, Lq, M*D)
  T* grad_value;           // (N, S, M, D) contiguous
  T* grad_loc;             // (N, Lq, M, P_total, 2) contiguous (either layout)
  T* grad_attn;            // (N, Lq, M, P_total) contiguous
};

// How the backward's work is split into tasks: (n, level range, group of heads), at
// least one task per thread. A task takes every level (one plan of all P_total points
// per (query, head)) when that leaves it at least kMinHeads heads, which it interleaves
// query by query (see the top of this file); otherwise each level is a range of its own.
// Measured on detr-enc, 2 threads, backward: two tasks of 4 heads with all levels 62.9
// and 66.5 ms against 69.4 and 64.8 for the four single-level tasks of 8 heads (two runs:
// within noise, with 25% fewer instructions), four tasks of 2 heads 75.4 ms.
struct TaskSplit {
  static constexpr int64_t kMinHeads = 4;
  int64_t level_ranges;  // 1 (levels 0 .. L-1 together) or L (one level each)
  int64_t heads;         // heads per task
  TaskSplit(const Problem& p, int threads) {
    const int64_t wanted = threads;
    int64_t groups = (wanted + p.N - 1) / p.N;  // head groups per batch element
    level_ranges = 1;
    if (groups > 1 && p.M / groups < kMinHeads && p.L > 1) {
      level_ranges = p.L;
      const int64_t base = p.N * p.L;
      groups = base >= wanted ? 1 : (wanted + base - 1) / base;
    }
    if (groups > p.M) groups = p.M;
    heads = (p.M + groups - 1) / groups;
  }
  // Levels first(r) .. last(r) - 1 of range r.
  int64_t first(int64_t r) const { return level_ranges == 1 ? 0 : r; }
  int64_t last(const Problem& p, int64_t r) const { return level_ranges == 1 ? p.L : r + 1; }
};

// 64 zero bytes of T: the row a GradRow reads when it is not used.
template <typename T>
const T* zero_row() {
  static const T zeros[64 / sizeof(T)] = {};
  return zeros;
}

// All gradients of the points of (n, q, m) on the levels of `run` (levels first_level ..,
// planned by plan_points into `plan`). kRowBytes: D * sizeof(T) when the channels are
// unit stride and GradRow takes that row size, else 0 (dot_axpy on any strides).
template <typename T, int kRowBytes>
void query_head(
    const BackwardArgs<T>& a, const PointRun<T>& run, PointPlan<T>& plan, int64_t n, int64_t q,
    int64_t m, int64_t first_level) {
  const Problem& p = a.p;
  const LevelGeometry<T>& level = a.levels[first_level];
  const int64_t D = p.D;
  const int64_t gs = a.grad_out.stride[2], vs = a.value.stride[3];
  const int64_t token_stride = a.value.stride[1], grad_token_stride = p.M * D;
  const T* g = a.grad_out.data + n * a.grad_out.stride[0] + q * a.grad_out.stride[1] + m * D * gs;
  const T* value_head = a.value.data + n * a.value.stride[0] + m * a.value.stride[2];
  T* gv_head = a.grad_value + (n * p.S * p.M + m) * D;
  // Index of the run's point 0 in the (contiguous) gradients, either layout.
  const int64_t sample0 = ((n * p.Lq + q) * p.M + m) * p.P_total + level.first_point;
  const T* loc_point0 = a.loc.data + n * a.loc.stride[0] + q * a.loc.stride[1] +
                        m * a.loc.stride[2] + level.loc_offset;
  const T* attn_point0 = a.attn.data + n * a.attn.stride[0] + q * a.attn.stride[1] +
                         m * a.attn.stride[2] + level.attn_offset;
  plan_points<T, true>(run, a.discrete, loc_point0, attn_point0, &plan);
  const GradRow<T, kRowBytes == 0 ? 64 : kRowBytes> row(kRowBytes > 0 ? g : zero_row<T>());

  constexpr int kBlock = PlanBlock<T>::kBlock, kLanes = PointLanes<T>::kLanes;
  for (size_t bi = 0; bi < plan.blocks.size(); ++bi) {
    const PlanBlock<T>& b = plan.blocks[bi];
    const int64_t count = plan.block_count(bi);
    const int64_t first = static_cast<int64_t>(bi) * kBlock;
    // The four corners' dot products <g, v_k> of each point (0 for corners not read).
    alignas(64) T dots[4][kBlock];
    const int32_t* visit = run.visit.data() + first;
    for (int64_t i = 0; i < count; ++i) {
      const int64_t j = visit[i];
      if (b.sampled[j] == 0) {
        for (int k = 0; k < 4; ++k) dots[k][j] = T(0);
        continue;
      }
      T dot[4];
      if (kRowBytes > 0) {
        typename DotLanes<T>::Vec lanes[4];
        for (int k = 0; k < 4; ++k) {
          const int64_t token = b.token[k][j];
          lanes[k] = (b.corners[j] & (1 << k))
                         ? row.dot_axpy(
                               value_head + token * token_stride, b.scaled[k][j],
                               gv_head + token * grad_token_stride)
                         : typename DotLanes<T>::Vec{};
        }
        DotLanes<T>::fold4(lanes, dot);
      } else {
        for (int k = 0; k < 4; ++k) {
          const int64_t token = b.token[k][j];
          dot[k] = (b.corners[j] & (1 << k))
                       ? dot_axpy(
                             D, g, gs, value_head + token * token_stride, vs, b.scaled[k][j],
                             gv_head + token * grad_token_stride)
                       : T(0);
        }
      }
      for (int k = 0; k < 4; ++k) dots[k][j] = dot[k];
    }
    for (int64_t i0 = 0; i0 < count; i0 += kLanes) {
      typename PointLanes<T>::Vec ga, gx, gy;
      group_gradients(
          b, dots, i0, run.scale_x.data() + first + i0, run.scale_y.data() + first + i0, &ga, &gx,
          &gy);
      const int64_t live = count - i0 < kLanes ? count - i0 : kLanes;
      T* grad_xy = a.grad_loc + (sample0 + first + i0) * 2;
      T* grad_a = a.grad_attn + sample0 + first + i0;
      for (int64_t i = 0; i < live; ++i) {
        grad_a[i] = ga[i];
        grad_xy[2 * i] = gx[i];
        grad_xy[2 * i + 1] = gy[i];
      }
    }
  }
}

// query_head for the row size of `a`.
template <typename T>
void head_points(
    const BackwardArgs<T>& a, const PointRun<T>& run, PointPlan<T>& plan, int64_t n, int64_t q,
    int64_t m, int64_t first_level) {
  const bool unit = a.value.stride[3] == 1 && a.grad_out.stride[2] == 1;
  const int64_t bytes = unit ? a.p.D * static_cast<int64_t>(sizeof(T)) : 0;
  if (bytes == 64) {
    query_head<T, 64>(a, run, plan, n, q, m, first_level);
  } else if (bytes == 128) {
    query_head<T, 128>(a, run, plan, n, q, m, first_level);
  } else if (bytes == 256) {
    query_head<T, 256>(a, run, plan, n, q, m, first_level);
  } else {
    query_head<T, 0>(a, run, plan, n, q, m, first_level);
  }
}

template <typename T>
void backward_impl(const BackwardArgs<T>& a) {
  const Problem& p = a.p;
  const TaskRun run(p);
  const TaskSplit split(p, run.threads);
  const Blocks groups(p.M, split.heads);
  const int64_t tasks = p.N * split.level_ranges * groups.count;
  std::vector<PointRun<T>> runs;  // the points of each level range
  for (int64_t r = 0; r < split.level_ranges; ++r) {
    runs.emplace_back(a, split.first(r), split.last(p, r));
  }
  // The queries' visiting order (cpu_query_order.hpp; empty: index order).
  const std::vector<int64_t> order = query_order(p, a.loc.data, a.loc.stride[0], a.loc.stride[1]);

#pragma omp parallel for schedule(dynamic, 1) num_threads(run.threads) if (run.parallel)
  for (int64_t task = 0; task < tasks; ++task) {
    const ScopedFpMode caller_mode(run.fp_mode);
    const int64_t n = task / (split.level_ranges * groups.count);
    const int64_t r = (task / groups.count) % split.level_ranges;
    const int64_t group = task % groups.count;
    const int64_t m_begin = groups.begin(group), m_end = groups.end(group);
    const int64_t first = split.first(r), last = split.last(p, r);

    // Zero this task's grad_value: its levels' tokens, heads m_begin .. m_end - 1.
    for (int64_t l = first; l < last; ++l) {
      const int64_t start = p.level_starts[l], tokens = p.heights[l] * p.widths[l];
      for (int64_t s = start; s < start + tokens; ++s) {
        T* row = a.grad_value + ((n * p.S + s) * p.M + m_begin) * p.D;
        for (int64_t i = 0; i < (m_end - m_begin) * p.D; ++i) row[i] = T(0);
      }
    }
    PointPlan<T> plan;
    plan.resize(runs[r].count());
    for (int64_t qi = 0; qi < p.Lq; ++qi) {
      const int64_t q = order.empty() ? qi : order[n * p.Lq + qi];
      for (int64_t m = m_begin; m < m_end; ++m) head_points(a, runs[r], plan, n, q, m, first);
    }
  }
}

}  // namespace

void backward(
    const Problem& p, const Options& options, const TensorView& value,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights) {
  with_inputs(
      p, options, value, sampling_locations, attention_weights, [&](auto tag, const auto& in) {
        using T = typename decltype(tag)::type;
        backward_impl<T>(
            {in, Strided<T, 3>(grad_output), static_cast<T*>(grad_value.data),
             static_cast<T*>(grad_sampling_locations.data),
             static_cast<T*>(grad_attention_weights.data)});
      });
}

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
