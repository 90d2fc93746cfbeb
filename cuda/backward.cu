// CUDA backward: grad_value (N, S, M, D), grad_sampling_locations (N, Lq, M, L, P, 2),
// grad_attention_weights (N, Lq, M, L, P) (in the flattened layout (N, Lq, M, P_total, 2)
// and (N, Lq, M, P_total): either way, contiguous, point `point` of head `head` at
// head * P_total + point).
//
// Same layout as the forward (common.cuh, forward.cu): one group of G lanes per head
// (n, q, m), one lane per channel vector, and the corners of each (head, point) computed
// once into a shared-memory record. For each point, every lane forms its part of the four
// dot products <g, v_k> over its channels; the group sums them with a fixed butterfly of
// warp shuffles, and the group's first lane turns them into the location and attention
// gradients (detail::sample_gradients). Those two are therefore reproducible bit for bit.
// A discrete-mode sample (mode=discrete) is one corner of weight 1 and has zero location
// gradients (sample_gradients).
//
// grad_value, default: every lane adds A * corner weight * g to the four corner tokens
// with atomicAdd (into a float32 buffer for float16/bfloat16, cast at the end). Fast, but
// the order of the additions varies from run to run, so the last bits do.
// grad_value, deterministic: this kernel leaves it alone and deterministic.cu gathers it.
//
// Mixed precision: locations and weights are read, and their gradients written, in the
// companion type C (common.cuh). When only one of the two inputs is float32, the other is
// read from its float32 copy (widen_companions) and its gradient is written to a float32
// buffer, then cast to its dtype.
#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

constexpr const char* kOp = "ms_deform_attn_backward";

// The kernel's parameters: the shared part (common.cuh), grad_output and the gradients.
template <typename T, typename C>
struct BackwardParams : HeadParams<T, C> {
  const T* grad_out;  // (N, Lq, M*D)
  Strides<3> gs;
  acc_t<T>* grad_value;  // (N, S, M, D) contiguous accumulator, zeroed; null: not written
  C* grad_loc;           // (N, Lq, M, P_total, 2) contiguous (either layout)
  C* grad_attn;          // (N, Lq, M, P_total) contiguous
  int64_t S;
};

template <typename T>
struct BackwardPoint {
  detail::Corners<acc_t<T>> c;
  int64_t start;    // first token of the level
  acc_t<T> a;       // attention weight A
  acc_t<T> sx, sy;  // coordinate scales of the level
  int valid;        // 0: skipped sample (every gradient of it is 0)
};

// Fills the record of point `point` of head `head`, sampled in mode `Mode` (valid = 0 when
// there is none, or the sample is skipped).
template <typename Mode, typename T, typename C>
__device__ void fill_point(
    Mode, const BackwardParams<T, C>& p, int64_t head, int64_t point, BackwardPoint<T>* rec) {
  rec->valid = 0;
  HeadSample<acc_t<T>> s;
  if (!head_sample<Mode>(p, head, point, &s)) return;
  rec->c = s.c;
  rec->start = s.lv.start;
  rec->a = attention_weight(p, s);
  rec->sx = s.level.scale_x;
  rec->sy = s.level.scale_y;
  rec->valid = 1;
}

template <typename T, int V, typename C>
__device__ __forceinline__ void load_grad(
    const BackwardParams<T, C>& p, const T* g_head, int64_t vec, acc_t<T> (&g)[V]) {
  if (V > 1) {
    load_vec<T, V>(g_head + vec * V, g);
  } else {
    g[0] = to_acc(g_head[vec * p.gs.s[2]]);
  }
}

