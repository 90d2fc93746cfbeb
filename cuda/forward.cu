// CUDA forward: output (N, Lq, M*D).
//
// One group of G lanes per head (n, q, m), one lane per channel vector (common.cuh). The
// sample weights of a point are computed once, by one thread of the block, into shared
// memory: the block's heads' points are processed in chunks; for each chunk the block
// first fills one record per (head, point) (the four token indexes and A * corner weight),
// then every lane sums its channel vectors over the chunk's records. Each lane adds its
// terms in (level, point, corner) order, as the CPU kernels do. A discrete-mode sample
// (mode=discrete) is one corner of weight A.
#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

constexpr const char* kOp = "ms_deform_attn_forward";

// The kernel's parameters: the shared part (common.cuh) and the output.
template <typename T>
struct ForwardParams : HeadParams<T> {
  T* out;                // (N, Lq, M*D), contiguous
};

// One (head, point) record: tokens of the four corners (-1: contributes nothing) and their
// weights A * bilinear weight.
template <typename T>
struct ForwardPoint {
  int64_t token[4];
  acc_t<T> weight[4];
};

// Fills the record of point `point` of head `head`, sampled in mode `Mode` (empty when
// there is none, or the sample is skipped).
template <typename Mode, typename T>
__device__ void fill_point(Mode, const ForwardParams<T>& p, int64_t head, int64_t point,
                           ForwardPoint<T>* rec) {
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

template <typename T, int V, typename Mode>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    forward_kernel(const ForwardParams<T> p) {
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

template <typename T>
void launch_forward(const Problem& p, const Options& options, const TensorView& value,
                    const TensorView& loc, const TensorView& attn, const TensorView& output,
                    Workspace& workspace) {
  const cudaStream_t stream = static_cast<cudaStream_t>(options.stream);
  ForwardParams<T> fp;
  fp.out = static_cast<T*>(output.data);
  constexpr int V = kVec<T>;
  const bool vector = vector_ok(value, V, p.D) && vector_ok(output, V, p.D);
  const LaunchShape shape =
      set_head_params<ForwardPoint<T>>(p, options, value, loc, attn, vector, &fp);
  make_levels(p, &fp.ls, &fp.as, stream, kOp, &fp.levels, workspace);
  with_mode(p.mode, [&](auto mode) {
    using Mode = decltype(mode);
    launch_head_kernel(forward_kernel<T, V, Mode>, forward_kernel<T, 1, Mode>, vector, shape, fp,
                       stream, kOp, "forward_kernel");
  });
}

}  // namespace

// Only the level table of problems with many levels.
int64_t forward_workspace_size(const Problem& p, const Options&) {
  Workspace workspace = Workspace::counting();
  Levels levels;
  make_levels(p, nullptr, nullptr, nullptr, kOp, &levels, workspace);
  return workspace.used();
}

void forward(const Problem& p, const Options& options, const TensorView& value,
             const TensorView& sampling_locations, const TensorView& attention_weights,
             const TensorView& output, Workspace& workspace) {
  DeviceGuard guard(p.device.index, kOp);
  check_input_pointers(kOp, value, sampling_locations, attention_weights);
  check_pointer(kOp, "output", output);
  with_float_type(p.dtype, kOp, [&](auto tag) {
    using T = typename decltype(tag)::type;
    launch_forward<T>(p, options, value, sampling_locations, attention_weights, output,
                      workspace);
  });
}

}  // namespace cuda
}  // namespace msdacore
