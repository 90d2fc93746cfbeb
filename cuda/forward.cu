// CUDA forward: output (N, Lq, M*D).
//
// One group of G lanes per head (n, q, m), one lane per channel vector (common.cuh). The
// sample weights of a point are computed once, by one thread of the block, into shared
// memory: the block's heads' points are processed in chunks; for each chunk the block
// first fills one record per (head, point) (the four token indexes and A * corner weight),
// then every lane sums its channel vectors over the chunk's records. Each lane adds its
// terms in (level, point, corner) order, as the CPU kernels do.
#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

constexpr const char* kOp = "ms_deform_attn_forward";

template <typename T>
struct ForwardParams {
  const T* value;        // (N, S, M, D)
  Strides<4> vs;         //   its element strides
  const T* loc;          // (N, Lq, M, L, P, 2)
  Strides<6> ls;
  const T* attn;         // (N, Lq, M, L, P)
  Strides<5> as;
  T* out;                // (N, Lq, M*D), contiguous
  int64_t M, D, Lq, P, LP;
  int64_t heads;         // N * Lq * M
  int64_t vecs;          // channel vectors per head: D / V
  int group;             // lanes per head (G)
  int heads_per_block;   // kBlockThreads / G
  int chunk;             // points per head and chunk
  bool align_corners;
  Levels levels;
};

// One (head, point) record: tokens of the four corners (-1: contributes nothing) and their
// weights A * bilinear weight.
template <typename T>
struct ForwardPoint {
  int64_t token[4];
  acc_t<T> weight[4];
};

template <typename T>
__device__ void fill_point(const ForwardParams<T>& p, int64_t head, int64_t point,
                           ForwardPoint<T>* rec) {
  using A = acc_t<T>;
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    rec->token[k] = -1;
    rec->weight[k] = A(0);
  }
  if (head >= p.heads) return;
  const int64_t m = head % p.M, nq = head / p.M;
  const int64_t q = nq % p.Lq, n = nq / p.Lq;
  const int64_t l = point / p.P, pt = point % p.P;
  const LevelDesc lv = p.levels.get(l);
  const detail::Level<A> level = detail::make_level<A>(lv.H, lv.W, p.align_corners);
  const T* xy = p.loc + n * p.ls.s[0] + q * p.ls.s[1] + m * p.ls.s[2] + l * p.ls.s[3] +
                pt * p.ls.s[4];
  detail::Corners<A> c;
  if (!detail::sample_corners(level, to_acc(xy[0]), to_acc(xy[p.ls.s[5]]), &c)) return;
  const A a = to_acc(p.attn[n * p.as.s[0] + q * p.as.s[1] + m * p.as.s[2] + l * p.as.s[3] +
                            pt * p.as.s[4]]);
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (c.inside[k]) {
      rec->token[k] = lv.start + c.offset[k];
      rec->weight[k] = a * c.weight[k];
    }
  }
}