template <typename T, typename C, int V, typename Mode>
__global__ void __launch_bounds__(kBlockThreads, kMinBlocks)
    backward_kernel(const BackwardParams<T, C> p) {
  using A = acc_t<T>;
  const HeadThread<BackwardPoint<T>> t = head_thread<BackwardPoint<T>>(p);
  const BackwardPoint<T>* mine = t.records + static_cast<int64_t>(t.slot) * p.chunk;

  // Loop bounds are uniform over the block (every thread reaches every __syncthreads())
  // and over each warp (every lane reaches every __shfl_xor_sync()).
  for (int64_t hb = blockIdx.x; hb < t.head_blocks; hb += gridDim.x) {
    const Head h = head_at(p, hb, t.slot);
    const T* value_head = p.value + h.n * p.vs.s[0] + h.m * p.vs.s[2];
    const T* g_head = p.grad_out + h.n * p.gs.s[0] + h.q * p.gs.s[1] + h.m * p.D * p.gs.s[2];
    A* gv_head = p.grad_value != nullptr ? p.grad_value + (h.n * p.S * p.M + h.m) * p.D : nullptr;

    // The lane's first channel vector of g, loaded once per head.
    A g_first[V];
#pragma unroll
    for (int e = 0; e < V; ++e) g_first[e] = A(0);
    if (h.active && t.lane < p.vecs) load_grad<T, V>(p, g_head, t.lane, g_first);

    for (int64_t c0 = 0; c0 < p.P_total; c0 += p.chunk) {
      const int count = fill_chunk<Mode>(p, hb, c0, t.records);

      for (int j = 0; j < count; ++j) {
        const BackwardPoint<T>& rec = mine[j];
        A dots[4] = {A(0), A(0), A(0), A(0)};
        if (h.active && rec.valid) {
          for (int64_t vec = t.lane; vec < p.vecs; vec += p.group) {
            A g[V];
            if (vec == t.lane) {
#pragma unroll
              for (int e = 0; e < V; ++e) g[e] = g_first[e];
            } else {
              load_grad<T, V>(p, g_head, vec, g);
            }
#pragma unroll
            for (int k = 0; k < 4; ++k) {
              if (!rec.c.inside[k]) continue;
              const int64_t token = rec.start + rec.c.offset[k];
              A v[V];
              if (V > 1) {
                load_vec<T, V>(value_head + token * p.vs.s[1] + vec * V, v);
              } else {
                v[0] = to_acc(value_head[token * p.vs.s[1] + vec * p.vs.s[3]]);
              }
              A dot = A(0);
#pragma unroll
              for (int e = 0; e < V; ++e) dot += g[e] * v[e];
              dots[k] += dot;
              if (gv_head != nullptr) {
                const A w = rec.a * rec.c.weight[k];
                A* dst = gv_head + token * p.M * p.D + vec * V;
#pragma unroll
                for (int e = 0; e < V; ++e) atomicAdd(dst + e, w * g[e]);
              }
            }
          }
        }
        // Sum the group's partial dot products (xor offsets below G stay inside the
        // G-aligned group; the whole warp takes part).
        for (int offset = p.group / 2; offset > 0; offset /= 2) {
#pragma unroll
          for (int k = 0; k < 4; ++k) dots[k] += __shfl_xor_sync(0xffffffffu, dots[k], offset);
        }
        if (t.lane == 0 && h.active) {
          const int64_t index = h.head * p.P_total + c0 + j;
          A ga = A(0), gx = A(0), gy = A(0);
          if (rec.valid) {
            detail::sample_gradients(rec.c, dots, rec.a, rec.sx, rec.sy, &ga, &gx, &gy);
          }
          p.grad_attn[index] = Convert<C>::from(ga);
          p.grad_loc[2 * index] = Convert<C>::from(gx);
          p.grad_loc[2 * index + 1] = Convert<C>::from(gy);
        }
      }
    }
  }
}

// dst[i] = src[i] for i < count, from a float32 buffer to the half type.
template <typename T>
__global__ void cast_kernel(const float* __restrict__ src, T* __restrict__ dst, int64_t count) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < count;
       i += stride) {
    dst[i] = Convert<T>::from(src[i]);
  }
}

// Enqueues cast_kernel<T> on `stream` for `count` elements.
template <typename T>
void launch_cast(const float* src, void* dst, int64_t count, cudaStream_t stream) {
  if (count <= 0) return;
  const int64_t blocks = (count + kBlockThreads - 1) / kBlockThreads;
  const int64_t cap = static_cast<int64_t>(multiprocessors()) * 32;
  cast_kernel<T><<<grid_for(blocks < cap ? blocks : cap), kBlockThreads, 0, stream>>>(
      src, static_cast<T*>(dst), count);
  check_launch(kOp, "cast_kernel", stream);
}

// The scratch of one backward call, in the order it is taken from the workspace: the
// float32 copy of sampling_locations or attention_weights (mixed precision with only one
// of them float32), the level table (many levels only), the float32 gradient of that copy,
// then the float32 grad_value accumulator (half types, atomic mode) or the gather's buffers
// (deterministic mode).
struct BackwardBuffers {
  Companions read;  // the views of loc and attn the kernels read
  Levels levels;
  int64_t cells = 0;
  float* grad_loc = nullptr;   // float32 grad_sampling_locations of a widened loc
  float* grad_attn = nullptr;  // float32 grad_attention_weights of a widened attn
  float* accumulator = nullptr;
  GatherBuffers gather;
};

// `loc` / `attn`: sampling_locations / attention_weights (views without data, of their
// shapes and dtypes, when only sizing).
BackwardBuffers take_backward_buffers(
    const Problem& p, const Options& options, const TensorView& loc, const TensorView& attn,
    cudaStream_t stream, Workspace& workspace) {
  BackwardBuffers b;
  b.read = widen_companions(p, loc, attn, stream, kOp, workspace);
  const Strides<6> ls = point_strides_of<6>(b.read.loc);
  const Strides<5> as = point_strides_of<5>(b.read.attn);
  b.cells = make_levels(p, &ls, &as, stream, kOp, &b.levels, workspace);
  // A widened input (its dtype changed to float32) gets a float32 gradient.
  if (b.read.loc.dtype != loc.dtype) {
    b.grad_loc = workspace.take<float>(loc.numel(), "the float32 location gradients");
  }
  if (b.read.attn.dtype != attn.dtype) {
    b.grad_attn = workspace.take<float>(attn.numel(), "the float32 weight gradients");
  }
  const bool half = p.dtype == DType::Float16 || p.dtype == DType::BFloat16;
  if (options.deterministic) {
    b.gather = take_gather_buffers(p, b.cells, stream, workspace);
  } else if (half) {
    b.accumulator =
        workspace.take<float>(p.N * p.S * p.M * p.D, "the float32 grad_value accumulator");
  }
  return b;
}

