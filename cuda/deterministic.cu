// grad_value of the deterministic CUDA backward: a gather over sorted samples, so that
// every element is one thread's sum in a fixed order, with no atomics.
//
// A sample at pixel (h, w) reads the 2x2 cell whose top-left corner is (h0, w0) =
// (floor(h), floor(w)), with h0 in [-1, H-1] and w0 in [-1, W-1]; a discrete-mode sample
// reads the one pixel (i, j) (detail::discrete_corners): corner 0 of cell (i, j), its
// corners 1..3 unused. Cells are numbered per (n, m) head and level:
// key = ((n*M + m) * cells + cell_start[l]) + (h0+1)*(W+1) + (w0+1),
// where cells = sum_l (H_l+1)*(W_l+1); skipped samples get the key K = N*M*cells.
//   1. keys_kernel: the key of every sample, and the sample ids 0, 1, 2, ... (sample id
//      ((n*Lq + q)*M + m)*P_total + point, the order of attention_weights in either layout)
//   2. cub::DeviceRadixSort::SortPairs (stable): sample ids ordered by key, and by id
//      within a key.
//   3. segment_kernel: seg[k] = first position of key k in the sorted keys (k = 0..K).
//   4. gather_kernel: one group of G lanes per value token (n, s, m), one lane per channel
//      vector. Token (i, j) of level l is corner 3, 2, 1, 0 of the cells with top-left
//      (i-1, j-1), (i-1, j), (i, j-1), (i, j); for corner k = 0..3 in turn (discrete
//      mode: only k = 0, the cell (i, j), so each sample is added once, to its pixel), the
//      lanes walk that cell's samples in id order and add A * weight_k * g to registers,
//      then store (in the output type: half types are summed in float32 and cast once).
// Every step is deterministic, so grad_value is bitwise identical from run to run. The
// cost over the atomic backward is the sort (about 32 bytes of keys and ids per sample,
// written and read a few times) and the recomputation of each sample's corners in the
// gather; see docs/cuda.md.
//
// Steps 2 and 3, which depend on no element type, are in deterministic_sort.cu: the radix
// sort is the costliest code to compile, and there it compiles once, in parallel with
// this file, and is not recompiled when the kernels here change.
//
// Mixed precision: sampling_locations and attention_weights are read in the companion
// type C (common.cuh): SampleGeometry and keys_kernel depend on C only (a half value with
// float32 companions reuses the float32 keys_kernel), gather_kernel on T and C.
#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

constexpr const char* kOp = "ms_deform_attn_backward (deterministic)";

// C: the element type of loc and attn (computed in acc_t<C>, which is acc_t<T> for every
// valid companion C of value's T).
template <typename C>
struct SampleGeometry {
  const C* loc;   // (N, Lq, M, L, P, 2), or (N, Lq, M, P_total, 2) viewed with a zero
  Strides<6> ls;  //   level stride (point_strides_of)
  const C* attn;  // (N, Lq, M, L, P), or (N, Lq, M, P_total) likewise
  Strides<5> as;
  int64_t Lq, M, L, P_total;
  bool align_corners;
  Levels levels;
};

struct SampleIndex {
  int64_t n, q, m, point;  // point: 0 .. P_total - 1, over all levels
};

// Sample id i = ((n*Lq + q)*M + m)*P_total + point, the order of attention_weights.
__device__ __forceinline__ SampleIndex
decode_sample(int64_t i, int64_t Lq, int64_t M, int64_t P_total) {
  SampleIndex s;
  s.point = i % P_total;
  i /= P_total;
  s.m = i % M;
  i /= M;
  s.q = i % Lq;
  s.n = i / Lq;
  return s;
}

// The corners and attention weight of sample `s`, whose level is `lv`, in mode `Mode`
// (ModeTag); false when the sample is skipped.
template <typename Mode, typename C>
__device__ __forceinline__ bool sample_of(
    const SampleGeometry<C>& g, const SampleIndex& s, const LevelDesc& lv,
    detail::Corners<acc_t<C>>* c, acc_t<C>* a) {
  using A = acc_t<C>;
  const detail::Level<A> level = detail::make_level<A>(lv.H, lv.W, g.align_corners);
  const C* xy = g.loc + (s.n * g.ls.s[0] + s.q * g.ls.s[1] + s.m * g.ls.s[2] + lv.loc_base +
                         s.point * g.ls.s[4]);
  if (!detail::mode_corners(level, Mode::discrete, to_acc(xy[0]), to_acc(xy[g.ls.s[5]]), c)) {
    return false;
  }
  *a = to_acc(g.attn
                  [s.n * g.as.s[0] + s.q * g.as.s[1] + s.m * g.as.s[2] + lv.attn_base +
                   s.point * g.as.s[4]]);
  return true;
}