template <typename T, int V>
__global__ void __launch_bounds__(kBlockThreads) forward_kernel(const ForwardParams<T> p) {
  using A = acc_t<T>;
  extern __shared__ __align__(16) unsigned char shared_raw[];
  ForwardPoint<T>* records = reinterpret_cast<ForwardPoint<T>*>(shared_raw);

  const int lane = static_cast<int>(threadIdx.x) % p.group;
  const int slot = static_cast<int>(threadIdx.x) / p.group;
  const int64_t head_blocks = (p.heads + p.heads_per_block - 1) / p.heads_per_block;
  const int64_t rounds = (p.vecs + p.group - 1) / p.group;
  const ForwardPoint<T>* mine = records + static_cast<int64_t>(slot) * p.chunk;

  // Every loop bound below is the same for all threads of the block, so every thread
  // reaches every __syncthreads().
  for (int64_t hb = blockIdx.x; hb < head_blocks; hb += gridDim.x) {
    const int64_t head = hb * p.heads_per_block + slot;
    const bool active = head < p.heads;
    const int64_t m = active ? head % p.M : 0, nq = active ? head / p.M : 0;
    const int64_t n = nq / p.Lq;
    const T* value_head = p.value + n * p.vs.s[0] + m * p.vs.s[2];

    for (int64_t r = 0; r < rounds; ++r) {
      const int64_t vec = r * p.group + lane;
      const bool has_vec = active && vec < p.vecs;
      const T* value_vec = value_head + vec * V * p.vs.s[3];
      A acc[V];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = A(0);

      for (int64_t c0 = 0; c0 < p.LP; c0 += p.chunk) {
        const int count = static_cast<int>(p.LP - c0 < p.chunk ? p.LP - c0 : p.chunk);
        __syncthreads();  // the previous chunk's records are no longer read
        for (int i = static_cast<int>(threadIdx.x); i < p.heads_per_block * count;
             i += static_cast<int>(blockDim.x)) {
          const int s = i / count, j = i % count;
          fill_point(p, hb * p.heads_per_block + s, c0 + j,
                     &records[static_cast<int64_t>(s) * p.chunk + j]);
        }
        __syncthreads();
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
      if (has_vec) store_vec<T, V>(p.out + head * p.D + vec * V, acc);
    }
  }
}

template <typename T>
void launch_forward(const Problem& p, const Options& options, const TensorView& value,
                    const TensorView& loc, const TensorView& attn, const TensorView& output,
                    Workspace& workspace) {
  const cudaStream_t stream = static_cast<cudaStream_t>(options.stream);
  ForwardParams<T> fp;
  make_levels(p, stream, kOp, &fp.levels, workspace);
  fp.out = static_cast<T*>(output.data);
  constexpr int V = kVec<T>;
  const bool vector = vector_ok(value, V, p.D) && vector_ok(output, V, p.D);
  const LaunchShape shape =
      set_head_params<T, ForwardPoint<T>>(p, options, value, loc, attn, vector, &fp);
  if (vector) {
    forward_kernel<T, V><<<shape.grid, kBlockThreads, shape.shared, stream>>>(fp);
  } else {
    forward_kernel<T, 1><<<shape.grid, kBlockThreads, shape.shared, stream>>>(fp);
  }
  check_launch(kOp, "forward_kernel", stream);
}

}  // namespace

// Only the level table of problems with many levels.
int64_t forward_workspace_size(const Problem& p, const Options&) {
  Workspace workspace = Workspace::counting();
  Levels levels;
  make_levels(p, nullptr, kOp, &levels, workspace);
  return workspace.used();
}

void forward(const Problem& p, const Options& options, const TensorView& value,
             const TensorView& sampling_locations, const TensorView& attention_weights,
             const TensorView& output, Workspace& workspace) {
  DeviceGuard guard(p.device.index, kOp);
  check_pointer(kOp, "value", value);
  check_pointer(kOp, "sampling_locations", sampling_locations);
  check_pointer(kOp, "attention_weights", attention_weights);
  check_pointer(kOp, "output", output);
  switch (p.dtype) {
    case DType::Float32:
      launch_forward<float>(p, options, value, sampling_locations, attention_weights, output,
                             workspace);
      break;
    case DType::Float64:
      launch_forward<double>(p, options, value, sampling_locations, attention_weights, output,
                             workspace);
      break;
    case DType::Float16:
      launch_forward<__half>(p, options, value, sampling_locations, attention_weights, output,
                             workspace);
      break;
    case DType::BFloat16:
      launch_forward<__nv_bfloat16>(p, options, value, sampling_locations, attention_weights,
                                    output, workspace);
      break;
    default:
      throw DTypeError(std::string("msdacore ") + kOp + ": unsupported dtype " +
                       dtype_name(p.dtype));
  }
}

}  // namespace cuda
}  // namespace msdacore