template <typename T, typename C>
void launch_backward(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, const TensorView& grad_out, const TensorView& grad_value,
    const TensorView& grad_loc, const TensorView& grad_attn, Workspace& workspace) {
  using A = acc_t<T>;
  constexpr bool kHalf = !std::is_same<A, T>::value;
  constexpr bool kMixed = !std::is_same<C, T>::value;  // C = float, T a half type
  const cudaStream_t stream = static_cast<cudaStream_t>(options.stream);
  const int64_t value_count = p.N * p.S * p.M * p.D;

  if (p.Lq == 0) {  // no samples: grad_value is zero, the other two are empty
    check(
        cudaMemsetAsync(grad_value.data, 0, value_count * sizeof(T), stream), kOp,
        "zeroing grad_value");
    return;
  }

  BackwardParams<T, C> bp;
  const BackwardBuffers buffers = take_backward_buffers(p, options, loc, attn, stream, workspace);
  bp.levels = buffers.levels;

  // grad_value accumulator for the atomic mode: the output itself, or the float32 buffer.
  bp.grad_value = nullptr;
  if (!options.deterministic) {
    bp.grad_value =
        kHalf ? reinterpret_cast<A*>(buffers.accumulator) : static_cast<A*>(grad_value.data);
    check(
        cudaMemsetAsync(bp.grad_value, 0, value_count * sizeof(A), stream), kOp,
        "zeroing the grad_value accumulator");
  }

  bp.grad_out = static_cast<const T*>(grad_out.data);
  bp.gs = strides_of<3>(grad_out);
  // Location and weight gradients in C: the outputs themselves, or the float32 buffers of
  // a widened input (cast to its dtype below).
  bp.grad_loc = buffers.grad_loc != nullptr ? reinterpret_cast<C*>(buffers.grad_loc)
                                            : static_cast<C*>(grad_loc.data);
  bp.grad_attn = buffers.grad_attn != nullptr ? reinterpret_cast<C*>(buffers.grad_attn)
                                              : static_cast<C*>(grad_attn.data);
  bp.S = p.S;
  constexpr int V = kVec<T>;
  const bool vector = vector_ok(value, V, p.D) && vector_ok(grad_out, V, p.D);
  const LaunchShape shape = set_head_params<BackwardPoint<T>>(
      p, options, value, buffers.read.loc, buffers.read.attn, vector, &bp);
  with_mode(p.mode, [&](auto mode) {
    using Mode = decltype(mode);
    launch_head_kernel(
        backward_kernel<T, C, V, Mode>, backward_kernel<T, C, 1, Mode>, vector, shape, bp, stream,
        kOp, "backward_kernel");
  });
  if constexpr (kMixed) {
    // The widened input is of value's type T.
    if (buffers.grad_loc != nullptr) {
      launch_cast<T>(buffers.grad_loc, grad_loc.data, grad_loc.numel(), stream);
    }
    if (buffers.grad_attn != nullptr) {
      launch_cast<T>(buffers.grad_attn, grad_attn.data, grad_attn.numel(), stream);
    }
  }

  if (options.deterministic) {
    gather_grad_value(
        p, options, bp.levels, buffers.cells, buffers.gather, buffers.read.loc, buffers.read.attn,
        grad_out, grad_value);
  } else {
    if constexpr (kHalf) {
      launch_cast<T>(buffers.accumulator, grad_value.data, value_count, stream);
    }
  }
}

}  // namespace

int64_t backward_workspace_size(const Problem& p, const Options& options, const TensorView&) {
  if (p.Lq == 0) return 0;
  DeviceGuard guard(p.device.index, kOp);  // the sort's sizing asks the device
  Workspace workspace = Workspace::counting();
  const Companions shapes = companion_shapes(p);
  take_backward_buffers(p, options, shapes.loc, shapes.attn, nullptr, workspace);
  return workspace.used();
}

void backward(
    const Problem& p, const Options& options, const TensorView& value,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights,
    Workspace& workspace) {
  DeviceGuard guard(p.device.index, kOp);
  check_input_pointers(kOp, value, sampling_locations, attention_weights);
  check_pointer(kOp, "grad_output", grad_output);
  check_pointer(kOp, "grad_value", grad_value);
  check_pointer(kOp, "grad_sampling_locations", grad_sampling_locations);
  check_pointer(kOp, "grad_attention_weights", grad_attention_weights);
  with_types(p, kOp, [&](auto tag, auto companion) {
    using T = typename decltype(tag)::type;
    using C = typename decltype(companion)::type;
    launch_backward<T, C>(
        p, options, value, sampling_locations, attention_weights, grad_output, grad_value,
        grad_sampling_locations, grad_attention_weights, workspace);
  });
}

}  // namespace cuda
}  // namespace msdacore