template <typename C, typename Mode>
__global__ void keys_kernel(
    const SampleGeometry<C> g, int64_t samples, int64_t cells, uint64_t sentinel,
    uint64_t* __restrict__ keys, uint64_t* __restrict__ ids) {
  using A = acc_t<C>;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < samples;
       i += stride) {
    const SampleIndex s = decode_sample(i, g.Lq, g.M, g.P_total);
    const LevelDesc lv = g.levels.get(g.levels.level_of_point(s.point, g.L));
    detail::Corners<A> c;
    A a;
    uint64_t key = sentinel;
    if (sample_of<Mode>(g, s, lv, &c, &a)) {
      // The sample's cell, (h0, w0) in -1 .. H-1 x -1 .. W-1 (discrete: the pixel (i, j)).
      key = static_cast<uint64_t>(
          (s.n * g.M + s.m) * cells + lv.cell_start + (c.h0 + 1) * (lv.W + 1) + (c.w0 + 1));
    }
    keys[i] = key;
    ids[i] = static_cast<uint64_t>(i);
  }
}

template <typename T, typename C>
struct GatherParams {
  static_assert(valid_companion<T, C>(), "C is T, or float for a half T");
  SampleGeometry<C> geo;
  const T* grad_out;  // (N, Lq, M*D)
  Strides<3> gs;
  T* grad_value;        // (N, S, M, D) contiguous
  const uint64_t* ids;  // sample ids sorted by key
  const int64_t* seg;   // seg[key] .. seg[key + 1]: the key's positions in ids
  int64_t S, D, cells;
  int64_t tokens;  // N * S * M
  int64_t vecs;    // channel vectors per head
  int group;       // lanes per token
  int tokens_per_block;
};

// Blocks per multiprocessor gather_kernel<T, V> is compiled for: kMinBlocks, but 3 for
// the float64 vector kernel, which needs about 76 registers (it spills under 64).
template <typename T, int V>
constexpr int gather_min_blocks() {
  return sizeof(T) == 8 && V > 1 ? 3 : kMinBlocks;
}

template <typename T, typename C, int V, typename Mode>
__global__ void __launch_bounds__(kBlockThreads, (gather_min_blocks<T, V>()))
    gather_kernel(const GatherParams<T, C> p) {
  using A = acc_t<T>;
  const SampleGeometry<C>& geo = p.geo;
  const int lane = static_cast<int>(threadIdx.x) % p.group;
  const int slot = static_cast<int>(threadIdx.x) / p.group;
  const int64_t token_blocks = (p.tokens + p.tokens_per_block - 1) / p.tokens_per_block;

  for (int64_t tb = blockIdx.x; tb < token_blocks; tb += gridDim.x) {
    const int64_t t = tb * p.tokens_per_block + slot;
    if (t >= p.tokens) continue;
    const int64_t m = t % geo.M, ns = t / geo.M;
    const int64_t s = ns % p.S, n = ns / p.S;
    // The level holding token s, and the token's index within it.
    int64_t l = 0;
    while (l + 1 < geo.L && geo.levels.get(l + 1).start <= s) ++l;
    const LevelDesc lv = geo.levels.get(l);
    const int64_t local = s - lv.start;
    const int64_t i = local / lv.W, j = local % lv.W;
    const int64_t head_keys = (n * geo.M + m) * p.cells + lv.cell_start;

    for (int64_t vec = lane; vec < p.vecs; vec += p.group) {
      A acc[V];
#pragma unroll
      for (int e = 0; e < V; ++e) acc[e] = A(0);
      // Discrete mode: a sample reads only corner 0 of its cell (its pixel), so only the
      // cell (i, j) has samples that read token (i, j).
      for (int k = 0; k < (Mode::discrete ? 1 : 4); ++k) {
        // The cell whose corner k is token (i, j), in extended coordinates (h0+1, w0+1).
        const int64_t eh = k < 2 ? i + 1 : i;
        const int64_t ew = k % 2 == 0 ? j + 1 : j;
        const int64_t key = head_keys + eh * (lv.W + 1) + ew;
        const int64_t end = p.seg[key + 1];
        for (int64_t pos = p.seg[key]; pos < end; ++pos) {
          // The key's samples are on level lv (its cell keys are the level's own).
          const SampleIndex si =
              decode_sample(static_cast<int64_t>(p.ids[pos]), geo.Lq, geo.M, geo.P_total);
          detail::Corners<A> c;
          A a;
          // Not reached: keyed samples are in range.
          if (!sample_of<Mode>(geo, si, lv, &c, &a)) continue;
          // Not reached either: corner k of the cell is token (i, j), inside the level (and
          // k = 0 for a discrete sample, whose corners 1..3 are outside).
          if (!c.inside[k] || c.offset[k] != local) continue;
          const A w = a * c.weight[k];
          const T* g_head =
              p.grad_out + si.n * p.gs.s[0] + si.q * p.gs.s[1] + si.m * p.D * p.gs.s[2];
          A g[V];
          if (V > 1) {
            load_vec<T, V>(g_head + vec * V, g);
          } else {
            g[0] = to_acc(g_head[vec * p.gs.s[2]]);
          }
#pragma unroll
          for (int e = 0; e < V; ++e) acc[e] += w * g[e];
        }
      }
      store_vec<T, V>(p.grad_value + t * p.D + vec * V, acc);
    }
  }
}

