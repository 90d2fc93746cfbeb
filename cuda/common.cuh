// Internal: what the CUDA kernels and their launch code share: error checks, the device
// guard, the dtype dispatch, element types and their float accumulators, 16-byte vector
// loads, the level table, the thread layout, and the parameters, record fill and launch
// of the per-head kernels (forward.cu, backward.cu).
//
// Thread layout of every per-head kernel: a block of kBlockThreads threads is cut into
// groups of G consecutive lanes (G a power of two <= 32, so a group never straddles a
// warp); each group owns one head (n, q, m) (or one value token (n, s, m)) and its lanes
// split the head's D channels into channel vectors of V elements (V = 16 bytes / element
// size where the layout allows, else 1), lane i taking vectors i, i + G, i + 2G, ...
//
// Mixed precision: the kernels read sampling_locations and attention_weights in a companion
// type C next to value's T: C = T, or C = float with a float16 / bfloat16 T when either of
// the two is float32 (with_types, widen_companions below); location and weight gradients
// are written in C.
//
// Points: a head's P_total points, level l's P_l points first_point .. first_point + P_l - 1
// (LevelDesc), in the uniform layout (P_l = P) and the flattened one alike; the level of a
// point is found in the level table, its address from the level's offsets (as the CPU
// kernels' LevelGeometry, LevelDesc::loc_base).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "backend.hpp"  // cpp/src: the backend interface, Workspace
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/errors.hpp"
#include "msdacore/ops.hpp"

