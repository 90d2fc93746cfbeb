// CUDA forward: output (N, Lq, M*D).
//
// One group of G lanes per head (n, q, m), one lane per channel vector (common.cuh). The
// sample weights of a point are computed once, by one thread of the block, into shared
// memory: the block's heads' points are processed in chunks; for each chunk the block
// first fills one record per (head, point) (the four token indexes and A * corner weight),
// then every lane sums its channel vectors over the chunk's records. Each lane adds its
// terms in (level, point, corner) order, as the CPU kernels do. A discrete-mode sample
// (mode=discrete) is one corner of weight A. Mixed precision: locations and weights are
// read in the companion type C (common.cuh), after widen_companions.
#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

// The kernel's parameters: the shared part (common.cuh) and the output.
template <typename T, typename C>
struct ForwardParams : HeadParams<T, C> {
  T* out;  // (N, Lq, M*D), contiguous
};

constexpr const char* kOp = "ms_deform_attn_forward";

// One (head, point) record: tokens of the four corners (-1: contributes nothing) and their
// weights A * bilinear weight.
template <typename T>
struct ForwardPoint {
  int64_t token[4];
  acc_t<T> weight[4];
};

// Fills the record of point `point` of head `head`, sampled in mode `Mode` (empty when
// there is none, or the sample is skipped).
template <typename Mode, typename T, typename C>
__device__ void fill_point(
    Mode, const ForwardParams<T, C>& p, int64_t head, int64_t point, ForwardPoint<T>* rec) {
  using A = acc_t<T>;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    rec->token[k] = -1;
    rec->weight[k] = A(0);
  }
  HeadSample<A> s;
  if (!head_sample<Mode>(p, head, point, &s)) return;
  const A a = attention_weight(p, s);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (s.c.inside[k]) {
      rec->token[k] = s.lv.start + s.c.offset[k];
      rec->weight[k] = a * s.c.weight[k];
    }
  }
}

template <typename T, typename C, int V, typename Mode>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    forward_kernel(const ForwardParams<T, C> p) {
  using A = acc_t<T>;
  const HeadThread<ForwardPoint<T>> t = head_thread<ForwardPoint<T>>(p);
  const int64_t rounds = (p.vecs + p.group - 1) / p.group;
  const ForwardPoint<T>* mine = t.records + static_cast<int64_t>(t.slot) * p.chunk;

  // Every loop bound below is the same for all threads of the block, so every thread
  // reaches every __syncthreads().
  for (int64_t hb = blockIdx.x; hb < t.head_blocks; hb += gridDim.x) {
    const Head h = head_at(p, hb, t.slot);
    const T* value_head = p.value + h.n * p.vs.s[0] + h.m * p.vs.s[2];

    for (int64_t r = 0; r < rounds; ++r) {
      const int64_t vec = r * p.group + t.lane;
      const bool has_vec = h.active && vec < p.vecs;
      const T* value_vec = value_head + vec * V * p.vs.s[3];
      A acc[V];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = A(0);

      for (int64_t c0 = 0; c0 < p.P_total; c0 += p.chunk) {
        const int count = fill_chunk<Mode>(p, hb, c0, t.records);
        if (has_vec) {
          for (int j = 0; j < count; ++j) {
            const ForwardPoint<T>& rec = mine[j];
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (rec.token[k] < 0) continue;
              A v[V];
              if (V > 1) {
                load_vec<T, V>(value_vec + rec.token[k] * p.vs.s[1], v);
              } else {
                v[0] = to_acc(value_vec[rec.token[k] * p.vs.s[1]]);
              }
              const A w = rec.weight[k];
#pragma unroll
              for (int e = 0; e < V; ++e) acc[e] += w * v[e];
            }
          }
        }
      }
      if (has_vec) store_vec<T, V>(p.out + h.head * p.D + vec * V, acc);
    }
  }
}

// The workspace, in the order it is taken: the float32 copy of sampling_locations or
// attention_weights (mixed precision, widen_companions), then the level table (many levels).
template <typename T, typename C>
void launch_forward(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, const TensorView& output, Workspace& workspace) {
  const cudaStream_t stream = static_cast<cudaStream_t>(options.stream);
  const Companions read = widen_companions(p, loc, attn, stream, kOp, workspace);
  ForwardParams<T, C> fp;
  fp.out = static_cast<T*>(output.data);
  constexpr int V = kVec<T>;
  const bool vector = vector_ok(value, V, p.D) && vector_ok(output, V, p.D);
  const LaunchShape shape =
      set_head_params<ForwardPoint<T>>(p, options, value, read.loc, read.attn, vector, &fp);
  make_levels(p, &fp.ls, &fp.as, stream, kOp, &fp.levels, workspace);
  with_mode(p.mode, [&](auto mode) {
    using Mode = decltype(mode);
    launch_head_kernel(
        forward_kernel<T, C, V, Mode>, forward_kernel<T, C, 1, Mode>, vector, shape, fp, stream,
        kOp, "forward_kernel");
  });
}

}  // namespace

// The float32 copy of mixed-precision inputs and the level table of problems with many
// levels (launch_forward's order).
int64_t forward_workspace_size(const Problem& p, const Options&, const TensorView&) {
  Workspace workspace = Workspace::counting();
  const Companions shapes = companion_shapes(p);
  widen_companions(p, shapes.loc, shapes.attn, nullptr, kOp, workspace);
  Levels levels;
  make_levels(p, nullptr, nullptr, nullptr, kOp, &levels, workspace);
  return workspace.used();
}

void forward(
    const Problem& p, const Options& options, const TensorView& value,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& output, Workspace& workspace) {
  DeviceGuard guard(p.device.index, kOp);
  check_input_pointers(kOp, value, sampling_locations, attention_weights);
  check_pointer(kOp, "output", output);
  with_types(p, kOp, [&](auto tag, auto companion) {
    using T = typename decltype(tag)::type;
    using C = typename decltype(companion)::type;
    launch_forward<T, C>(
        p, options, value, sampling_locations, attention_weights, output, workspace);
  });
}

}  // namespace cuda
}  // namespace msdacore