template <typename T, typename C, typename Mode>
void run_gather(
    const Problem& p, const Options& options, const Levels& levels, int64_t cells,
    const GatherBuffers& buffers, const TensorView& loc, const TensorView& attn,
    const TensorView& grad_output, const TensorView& grad_value) {
  const cudaStream_t stream = static_cast<cudaStream_t>(options.stream);
  const int64_t samples = p.N * p.Lq * p.M * p.P_total;
  const int64_t count_keys = p.N * p.M * cells;  // also the key of skipped samples

  SampleGeometry<C> geo;
  geo.loc = static_cast<const C*>(loc.data);
  geo.ls = point_strides_of<6>(loc);
  geo.attn = static_cast<const C*>(attn.data);
  geo.as = point_strides_of<5>(attn);
  geo.Lq = p.Lq;
  geo.M = p.M;
  geo.L = p.L;
  geo.P_total = p.P_total;
  geo.align_corners = options.align_corners;
  geo.levels = levels;

  // 1. keys and ids.
  keys_kernel<C, Mode><<<item_grid(samples), kBlockThreads, 0, stream>>>(
      geo, samples, cells, static_cast<uint64_t>(count_keys), buffers.keys_in, buffers.ids_in);
  check_launch(kOp, "keys_kernel", stream);

  // 2. and 3. (deterministic_sort.cu): ids sorted by key, and the segment starts.
  sort_by_cell(buffers, samples, count_keys, stream);

  // 4. the gather.
  GatherParams<T, C> gp;
  gp.geo = geo;
  gp.grad_out = static_cast<const T*>(grad_output.data);
  gp.gs = strides_of<3>(grad_output);
  gp.grad_value = static_cast<T*>(grad_value.data);
  gp.ids = buffers.ids_out;
  gp.seg = buffers.seg;
  gp.S = p.S;
  gp.D = p.D;
  gp.cells = cells;
  gp.tokens = p.N * p.S * p.M;
  constexpr int V = kVec<T>;
  const bool vector = vector_ok(grad_output, V, p.D) && vector_ok(grad_value, V, p.D);
  gp.vecs = vector ? p.D / V : p.D;
  gp.group = group_size(gp.vecs);
  gp.tokens_per_block = kBlockThreads / gp.group;
  const int64_t token_blocks = (gp.tokens + gp.tokens_per_block - 1) / gp.tokens_per_block;
  if (vector) {
    gather_kernel<T, C, V, Mode><<<grid_for(token_blocks), kBlockThreads, 0, stream>>>(gp);
  } else {
    gather_kernel<T, C, 1, Mode><<<grid_for(token_blocks), kBlockThreads, 0, stream>>>(gp);
  }
  check_launch(kOp, "gather_kernel", stream);
}

}  // namespace

void gather_grad_value(
    const Problem& p, const Options& options, const Levels& levels, int64_t cells,
    const GatherBuffers& buffers, const TensorView& sampling_locations,
    const TensorView& attention_weights, const TensorView& grad_output,
    const TensorView& grad_value) {
  with_types(p, kOp, [&](auto tag, auto companion) {
    using T = typename decltype(tag)::type;
    using C = typename decltype(companion)::type;
    with_mode(p.mode, [&](auto mode) {
      run_gather<T, C, decltype(mode)>(
          p, options, levels, cells, buffers, sampling_locations, attention_weights, grad_output,
          grad_value);
    });
  });
}

}  // namespace cuda
}  // namespace msdacore