namespace msdacore {
namespace cuda {

// ---- errors -------------------------------------------------------------------------

// Throws RuntimeError "msdacore <op>: <what> failed: <CUDA error name>: <description>".
void throw_cuda_error(cudaError_t err, const char* op, const char* what);

inline void check(cudaError_t err, const char* op, const char* what) {
  if (err != cudaSuccess) throw_cuda_error(err, op, what);
}

// After a kernel launch: the launch's own error (bad configuration, no kernel image for
// this GPU, ...). With MSDACORE_CUDA_SYNC=1 in the environment, also waits for the kernel
// and reports faults it raised (for debugging and the sanitizer runs).
void check_launch(const char* op, const char* kernel, cudaStream_t stream);

// ---- device, stream, memory ---------------------------------------------------------

// Makes `device` current for the guard's lifetime and restores the previous one.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1;
};

// DeviceError unless `t` (when non-empty) is CUDA memory the device of `t` can read.
void check_pointer(const char* op, const char* name, const TensorView& t);

// check_pointer for the three float inputs every op reads.
inline void check_input_pointers(
    const char* op, const TensorView& value, const TensorView& sampling_locations,
    const TensorView& attention_weights) {
  check_pointer(op, "value", value);
  check_pointer(op, "sampling_locations", sampling_locations);
  check_pointer(op, "attention_weights", attention_weights);
}

// Multiprocessors of the current device (for grid sizes).
int multiprocessors();

// ---- element types ------------------------------------------------------------------

// Accumulation type: float for the half types, the type itself otherwise.
template <typename T>
struct AccOf {
  using type = T;
};
template <>
struct AccOf<__half> {
  using type = float;
};
template <>
struct AccOf<__nv_bfloat16> {
  using type = float;
};
template <typename T>
using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float to_acc(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_acc(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_acc(float x) { return x; }
__device__ __forceinline__ double to_acc(double x) { return x; }

template <typename T>
struct Convert;
template <>
struct Convert<float> {
  __device__ static float from(float x) { return x; }
};
template <>
struct Convert<double> {
  __device__ static double from(double x) { return x; }
};
template <>
struct Convert<__half> {
  __device__ static __half from(float x) { return __float2half_rn(x); }
};
template <>
struct Convert<__nv_bfloat16> {
  __device__ static __nv_bfloat16 from(float x) { return __float2bfloat16_rn(x); }
};

// Calls f(TypeTag<T>{}) with T the element type of the float dtype `dtype` (float,
// double, __half, __nv_bfloat16); DTypeError "msdacore <op>: unsupported dtype <name>" for
// any other.
template <class F>
void with_float_type(DType dtype, const char* op, F&& f) {
  switch (dtype) {
    case DType::Float32: return f(TypeTag<float>{});
    case DType::Float64: return f(TypeTag<double>{});
    case DType::Float16: return f(TypeTag<__half>{});
    case DType::BFloat16: return f(TypeTag<__nv_bfloat16>{});
    default:
      throw DTypeError(std::string("msdacore ") + op + ": unsupported dtype " + dtype_name(dtype));
  }
}

// Mixed precision (ops.hpp): whether the kernels read sampling_locations and
// attention_weights as float32 (C = float) under a float16 / bfloat16 value, i.e. whether
// either of them is float32. When only one is, the other (of value's dtype) is first
// widened into the workspace (widen_companions), so that the kernels see one type C.
inline bool companion_is_float(const Problem& p) {
  return (p.dtype == DType::Float16 || p.dtype == DType::BFloat16) &&
         (p.loc_dtype == DType::Float32 || p.attn_dtype == DType::Float32);
}

// Calls f(TypeTag<T>{}, TypeTag<C>{}) with T value's element type (with_float_type) and C
// the companion type of sampling_locations and attention_weights: float when
// companion_is_float(p), else T. Only half T get a second instantiation (C = float).
template <class F>
void with_types(const Problem& p, const char* op, F&& f) {
  with_float_type(p.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (std::is_same<T, __half>::value || std::is_same<T, __nv_bfloat16>::value) {
      if (companion_is_float(p)) return f(tag, TypeTag<float>{});
    }
    f(tag, tag);
  });
}

// The companion type C of a kernel for value type T: T itself, or float for a half T;
// either way read into the same accumulator type.
template <typename T, typename C>
constexpr bool valid_companion() {
  return std::is_same<C, T>::value ||
         (std::is_same<C, float>::value && std::is_same<acc_t<T>, float>::value);
}

// Elements per 16-byte vector.
template <typename T>
constexpr int kVec = static_cast<int>(16 / sizeof(T));

// out[e] = p[e * stride] for e < V, as accumulators. V > 1: one 16-byte load of
// contiguous elements (p 16-byte aligned, stride 1); V == 1: one element.
template <typename T, int V>
__device__ __forceinline__ void load_vec(const T* p, acc_t<T> (&out)[V]) {
  if constexpr (V > 1) {
    static_assert(V * sizeof(T) == 16, "vector loads are 16 bytes");
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
    T elems[V];
    memcpy(elems, &raw, sizeof(raw));
#pragma unroll
    for (int e = 0; e < V; ++e) out[e] = to_acc(elems[e]);
  } else {
    out[0] = to_acc(p[0]);
  }
}

// p[e] = v[e] for e < V (p contiguous; 16-byte aligned when V > 1).
template <typename T, int V>
__device__ __forceinline__ void store_vec(T* p, const acc_t<T> (&v)[V]) {
  if constexpr (V > 1) {
    T elems[V];
#pragma unroll
    for (int e = 0; e < V; ++e) elems[e] = Convert<T>::from(v[e]);
    uint4 raw;
    memcpy(&raw, elems, sizeof(raw));
    *reinterpret_cast<uint4*>(p) = raw;
  } else {
    p[0] = Convert<T>::from(v[0]);
  }
}

// ---- strides -----------------------------------------------------------------------

template <int K>
struct Strides {
  int64_t s[K];
};

template <int K>
Strides<K> strides_of(const TensorView& t) {
  Strides<K> out;
  for (int i = 0; i < K; ++i) out.s[i] = t.strides[i];
  return out;
}

// The strides of sampling_locations (K = 6) or attention_weights (K = 5) as a view of the
// uniform layout: `t` itself when it has rank K; in the flattened layout (rank K - 1, no
// level axis) with a zero level stride at axis 3, so that axis 4 is the point axis in both
// layouts (the levels' offsets are in LevelDesc::loc_base / attn_base).
template <int K>
Strides<K> point_strides_of(const TensorView& t) {
  Strides<K> out;
  if (t.ndim == K) {
    for (int i = 0; i < K; ++i) out.s[i] = t.strides[i];
  } else {
    for (int i = 0, from = 0; i < K; ++i) out.s[i] = i == 3 ? 0 : t.strides[from++];
  }
  return out;
}

// ---- levels -------------------------------------------------------------------------

struct LevelDesc {
  int64_t H, W;         // size in pixels
  int64_t start;        // level_start_index[l]: first token of the level
  int64_t cell_start;   // first cell key of the level (deterministic backward): sum over
                        // earlier levels of (H + 1) * (W + 1)
  int64_t first_point;  // index of its first point among a head's P_total: sum_{j<l} P_j
  int64_t points;       // P_l
  // Where its points are: point `point` of a head (first_point <= point < first_point +
  // points) is element loc_base + point * stride[4] of sampling_locations[n, q, m] (strides
  // of point_strides_of), i.e. loc_base is the offset of the level's first point (uniform
  // layout l * stride[3], flattened first_point * stride[4]) less first_point * stride[4].
  int64_t loc_base;
  int64_t attn_base;  // the same in attention_weights[n, q, m]
};

// The level table, passed by value in the kernel parameters for up to kInlineLevels
// levels, else in device memory (`table`).
constexpr int kInlineLevels = 8;
struct Levels {
  LevelDesc inline_levels[kInlineLevels];
  const LevelDesc* table;  // all L levels in device memory, or null (inline_levels)
  __device__ __forceinline__ LevelDesc get(int64_t l) const {
    return table != nullptr ? table[l] : inline_levels[l];
  }
  __device__ __forceinline__ int64_t first_point(int64_t l) const {
    return table != nullptr ? table[l].first_point : inline_levels[l].first_point;
  }
  // The level of point `point` (0 <= point < P_total) of a head, among L levels: the last
  // level whose first point is <= point (first points strictly increase, P_l >= 1).
  __device__ __forceinline__ int64_t level_of_point(int64_t point, int64_t L) const {
    int64_t l = 0;
    while (l + 1 < L && first_point(l + 1) <= point) ++l;
    return l;
  }
};

// Fills a Levels for `p`, with the levels' point offsets for inputs of the strides `ls`
// (sampling_locations) and `as` (attention_weights), as point_strides_of gives them (null:
// offsets 0, for sizing only); when L > kInlineLevels the table goes to device memory
// taken from `workspace` (copied on `stream`; nothing is copied on a counting Workspace).
// Returns the number of cell keys per (n, m) head, sum of (H + 1) * (W + 1).
int64_t make_levels(
    const Problem& p, const Strides<6>* ls, const Strides<5>* as, cudaStream_t stream,
    const char* op, Levels* levels, Workspace& workspace);

// ---- mixed precision ----------------------------------------------------------------

// The views of sampling_locations and attention_weights the kernels read, of one
// companion type C (with_types).
struct Companions {
  TensorView loc, attn;
};

// Mixed precision with only one of `loc` (sampling_locations) and `attn`
// (attention_weights) float32: the other one, of value's half type, is widened into a
// contiguous float32 copy of its shape taken from `workspace` (filled on `stream`) and its
// view replaced by the copy's. Otherwise returns both as they are. On a counting Workspace
// only the copy's room is taken (the views may be views without data, of the right shape).
Companions widen_companions(
    const Problem& p, const TensorView& loc, const TensorView& attn, cudaStream_t stream,
    const char* op, Workspace& workspace);

// Views without data of sampling_locations and attention_weights' shapes and dtypes in `p`
// (for sizing the workspace).
Companions companion_shapes(const Problem& p);

// ---- thread layout ------------------------------------------------------------------

constexpr int kBlockThreads = 256;

// Blocks per multiprocessor the per-head and gather kernels are compiled for
// (__launch_bounds__): 4 blocks of kBlockThreads, at most 64 registers a thread. Without it
// ptxas may take 48 registers and spill to fit a fifth block, and which kernels it does
// that for changes with small edits of their code.
constexpr int kMinBlocks = 4;

// Lanes per group for `vecs` channel vectors: the smallest power of two >= vecs, at most 32.
inline int group_size(int64_t vecs) {
  int g = 1;
  while (g < vecs && g < 32) g *= 2;
  return g;
}

// Whether channel vectors of V elements can be loaded with 16-byte loads from `t`
// (a view whose last dimension is D and whose other strides are given), i.e. unit stride
// along D, D a multiple of V, every other stride a multiple of V, and the data 16-byte
// aligned.
inline bool vector_ok(const TensorView& t, int V, int64_t D) {
  if (V <= 1) return true;
  if (D % V != 0) return false;
  if (t.ndim < 1 || t.strides[t.ndim - 1] != 1) return false;
  for (int i = 0; i + 1 < t.ndim; ++i) {
    if (t.shape[i] > 1 && t.strides[i] % V != 0) return false;
  }
  return reinterpret_cast<uintptr_t>(t.data) % 16 == 0;
}

// Number of blocks for `work_blocks` blocks of work under a grid-stride loop.
inline unsigned int grid_for(int64_t work_blocks) {
  const int64_t cap = int64_t{1} << 30;
  return static_cast<unsigned int>(work_blocks < cap ? work_blocks : cap);
}

// Blocks of kBlockThreads for a grid-stride loop over `items` items, one item a thread,
// capped at 32 blocks per multiprocessor of the current device.
inline unsigned int item_grid(int64_t items) {
  const int64_t cap = static_cast<int64_t>(multiprocessors()) * 32;
  const int64_t blocks = (items + kBlockThreads - 1) / kBlockThreads;
  return grid_for(blocks < cap ? blocks : cap);
}

// Points per chunk of the per-head kernels: as many (head, point) records of
// `record_bytes` as fit a shared-memory budget for `heads_per_block` heads, at least 1 and
// at most P_total. The budget keeps several blocks resident per multiprocessor, and far
// under the 48 KB a block may use without opting in (256 records of <= 192 bytes at worst).
inline int chunk_points(int64_t P_total, int heads_per_block, size_t record_bytes) {
  constexpr size_t kBudget = 24 * 1024;
  int64_t chunk = static_cast<int64_t>(kBudget / (record_bytes * heads_per_block));
  if (chunk < 1) chunk = 1;
  return static_cast<int>(chunk < P_total ? chunk : P_total);
}

// Launch shape of a per-head kernel: blocks and dynamic shared memory.
struct LaunchShape {
  unsigned int grid;
  size_t shared;
};

// What the per-head kernels' parameters share (ForwardParams and BackwardParams derive
// from it): the three sampling inputs, the sizes, align_corners, the lane / chunk
// geometry and the level table. (The sampling mode is a template parameter of the
// kernels, ModeTag.) T: value's element type; C: that of loc and attn (with_types).
template <typename T, typename C>
struct HeadParams {
  static_assert(valid_companion<T, C>(), "C is T, or float for a half T");
  const T* value;  // (N, S, M, D)
  Strides<4> vs;   //   its element strides
  const C* loc;    // (N, Lq, M, L, P, 2), or (N, Lq, M, P_total, 2) viewed with a
  Strides<6> ls;   //   zero level stride (point_strides_of)
  const C* attn;   // (N, Lq, M, L, P), or (N, Lq, M, P_total) likewise
  Strides<5> as;
  int64_t M, D, Lq, L;
  int64_t P_total;      // points per head, sum_l P_l
  int64_t heads;        // N * Lq * M
  int64_t vecs;         // channel vectors per head: D / V
  int group;            // lanes per head (G)
  int heads_per_block;  // kBlockThreads / G
  int chunk;            // points per head and chunk
  bool align_corners;
  Levels levels;
};

// Fills the HeadParams part of a kernel's parameters except the level table: the three
// sampling inputs, the sizes, align_corners, and the lane / chunk geometry for records of
// `Point`, channel vectors of kVec<T> when `vector`; returns the launch shape.
template <typename Point, typename T, typename C>
LaunchShape set_head_params(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, bool vector, HeadParams<T, C>* q) {
  q->value = static_cast<const T*>(value.data);
  q->vs = strides_of<4>(value);
  q->loc = static_cast<const C*>(loc.data);
  q->ls = point_strides_of<6>(loc);
  q->attn = static_cast<const C*>(attn.data);
  q->as = point_strides_of<5>(attn);
  q->M = p.M;
  q->D = p.D;
  q->Lq = p.Lq;
  q->L = p.L;
  q->P_total = p.P_total;
  q->heads = p.N * p.Lq * p.M;
  q->align_corners = options.align_corners;
  q->vecs = vector ? p.D / kVec<T> : p.D;
  q->group = group_size(q->vecs);
  q->heads_per_block = kBlockThreads / q->group;
  q->chunk = chunk_points(q->P_total, q->heads_per_block, sizeof(Point));
  const int64_t head_blocks = (q->heads + q->heads_per_block - 1) / q->heads_per_block;
  return LaunchShape{
      grid_for(head_blocks), sizeof(Point) * static_cast<size_t>(q->heads_per_block) * q->chunk};
}

// A thread of a per-head kernel: its lane in its group of G, its group's slot in the
// block (the slot-th head of every head block), the number of head blocks, and the
// block's records (dynamic shared memory; its group's start at slot * chunk).
template <typename Point>
struct HeadThread {
  int lane, slot;
  int64_t head_blocks;
  Point* records;
};

// The HeadThread of the calling thread.
template <typename Point, typename T, typename C>
__device__ __forceinline__ HeadThread<Point> head_thread(const HeadParams<T, C>& p) {
  extern __shared__ __align__(16) unsigned char shared_raw[];
  HeadThread<Point> t;
  t.lane = static_cast<int>(threadIdx.x) % p.group;
  t.slot = static_cast<int>(threadIdx.x) / p.group;
  t.head_blocks = (p.heads + p.heads_per_block - 1) / p.heads_per_block;
  t.records = reinterpret_cast<Point*>(shared_raw);
  return t;
}

// The head of slot `slot` in head block `hb`: head = hb * heads_per_block + slot
// = (n * Lq + q) * M + m, active when head < heads (else n, q, m are 0).
struct Head {
  int64_t head;
  bool active;
  int64_t n, q, m;
};

// The Head of slot `slot` in head block `hb`.
template <typename T, typename C>
__device__ __forceinline__ Head head_at(const HeadParams<T, C>& p, int64_t hb, int slot) {
  Head h;
  h.head = hb * p.heads_per_block + slot;
  h.active = h.head < p.heads;
  h.m = h.active ? h.head % p.M : 0;
  const int64_t nq = h.active ? h.head / p.M : 0;
  h.q = nq % p.Lq;
  h.n = nq / p.Lq;
  return h;
}

// The sampling mode (SamplingMode) as a compile-time constant: every kernel that samples
// is compiled once per mode, so that the bilinear kernels carry no code of the discrete
// mode (registers and spills stay those of the bilinear-only kernels).
template <bool kDiscrete>
struct ModeTag {
  static constexpr bool discrete = kDiscrete;
};
using BilinearMode = ModeTag<false>;
using DiscreteMode = ModeTag<true>;

// Calls f(ModeTag<...>{}) for `mode`.
template <class F>
void with_mode(SamplingMode mode, F&& f) {
  if (mode == SamplingMode::Discrete) {
    f(DiscreteMode{});
  } else {
    f(BilinearMode{});
  }
}

// Launches a per-head kernel on `stream` with the grid and shared memory of `shape`:
// `vector_kernel` (16-byte channel vectors) when `vector`, else `scalar_kernel` (single
// elements); then check_launch(op, name, stream).
template <typename Params>
void launch_head_kernel(
    void (*vector_kernel)(Params), void (*scalar_kernel)(Params), bool vector,
    const LaunchShape& shape, const Params& q, cudaStream_t stream, const char* op,
    const char* name) {
  void (*kernel)(Params) = vector ? vector_kernel : scalar_kernel;
  kernel<<<shape.grid, kBlockThreads, shape.shared, stream>>>(q);
  check_launch(op, name, stream);
}

// One sample of a per-head kernel: point `point` (of the head's P_total, over all levels)
// of head `head` = (n * Lq + q) * M + m, as its shared-memory record is filled.
template <typename A>
struct HeadSample {
  LevelDesc lv;            // the point's level
  detail::Level<A> level;  //   and its geometry
  detail::Corners<A> c;
  int64_t attn_index;  // element index of its attention weight in attn
};

// Fills `s` for point `point` of head `head`, sampled in mode `Mode` (ModeTag); false (the
// record stays empty) when the head is past the last one or the sample is skipped (then
// only some of `s` is written).
template <typename Mode, typename T, typename C>
__device__ __forceinline__ bool head_sample(
    const HeadParams<T, C>& p, int64_t head, int64_t point, HeadSample<acc_t<T>>* s) {
  if (head >= p.heads) return false;
  const int64_t m = head % p.M;
  const int64_t nq = head / p.M;
  const int64_t q = nq % p.Lq;
  const int64_t n = nq / p.Lq;
  s->lv = p.levels.get(p.levels.level_of_point(point, p.L));
  s->attn_index =
      n * p.as.s[0] + q * p.as.s[1] + m * p.as.s[2] + s->lv.attn_base + point * p.as.s[4];
  s->level = detail::make_level<acc_t<T>>(s->lv.H, s->lv.W, p.align_corners);
  const C* xy =
      p.loc + (n * p.ls.s[0] + q * p.ls.s[1] + m * p.ls.s[2] + s->lv.loc_base + point * p.ls.s[4]);
  return detail::mode_corners(
      s->level, Mode::discrete, to_acc(xy[0]), to_acc(xy[p.ls.s[5]]), &s->c);
}

// The attention weight A of sample `s` (head_sample returned true).
template <typename T, typename C>
__device__ __forceinline__ acc_t<T> attention_weight(
    const HeadParams<T, C>& p, const HeadSample<acc_t<T>>& s) {
  return to_acc(p.attn[s.attn_index]);
}

// One chunk of a per-head kernel's records: waits until the previous chunk's are no longer
// read, fills record (s, j) = (head hb * heads_per_block + s, point c0 + j) at
// records[s * chunk + j] with the kernel file's fill_point for mode `Mode` (found by
// argument-dependent lookup on Params), spread over the block's threads, and waits until
// all are written. Returns the chunk's points: min(chunk, P_total - c0). Every thread of
// the block must call it.
template <typename Mode, typename Params, typename Point>
__device__ __forceinline__ int fill_chunk(const Params& p, int64_t hb, int64_t c0, Point* records) {
  const int count = static_cast<int>(p.P_total - c0 < p.chunk ? p.P_total - c0 : p.chunk);
  __syncthreads();  // the previous chunk's records are no longer read
  for (int i = static_cast<int>(threadIdx.x); i < p.heads_per_block * count;
       i += static_cast<int>(blockDim.x)) {
    const int s = i / count, j = i % count;
    fill_point(
        Mode{}, p, hb * p.heads_per_block + s, c0 + j,
        &records[static_cast<int64_t>(s) * p.chunk + j]);
  }
  __syncthreads();
  return count;
}

// The buffers of the deterministic backward's gather (deterministic.cu).
struct GatherBuffers {
  uint64_t *keys_in = nullptr, *keys_out = nullptr, *ids_in = nullptr, *ids_out = nullptr;
  void* sort_temp = nullptr;
  size_t sort_temp_bytes = 0;
  int end_bit = 1;         // the sort looks at key bits [0, end_bit)
  int64_t* seg = nullptr;  // segment starts, one per key and one past the end
};

// deterministic_sort.cu: takes the gather's buffers from `workspace` for a problem with
// `cells` cell keys per head (sizes only on a counting Workspace).
GatherBuffers take_gather_buffers(
    const Problem& p, int64_t cells, cudaStream_t stream, Workspace& workspace);

// deterministic_sort.cu: steps 2 and 3 of the gather, enqueued on `stream`: the sample ids
// buffers.ids_in sorted (stably) by their keys buffers.keys_in into buffers.ids_out /
// keys_out, then buffers.seg[k] = the first position of key k in the sorted keys, for
// k = 0..count_keys (count_keys: the key of skipped samples, which sort last).
void sort_by_cell(
    const GatherBuffers& buffers, int64_t samples, int64_t count_keys, cudaStream_t stream);

// deterministic.cu: grad_value (N, S, M, D) of the deterministic backward, by a gather
// over the samples sorted by the value cell they read (see there). Enqueued on
// options.stream; `levels` and `cells` as returned by make_levels, `buffers` from
// take_gather_buffers; sampling_locations and attention_weights are the kernels' views
// (widen_companions), whose strides the level table's point offsets are for.
void gather_grad_value(
    const Problem& p, const Options& options, const Levels& levels, int64_t cells,
    const GatherBuffers& buffers, const TensorView& sampling_locations,
    const TensorView& attention_weights, const TensorView& grad_output,
    const TensorView& grad_value);

}  // namespace cuda
}  // namespace msdacore
