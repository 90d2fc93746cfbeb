// CPU backward kernel.
//
// One OpenMP task per (n, l, group of heads). A task owns grad_value of its heads on
// level l's tokens of batch n (the only tokens its samples read) and the location and
// attention gradients of (n, :, heads, l, :), so all three are produced in one pass,
// race free without atomics. Each head's grad_value is accumulated by its own samples in
// query order whatever the grouping, so the grouping may follow the thread count while
// results stay bitwise identical. Within a task, queries are the outer loop and heads
// the inner one: the heads of one token share its cache lines.
#include "cpu_parallel.hpp"
#include "cpu_simd.hpp"
#include "cpu_kernels.hpp"
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

// Heads per task: enough tasks for every thread (two per thread where the problem
// allows), as few as possible otherwise so that heads share cache lines.
int64_t heads_per_task(const Problem& p, int threads) {
  const int64_t wanted = 2 * static_cast<int64_t>(threads);
  const int64_t base = p.N * p.L;
  int64_t groups = base >= wanted ? 1 : (wanted + base - 1) / base;
  if (groups > p.M) groups = p.M;
  return (p.M + groups - 1) / groups;
}

// All gradients of the points of (n, q, m) on level l.
template <typename T>
void query_head_level(const BackwardArgs<T>& a, int64_t n, int64_t q, int64_t m, int64_t l) {
  const Problem& p = a.p;
  const LevelGeometry<T>& level = a.levels[l];
  const int64_t start = p.level_starts[l], D = p.D;
  const int64_t gs = a.grad_out.stride[2], vs = a.value.stride[3];
  const T* g = a.grad_out.data + n * a.grad_out.stride[0] + q * a.grad_out.stride[1] + m * D * gs;
  const T* value_level = a.value.data + n * a.value.stride[0] + start * a.value.stride[1] +
                         m * a.value.stride[2];
  T* gv_level = a.grad_value + ((n * p.S + start) * p.M + m) * D;
  // Index of the level's point 0 in the (contiguous) gradients, either layout.
  const int64_t sample0 = ((n * p.Lq + q) * p.M + m) * p.P_total + level.first_point;
  const T* loc_point0 = a.loc.data + n * a.loc.stride[0] + q * a.loc.stride[1] +
                        m * a.loc.stride[2] + level.loc_offset;
  const T* attn_point0 = a.attn.data + n * a.attn.stride[0] + q * a.attn.stride[1] +
                         m * a.attn.stride[2] + level.attn_offset;

  for (int64_t pt = 0; pt < level.points; ++pt) {
    T* grad_xy = a.grad_loc + (sample0 + pt) * 2;
    T* grad_a = a.grad_attn + sample0 + pt;
    const T* xy = loc_point0 + pt * a.loc.stride[4];
    detail::Corners<T> c;
    if (!detail::mode_corners<T>(level, a.discrete, xy[0], xy[a.loc.stride[5]], &c)) {
      grad_xy[0] = grad_xy[1] = *grad_a = T(0);
      continue;
    }
    const T A = attn_point0[pt * a.attn.stride[4]];
    T dots[4];
    for (int k = 0; k < 4; ++k) {
      dots[k] = c.inside[k] ? dot_axpy(D, g, gs, value_level + c.offset[k] * a.value.stride[1], vs,
                                       A * c.weight[k], gv_level + c.offset[k] * p.M * D)
                            : T(0);
    }
    detail::sample_gradients(c, dots, A, level.scale_x, level.scale_y, grad_a, &grad_xy[0],
                             &grad_xy[1]);
  }
}

template <typename T>
void backward_impl(const BackwardArgs<T>& a) {
  const Problem& p = a.p;
  const TaskRun run(p);
  const Blocks groups(p.M, heads_per_task(p, run.threads));
  const int64_t tasks = p.N * p.L * groups.count;

#pragma omp parallel for schedule(dynamic, 1) num_threads(run.threads) if (run.parallel)
  for (int64_t task = 0; task < tasks; ++task) {
    const ScopedFpMode caller_mode(run.fp_mode);
    const int64_t n = task / (p.L * groups.count), l = (task / groups.count) % p.L;
    const int64_t group = task % groups.count;
    const int64_t m_begin = groups.begin(group), m_end = groups.end(group);
    const int64_t start = p.level_starts[l], tokens = p.heights[l] * p.widths[l];

    // Zero this task's grad_value: tokens start .. start + tokens - 1, heads m_begin.. .
    for (int64_t s = start; s < start + tokens; ++s) {
      T* row = a.grad_value + ((n * p.S + s) * p.M + m_begin) * p.D;
      for (int64_t i = 0; i < (m_end - m_begin) * p.D; ++i) row[i] = T(0);
    }
    for (int64_t q = 0; q < p.Lq; ++q) {
      for (int64_t m = m_begin; m < m_end; ++m) query_head_level(a, n, q, m, l);
    }
  }
}

}  // namespace

void backward(const Problem& p, const Options& options, const TensorView& value,
              const TensorView& sampling_locations, const TensorView& attention_weights,
              const TensorView& grad_output, const TensorView& grad_value,
              const TensorView& grad_sampling_locations,
              const TensorView& grad_attention_weights) {
  with_inputs(p, options, value, sampling_locations, attention_weights,
              [&](auto tag, const auto& in) {
                using T = typename decltype(tag)::type;
                backward_impl<T>({in, Strided<T, 3>(grad_output), static_cast<T*>(grad_value.data),
                                  static_cast<T*>(grad_sampling_locations.data),
                                  static_cast<T*>(grad_attention_weights.data)});
              });
}

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
