// The floor of multi-scale deformable attention on the CPU.
//
// The floor proper is the lean one (class Lean below, "lean floor" in the output,
// `*_lean_ms` in the JSON): the least work of a kernel that computes the op from its
// inputs, with the per-point arithmetic in 16-float lanes and no precomputed indices.
// The two older variants described next only move data (one from precomputed corner
// indices, which a real kernel never reads); they stay for comparison.
//
// Times only the data movement that any kernel for the op has to do, with the
// access pattern of a real problem (the sampling locations of a SPEC configuration,
// written by dump_inputs.py), and no arithmetic beyond an add (forward) or a
// multiply-add and an add (backward) per gathered float. Before timing, the corner
// rows of every sample are computed from its location exactly as SPEC "Forward" says
// (pixel coordinates, bounds test, floor): 4 int32 row indices per sample, a corner
// outside the map pointing at an all-zero row, a sample out of bounds marked skipped.
//
//   forward   for every query q and head m (queries split over the threads): sum the
//             four gathered D-float rows value[n, token, m, :] of each of the L*P
//             samples into a D-float accumulator held in registers (no attention or
//             bilinear weights); write it to out[n, q, m*D:(m+1)*D].
//   backward  zero grad_value (N, S, M, D); then for every query q and head m (each
//             thread takes a contiguous block of heads and all queries in order, so
//             that grad_value rows never race: no atomics, no reduction; with more
//             threads than heads the extra ones idle): read
//             grad_output[n, q, m*D:(m+1)*D] once; for
//             each sample and each of its four corner rows, accumulate the dot product
//             of the value row with the grad_output row (the work grad_attention_weights
//             and grad_sampling_locations need) and add the grad_output row into the
//             grad_value row (the scatter); write one float per sample (standing in
//             for the per-sample gradients).
//   forward+backward  forward then backward, timed together.
//
// The same three are also timed with the corners computed inside the timed loops from
// the float32 locations ("with corner arithmetic"): closer to a real kernel, which
// reads the locations and has no index array.
//
// Not counted anywhere: attention weights and bilinear weights (their reads and
// products), the grad_sampling_locations arithmetic, input checks, allocation of the
// outputs (allocated and touched once before timing). A real kernel does all of these
// on top of the floor; the precomputed variant instead reads 16 bytes of indices per
// sample, which a real kernel does not.
//
// Build and run: benchmarks/floor/run.sh (g++ -std=c++17 -O3 -march=native -fopenmp).
//   floor INPUT.bin [--threads T] [--repeats R] [--json PATH]

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#ifndef FLOOR_FLAGS
#define FLOOR_FLAGS "unknown"
#endif
#ifdef __clang__
#define FLOOR_COMPILER "clang " __clang_version__
#else
#define FLOOR_COMPILER "gcc " __VERSION__
#endif

namespace {

struct Problem {
  int64_t N = 0, Lq = 0, M = 0, L = 0, P = 0, D = 0, S = 0;
  bool align_corners = false;
  int64_t expected_in_bounds = 0;
  std::vector<int64_t> H, W, start;
  std::vector<float> locs;                      // (N, Lq, M, L, P, 2)
  int64_t zero_token() const { return N * S; }  // an extra all-zero token row
};

Problem load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw std::runtime_error("cannot open " + path);
  char magic[8];
  f.read(magic, 8);
  if (!f || std::memcmp(magic, "MSDAFLR1", 8) != 0)
    throw std::runtime_error(path + ": not a file written by dump_inputs.py");
  int64_t head[9];
  f.read(reinterpret_cast<char*>(head), sizeof head);
  Problem p;
  p.N = head[0];
  p.Lq = head[1];
  p.M = head[2];
  p.L = head[3];
  p.P = head[4];
  p.D = head[5];
  p.S = head[6];
  p.align_corners = head[7] != 0;
  p.expected_in_bounds = head[8];
  if (p.N < 1 || p.Lq < 1 || p.M < 1 || p.L < 1 || p.P < 1 || p.D < 1 || p.S < 1 || p.L > 64 ||
      p.D > 256)
    throw std::runtime_error(path + ": bad sizes");
  p.H.resize(p.L);
  p.W.resize(p.L);
  p.start.resize(p.L);
  f.read(reinterpret_cast<char*>(p.H.data()), p.L * 8);
  f.read(reinterpret_cast<char*>(p.W.data()), p.L * 8);
  int64_t s = 0;
  for (int64_t l = 0; l < p.L; ++l) {
    p.start[l] = s;
    s += p.H[l] * p.W[l];
  }
  if (s != p.S) throw std::runtime_error(path + ": level sizes do not add up to S");
  if ((p.N * p.S + 1) * p.M >= (int64_t(1) << 31))
    throw std::runtime_error("problem too large for int32 row indices");
  p.locs.resize(p.N * p.Lq * p.M * p.L * p.P * 2);
  f.read(reinterpret_cast<char*>(p.locs.data()), int64_t(p.locs.size()) * 4);
  if (!f) throw std::runtime_error(path + ": file too short");
  return p;
}

// Global token rows (n*S + level start + i*W + j, or the zero token) of the four
// corners of a sample; false when the sample is out of bounds (SPEC "Forward").
inline bool corner_rows(const Problem& p, int64_t n, int64_t l, float x, float y, int64_t rows[4]) {
  const int64_t H = p.H[l], W = p.W[l];
  float h, w;
  if (p.align_corners) {
    h = y * float(H - 1);
    w = x * float(W - 1);
  } else {
    h = y * float(H) - 0.5f;
    w = x * float(W) - 0.5f;
  }
  if (!(h > -1.0f && h < float(H) && w > -1.0f && w < float(W))) return false;
  const int64_t h0 = int64_t(std::floor(h)), w0 = int64_t(std::floor(w));
  const int64_t base = n * p.S + p.start[l];
  const int64_t z = p.zero_token();
  const bool top = h0 >= 0, bottom = h0 + 1 < H, left = w0 >= 0, right = w0 + 1 < W;
  rows[0] = top && left ? base + h0 * W + w0 : z;
  rows[1] = top && right ? base + h0 * W + w0 + 1 : z;
  rows[2] = bottom && left ? base + (h0 + 1) * W + w0 : z;
  rows[3] = bottom && right ? base + (h0 + 1) * W + w0 + 1 : z;
  return true;
}

// Channel rows as GCC/Clang vector types, 16 floats each: a row of D = 16*NV floats
// is NV vectors held in registers. Loads and stores go through memcpy (unaligned).
typedef float vf16 __attribute__((vector_size(64)));

// Inside a parallel region: this thread's contiguous share [lo, hi) of n items.
struct Share {
  int64_t lo, hi;
  explicit Share(int64_t n) {
    const int nt = omp_get_num_threads(), t = omp_get_thread_num();
    lo = n * t / nt;
    hi = n * (t + 1) / nt;
  }
};

// Inside a parallel region: zeroes grad_value (n floats), each thread its own share, and
// waits for every thread's.
inline void zero_shared(float* x, int64_t n) {
  const Share z(n);
  std::memset(x + z.lo, 0, size_t(z.hi - z.lo) * sizeof(float));
#pragma omp barrier
}

inline vf16 load16(const float* p) {
  vf16 x;
  std::memcpy(&x, p, sizeof x);
  return x;
}
inline void store16(float* p, vf16 x) { std::memcpy(p, &x, sizeof x); }

inline float hsum(vf16 x) {
  float s = 0.0f;
  for (int j = 0; j < 16; ++j) s += x[j];
  return s;
}

// DT > 0: D = DT, a multiple of 16, known at compile time; DT == 0: any D (scalar
// loops, for other configurations; the floor of the docs uses D = 32).
// kFromLocs: corners computed from the locations in the loop, else precomputed.
template <int DT, bool kFromLocs>
struct Kernels {
  static_assert(DT % 16 == 0, "DT must be a multiple of 16");
  static constexpr int NV = DT > 0 ? DT / 16 : 1;

  const Problem& p;
  const float* value;  // (N*S + 1, M, D), the last token all zeros
  const int32_t* pre;  // (N, Lq, M, L, P, 4) value rows token*M + m; -1 first: skipped
  float* out;          // (N, Lq, M*D)
  const float* gout;   // (N, Lq, M*D)
  float* gvalue;       // (N*S + 1, M, D)
  float* gsample;      // (N, Lq, M, L, P)

  // The four value rows (token*M + m) of sample i = ((nq*M + m)*L + l)*P + k;
  // false when the sample is out of bounds.
  inline bool rows_of(int64_t i, int64_t n, int64_t m, int64_t l, int64_t rows[4]) const {
    if constexpr (kFromLocs) {
      const float* loc = p.locs.data() + 2 * i;
      if (!corner_rows(p, n, l, loc[0], loc[1], rows)) return false;
      for (int c = 0; c < 4; ++c) rows[c] = rows[c] * p.M + m;
      return true;
    } else {
      const int32_t* r = pre + 4 * i;
      if (r[0] < 0) return false;
      for (int c = 0; c < 4; ++c) rows[c] = r[c];
      return true;
    }
  }

  void forward() const {
    const int64_t M = p.M, L = p.L, P = p.P, D = p.D, NQ = p.N * p.Lq;
#pragma omp parallel for schedule(static)
    for (int64_t nq = 0; nq < NQ; ++nq) {
      const int64_t n = nq / p.Lq;
      for (int64_t m = 0; m < M; ++m) {
        float* o = out + (nq * M + m) * D;
        int64_t i = (nq * M + m) * L * P;
        // add(row) for the four value rows of each in-bounds sample of (nq, m)
        auto each_row = [&](auto&& add) {
          for (int64_t l = 0; l < L; ++l) {
            for (int64_t k = 0; k < P; ++k, ++i) {
              int64_t rows[4];
              if (!rows_of(i, n, m, l, rows)) continue;
              for (int c = 0; c < 4; ++c) add(value + rows[c] * D);
            }
          }
        };
        if constexpr (DT > 0) {
          vf16 acc[NV];
          for (int j = 0; j < NV; ++j) acc[j] = vf16{};
          each_row([&](const float* v) {
            for (int j = 0; j < NV; ++j) acc[j] += load16(v + 16 * j);
          });
          for (int j = 0; j < NV; ++j) store16(o + 16 * j, acc[j]);
        } else {
          for (int64_t d = 0; d < D; ++d) o[d] = 0.0f;
          each_row([&](const float* v) {
            for (int64_t d = 0; d < D; ++d) o[d] += v[d];
          });
        }
      }
    }
  }

  // For the four rows: dot += g . value row, grad_value row += g. Returns the dot.
  static float corners_backward(
      const float* g, const float* value, float* gvalue, const int64_t rows[4], int64_t D) {
    if constexpr (DT > 0) {
      vf16 gv[NV], dot[NV];
      for (int j = 0; j < NV; ++j) {
        gv[j] = load16(g + 16 * j);
        dot[j] = vf16{};
      }
      for (int c = 0; c < 4; ++c) {
        const float* v = value + rows[c] * D;
        float* gr = gvalue + rows[c] * D;
        for (int j = 0; j < NV; ++j) {
          dot[j] += gv[j] * load16(v + 16 * j);
          store16(gr + 16 * j, load16(gr + 16 * j) + gv[j]);
        }
      }
      for (int j = 1; j < NV; ++j) dot[0] += dot[j];
      return hsum(dot[0]);
    } else {
      float sum = 0.0f;
      for (int c = 0; c < 4; ++c) {
        const float* v = value + rows[c] * D;
        float* gr = gvalue + rows[c] * D;
        for (int64_t d = 0; d < D; ++d) {
          sum += g[d] * v[d];
          gr[d] += g[d];
        }
      }
      return sum;
    }
  }

  void backward() const {
    const int64_t M = p.M, L = p.L, P = p.P, D = p.D, Lq = p.Lq, N = p.N;
    const int64_t gv_size = (N * p.S + 1) * M * D;
#pragma omp parallel
    {
      zero_shared(gvalue, gv_size);
      // this thread's heads: a contiguous block, so that its grad_value rows of a token
      // are contiguous and no other thread writes them; queries in order within
      const Share heads(M);
      const int64_t m_lo = heads.lo, m_hi = heads.hi;
      for (int64_t nq = 0; nq < N * Lq; ++nq) {
        const int64_t n = nq / Lq;
        for (int64_t m = m_lo; m < m_hi; ++m) {
          const float* g = gout + (nq * M + m) * D;
          int64_t i = (nq * M + m) * L * P;
          for (int64_t l = 0; l < L; ++l) {
            for (int64_t k = 0; k < P; ++k, ++i) {
              int64_t rows[4];
              gsample[i] =
                  rows_of(i, n, m, l, rows) ? corners_backward(g, value, gvalue, rows, D) : 0.0f;
            }
          }
        }
      }
    }
  }
};

// The lean floor: the least work a forward or backward kernel that computes the op from
// its inputs can do. Per (query, head) it reads the L*P locations and attention weights
// once, computes the pixel coordinates, skip masks, floors, the four bilinear weights
// times the attention weight and the four corner rows of all points at once in 16-float
// vector lanes (no branch per point; a corner outside the map or a skipped sample points
// at the all-zero row with weight 0), prefetches the corner rows of the next head, then
// gathers: out += weight * row over every corner (forward), or dot(g, row) and
// grad_value row += weight * g (backward; one float per sample written, standing in for
// the per-sample gradients). No index array, no skip branch, no exact-zero semantics: it
// is a bound, not a kernel. Queries are visited in msdacore's order (vertical strips,
// see `order`) and every array starts on a cache line, as msdacore's kernels see them.
typedef int32_t vi16 __attribute__((vector_size(64)));

template <int DT>
struct Lean {
  static constexpr int NV = DT > 0 ? DT / 16 : 1;
  static constexpr int kLanes = 16;  // points per lane group

  const Problem& p;
  const float* value;  // (N*S + 1, M, D), the last token all zeros
  const float* attn;   // (N, Lq, M, L, P)
  float* out;          // (N, Lq, M*D)
  const float* gout;   // (N, Lq, M*D)
  float* gvalue;       // (N*S + 1, M, D)
  float* gsample;      // (N, Lq, M, L, P)
  bool prefetch;

  // Per point lane j of a head's L*P points (groups of 16; lanes past L*P skipped): the
  // level's scales, bounds, width and first token.
  struct Lanes {
    int groups;
    std::vector<vf16> sx, sy, shift, hf, wf;
    std::vector<vi16> hi, wi, start, live;
  };
  Lanes lanes;
  // The queries (n*Lq + q) in visiting order: vertical strips of kStripPixels pixels of
  // the widest level, keyed by the x of head 0's first location, stable (msdacore's
  // cpu_query_order.hpp), so that a strip's rows stay in L2 while it is swept.
  static constexpr int64_t kStripPixels = 8;
  std::vector<int64_t> order;

  Lean(
      const Problem& p_, const float* v, const float* a, float* o, const float* g, float* gv,
      float* gs, bool pf)
      : p(p_), value(v), attn(a), out(o), gout(g), gvalue(gv), gsample(gs), prefetch(pf) {
    int64_t widest = 1;
    for (int64_t w : p.W) widest = std::max(widest, w);
    const int64_t strips = (widest + kStripPixels - 1) / kStripPixels;
    const int64_t per_query = p.M * p.L * p.P * 2;
    for (int64_t n = 0; n < p.N; ++n) {
      std::vector<std::vector<int64_t>> by_strip(strips);
      for (int64_t q = 0; q < p.Lq; ++q) {
        const float x = p.locs[(n * p.Lq + q) * per_query] * float(strips);
        const int64_t s = !(x >= 0.0f) ? 0 : !(x < float(strips)) ? strips - 1 : int64_t(x);
        by_strip[s].push_back(n * p.Lq + q);
      }
      for (const auto& list : by_strip) order.insert(order.end(), list.begin(), list.end());
    }
    const int64_t LP = p.L * p.P;
    lanes.groups = int((LP + kLanes - 1) / kLanes);
    for (auto* vec : {&lanes.sx, &lanes.sy, &lanes.shift, &lanes.hf, &lanes.wf})
      vec->assign(lanes.groups, vf16{});
    for (auto* vec : {&lanes.hi, &lanes.wi, &lanes.start, &lanes.live})
      vec->assign(lanes.groups, vi16{});
    for (int64_t j = 0; j < LP; ++j) {
      const int64_t l = j / p.P, g = j / kLanes, k = j % kLanes;
      lanes.sx[g][k] = float(p.align_corners ? p.W[l] - 1 : p.W[l]);
      lanes.sy[g][k] = float(p.align_corners ? p.H[l] - 1 : p.H[l]);
      lanes.shift[g][k] = p.align_corners ? 0.0f : 0.5f;
      lanes.hf[g][k] = float(p.H[l]);
      lanes.wf[g][k] = float(p.W[l]);
      lanes.hi[g][k] = int32_t(p.H[l]);
      lanes.wi[g][k] = int32_t(p.W[l]);
      lanes.start[g][k] = int32_t(p.start[l]);
      lanes.live[g][k] = -1;
    }
  }

  // The corners of (nq, m): weight[c][j] and value row[c][j] (token*M + m) for the
  // L*P points j, vectorised over the points.
  struct Plan {
    alignas(64) float weight[4][64];
    alignas(64) int32_t row[4][64];
  };
  void plan(int64_t nq, int64_t m, Plan& out_plan) const {
    const int64_t n = nq / p.Lq, LP = p.L * p.P, M = p.M;
    const float* loc = p.locs.data() + (nq * M + m) * LP * 2;
    const float* a = attn + (nq * M + m) * LP;
    const int32_t zero_row = int32_t(p.zero_token() * M + m);
    const int32_t token0 = int32_t(n * p.S);
    for (int g = 0; g < lanes.groups; ++g) {
      vf16 x = {}, y = {}, A = {};
      const int64_t j0 = int64_t(g) * kLanes;
      if (j0 + kLanes <= LP) {
        vf16 lo = load16(loc + 2 * j0), hi = load16(loc + 2 * j0 + 16);
        x = __builtin_shuffle(
            lo, hi, vi16{0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30});
        y = __builtin_shuffle(
            lo, hi, vi16{1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31});
        A = load16(a + j0);
      } else {
        for (int k = 0; k < kLanes; ++k) {
          const bool in = j0 + k < LP;
          x[k] = in ? loc[2 * (j0 + k)] : 0.0f;
          y[k] = in ? loc[2 * (j0 + k) + 1] : 0.0f;
          A[k] = in ? a[j0 + k] : 0.0f;
        }
      }
      const vf16 h = y * lanes.sy[g] - lanes.shift[g];
      const vf16 w = x * lanes.sx[g] - lanes.shift[g];
      const vi16 ok =
          (h > -1.0f) & (h < lanes.hf[g]) & (w > -1.0f) & (w < lanes.wf[g]) & lanes.live[g];
      const vf16 hs = (vf16)((vi16)h & ok), ws = (vf16)((vi16)w & ok);
      vi16 h0 = __builtin_convertvector(hs, vi16), w0 = __builtin_convertvector(ws, vi16);
      h0 += (vi16)(__builtin_convertvector(h0, vf16) > hs);  // floor of negatives
      w0 += (vi16)(__builtin_convertvector(w0, vf16) > ws);
      const vf16 lh = hs - __builtin_convertvector(h0, vf16);
      const vf16 lw = ws - __builtin_convertvector(w0, vf16);
      const vf16 hh = 1.0f - lh, hw = 1.0f - lw;
      const vi16 top = ok & (h0 >= 0), bottom = ok & (h0 + 1 < lanes.hi[g]);
      const vi16 left = w0 >= 0, right = w0 + 1 < lanes.wi[g];
      const vi16 base = (token0 + lanes.start[g] + h0 * lanes.wi[g] + w0) * int32_t(M) + int32_t(m);
      const vi16 inside[4] = {top & left, top & right, bottom & left, bottom & right};
      const vf16 bil[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
      const vi16 step[4] = {
          vi16{}, vi16{} + int32_t(M), lanes.wi[g] * int32_t(M), (lanes.wi[g] + 1) * int32_t(M)};
      for (int c = 0; c < 4; ++c) {
        const vi16 r = (base + step[c]) & inside[c];
        const vi16 rows = r | (zero_row & ~inside[c]);
        const vf16 wt = (vf16)((vi16)(A * bil[c]) & inside[c]);
        std::memcpy(&out_plan.row[c][j0], &rows, sizeof rows);
        std::memcpy(&out_plan.weight[c][j0], &wt, sizeof wt);
      }
    }
  }

  void prefetch_rows(const Plan& pl) const {
    const int64_t LP = p.L * p.P;
    for (int64_t j = 0; j < LP; ++j)
      for (int c = 0; c < 4; ++c) {
        const char* r = reinterpret_cast<const char*>(value + int64_t(pl.row[c][j]) * p.D);
        for (int64_t b = 0; b < p.D * 4; b += 64) __builtin_prefetch(r + b);
      }
  }

  static bool supported(const Problem& p) { return DT > 0 && p.L * p.P <= 64; }

  void forward() const {
    const int64_t M = p.M, LP = p.L * p.P, D = p.D, NQ = p.N * p.Lq;
#pragma omp parallel
    {
      Plan plans[2];
      const Share items(NQ * M);  // (nq, m) items
      const int64_t lo = items.lo, hi = items.hi;
      if (lo < hi) plan(order[lo / M], lo % M, plans[0]);
      for (int64_t it = lo; it < hi; ++it) {
        const Plan& cur = plans[(it - lo) & 1];
        if (it + 1 < hi) {
          Plan& next = plans[(it + 1 - lo) & 1];
          plan(order[(it + 1) / M], (it + 1) % M, next);
          if (prefetch) prefetch_rows(next);
        }
        vf16 acc[NV];
        for (int j = 0; j < NV; ++j) acc[j] = vf16{};
        for (int64_t k = 0; k < LP; ++k) {
          for (int c = 0; c < 4; ++c) {
            const float* v = value + int64_t(cur.row[c][k]) * D;
            const float wt = cur.weight[c][k];
            for (int j = 0; j < NV; ++j) acc[j] += wt * load16(v + 16 * j);
          }
        }
        float* o = out + (order[it / M] * M + it % M) * D;
        for (int j = 0; j < NV; ++j) store16(o + 16 * j, acc[j]);
      }
    }
  }

  void backward() const {
    const int64_t M = p.M, LP = p.L * p.P, D = p.D, NQ = p.N * p.Lq;
    const int64_t gv_size = (p.N * p.S + 1) * M * D;
#pragma omp parallel
    {
      zero_shared(gvalue, gv_size);
      const Share heads(M);
      const int64_t m_lo = heads.lo, m_hi = heads.hi;
      const int64_t per_q = m_hi - m_lo, items = NQ * per_q;
      Plan plans[2];
      auto item = [&](int64_t it, int64_t* nq, int64_t* m) {
        *nq = order[it / per_q];
        *m = m_lo + it % per_q;
      };
      int64_t nq, m;
      if (items > 0) {
        item(0, &nq, &m);
        plan(nq, m, plans[0]);
      }
      for (int64_t it = 0; it < items; ++it) {
        item(it, &nq, &m);
        const Plan& cur = plans[it & 1];
        if (it + 1 < items) {
          int64_t nq1, m1;
          item(it + 1, &nq1, &m1);
          plan(nq1, m1, plans[(it + 1) & 1]);
          if (prefetch) prefetch_rows(plans[(it + 1) & 1]);
        }
        vf16 g[NV];
        for (int j = 0; j < NV; ++j) g[j] = load16(gout + (nq * M + m) * D + 16 * j);
        float* gs = gsample + (nq * M + m) * LP;
        for (int64_t k = 0; k < LP; ++k) {
          vf16 dot = vf16{};
          for (int c = 0; c < 4; ++c) {
            const int64_t r = int64_t(cur.row[c][k]) * D;
            const vf16 wt = vf16{} + cur.weight[c][k];
            for (int j = 0; j < NV; ++j) {
              dot += g[j] * load16(value + r + 16 * j);
              store16(gvalue + r + 16 * j, load16(gvalue + r + 16 * j) + wt * g[j]);
            }
          }
          gs[k] = hsum(dot);
        }
      }
    }
  }
};

double now_ms() {
  using clock = std::chrono::steady_clock;
  return std::chrono::duration<double, std::milli>(clock::now().time_since_epoch()).count();
}

struct Stat {
  double median = 0, min = 0;
};

template <class F>
Stat time_it(F&& f, int warmup, int repeats) {
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    const double t0 = now_ms();
    f();
    t.push_back(now_ms() - t0);
  }
  std::sort(t.begin(), t.end());
  const size_t k = t.size();
  Stat s;
  s.median = k % 2 ? t[k / 2] : 0.5 * (t[k / 2 - 1] + t[k / 2]);
  s.min = t.front();
  return s;
}

double checksum(const float* a, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += a[i];
  return s;
}

// A std::allocator that starts every array on a cache line (64 bytes), like a
// framework's tensors: a D = 32 float row is then two cache lines, not three.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(size_t n) {
    void* ptr = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
    if (!ptr) throw std::bad_alloc();
    return static_cast<T*>(ptr);
  }
  void deallocate(T* ptr, size_t) { std::free(ptr); }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const {
    return true;
  }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const {
    return false;
  }
};
using Floats = std::vector<float, CacheLineAllocator<float>>;

template <int DT>
int run(const Problem& p, int threads, int repeats, const char* json_path, const char* input) {
  const int64_t M = p.M, D = p.D, rows_total = p.N * p.S + 1;
  const int64_t n_samples = p.N * p.Lq * M * p.L * p.P;
  Floats value(rows_total * M * D), gvalue(rows_total * M * D);
  Floats out(p.N * p.Lq * M * D), gout(p.N * p.Lq * M * D), gsample(n_samples);
  uint64_t state = 0x9E3779B97F4A7C15ull;  // fixed pseudo-random fill in [-1, 1)
  auto next = [&state]() {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return float(double(state >> 11) * (2.0 / 9007199254740992.0) - 1.0);
  };
  for (int64_t i = 0; i < (rows_total - 1) * M * D; ++i) value[i] = next();
  std::fill(value.begin() + (rows_total - 1) * M * D, value.end(), 0.0f);
  for (auto& x : gout) x = next();

  // precomputed rows, and the in-bounds count for the check against the file
  std::vector<int32_t> pre(n_samples * 4);
  int64_t in_bounds = 0;
  for (int64_t i = 0; i < n_samples; ++i) {
    const int64_t n = i / (p.Lq * M * p.L * p.P);
    const int64_t m = (i / (p.L * p.P)) % M;
    const int64_t l = (i / p.P) % p.L;
    int64_t rows[4];
    const bool ok = corner_rows(p, n, l, p.locs[2 * i], p.locs[2 * i + 1], rows);
    in_bounds += ok;
    for (int c = 0; c < 4; ++c) pre[4 * i + c] = ok ? int32_t(rows[c] * M + m) : -1;
  }

  omp_set_num_threads(threads);
  const int warmup = 3;
  struct Result {
    Stat fwd, bwd, fb;
    double cs_out, cs_gv, cs_gs;
  };
  auto measure = [&](auto kernels) {
    Result r;
    r.fwd = time_it([&] { kernels.forward(); }, warmup, repeats);
    r.cs_out = checksum(out.data(), int64_t(out.size()));
    r.bwd = time_it([&] { kernels.backward(); }, warmup, repeats);
    r.fb = time_it(
        [&] {
          kernels.forward();
          kernels.backward();
        },
        warmup, repeats);
    r.cs_gv = checksum(gvalue.data(), int64_t(gvalue.size()));
    r.cs_gs = checksum(gsample.data(), n_samples);
    return r;
  };
  const Result pr = measure(
      Kernels<DT, false>{
          p, value.data(), pre.data(), out.data(), gout.data(), gvalue.data(), gsample.data()});
  const Result lr = measure(
      Kernels<DT, true>{
          p, value.data(), pre.data(), out.data(), gout.data(), gvalue.data(), gsample.data()});
  // The lean floor (weights and bilinear arithmetic included), with and without prefetch;
  // its forward checked against a scalar evaluation of the same sums.
  Floats attn(n_samples);
  for (auto& x : attn) x = 0.5f + 0.5f * next();
  const bool lean_ok = Lean<DT>::supported(p);
  Result lean_r[2] = {};
  double lean_err = 0;
  for (int pf = 0; pf < 2 && lean_ok; ++pf) {
    lean_r[pf] = measure(
        Lean<DT>(
            p, value.data(), attn.data(), out.data(), gout.data(), gvalue.data(), gsample.data(),
            pf == 1));
    for (int64_t item = 0; item < std::min<int64_t>(p.N * p.Lq * M, 4096); ++item) {
      const int64_t nq = item / M, m = item % M, n = nq / p.Lq;
      std::vector<double> ref(D, 0.0);
      for (int64_t l = 0, i = item * p.L * p.P; l < p.L; ++l) {
        for (int64_t k = 0; k < p.P; ++k, ++i) {
          int64_t rows[4];
          if (!corner_rows(p, n, l, p.locs[2 * i], p.locs[2 * i + 1], rows)) continue;
          const float h = p.align_corners ? p.locs[2 * i + 1] * float(p.H[l] - 1)
                                          : p.locs[2 * i + 1] * float(p.H[l]) - 0.5f;
          const float w = p.align_corners ? p.locs[2 * i] * float(p.W[l] - 1)
                                          : p.locs[2 * i] * float(p.W[l]) - 0.5f;
          const double lh = h - std::floor(h), lw = w - std::floor(w);
          const double bil[4] = {(1 - lh) * (1 - lw), (1 - lh) * lw, lh * (1 - lw), lh * lw};
          for (int c = 0; c < 4; ++c)
            for (int64_t d = 0; d < D; ++d)
              ref[d] += attn[i] * bil[c] * value[(rows[c] * M + m) * D + d];
        }
      }
      for (int64_t d = 0; d < D; ++d)
        lean_err = std::max(lean_err, std::fabs(ref[d] - out[item * D + d]));
    }
  }

  const double gathered_mb = double(in_bounds) * 4 * D * 4 / 1e6;
  std::printf(
      "floor: %lld queries x %lld heads x %lld levels x %lld points = %lld samples "
      "(%lld in bounds, file says %lld), D = %lld, float32, %d thread(s), "
      "median of %d after %d warm-up\n",
      (long long)(p.N * p.Lq), (long long)M, (long long)p.L, (long long)p.P, (long long)n_samples,
      (long long)in_bounds, (long long)p.expected_in_bounds, (long long)D, threads, repeats,
      warmup);
  std::printf(
      "  gathered per pass: %.0f MB (4 corners x D floats per in-bounds sample)\n", gathered_mb);
  std::printf(
      "  %-18s %22s %24s\n", "ms (median, min)", "corners precomputed", "with corner arithmetic");
  const char* names[3] = {"forward", "backward", "forward+backward"};
  const Stat* ps[3] = {&pr.fwd, &pr.bwd, &pr.fb};
  const Stat* ls[3] = {&lr.fwd, &lr.bwd, &lr.fb};
  for (int j = 0; j < 3; ++j)
    std::printf(
        "  %-18s %12.2f (%7.2f) %14.2f (%7.2f)\n", names[j], ps[j]->median, ps[j]->min,
        ls[j]->median, ls[j]->min);
  std::printf(
      "  checksums: out %.6g / %.6g, grad_value %.6g / %.6g, per-sample %.6g / %.6g\n", pr.cs_out,
      lr.cs_out, pr.cs_gv, lr.cs_gv, pr.cs_gs, lr.cs_gs);
  auto differ = [](double a, double b) { return std::fabs(a - b) > 1e-3 * (1.0 + std::fabs(a)); };
  if (differ(pr.cs_out, lr.cs_out) || differ(pr.cs_gv, lr.cs_gv) || differ(pr.cs_gs, lr.cs_gs))
    std::printf("  warning: the two variants disagree\n");
  if (lean_ok) {
    std::printf("  %-18s %22s %24s\n", "lean floor ms", "no prefetch", "prefetch next head");
    const Stat* a[3] = {&lean_r[0].fwd, &lean_r[0].bwd, &lean_r[0].fb};
    const Stat* b[3] = {&lean_r[1].fwd, &lean_r[1].bwd, &lean_r[1].fb};
    for (int j = 0; j < 3; ++j)
      std::printf(
          "  %-18s %12.2f (%7.2f) %14.2f (%7.2f)\n", names[j], a[j]->median, a[j]->min,
          b[j]->median, b[j]->min);
    std::printf("  lean forward against a scalar evaluation: max |difference| %.3g\n", lean_err);
    if (!(lean_err < 1e-3)) std::printf("  warning: the lean floor computes wrong sums\n");
  } else {
    std::printf("  lean floor: not run (needs D in {16, 32, 64} and L*P <= 64)\n");
  }
  if (std::llabs(in_bounds - p.expected_in_bounds) > n_samples / 100000 + 16)
    std::printf("  warning: in-bounds count differs from the file's\n");

  if (json_path) {
    FILE* f = std::fopen(json_path, "w");
    if (!f) {
      std::fprintf(stderr, "cannot write %s\n", json_path);
      return 1;
    }
    std::fprintf(
        f,
        "{\n  \"input\": \"%s\",\n  \"N\": %lld, \"Lq\": %lld, \"M\": %lld, "
        "\"L\": %lld, \"P\": %lld, \"D\": %lld, \"S\": %lld,\n"
        "  \"samples\": %lld, \"in_bounds\": %lld, \"dtype\": \"float32\",\n"
        "  \"threads\": %d, \"repeats\": %d, \"warmup\": %d,\n"
        "  \"gathered_mb_per_pass\": %.3f,\n",
        input, (long long)p.N, (long long)p.Lq, (long long)M, (long long)p.L, (long long)p.P,
        (long long)D, (long long)p.S, (long long)n_samples, (long long)in_bounds, threads, repeats,
        warmup, gathered_mb);
    const char* keys[3] = {"forward", "backward", "forward_backward"};
    for (int j = 0; j < 3; ++j)
      std::fprintf(
          f, "  \"%s_ms\": %.4f, \"%s_min_ms\": %.4f,\n", keys[j], ps[j]->median, keys[j],
          ps[j]->min);
    for (int j = 0; j < 3; ++j)
      std::fprintf(
          f, "  \"%s_with_corners_ms\": %.4f, \"%s_with_corners_min_ms\": %.4f,\n", keys[j],
          ls[j]->median, keys[j], ls[j]->min);
    // The lean floor: the faster of its two variants, per pass.
    if (lean_ok) {
      const Stat* a[3] = {&lean_r[0].fwd, &lean_r[0].bwd, &lean_r[0].fb};
      const Stat* b[3] = {&lean_r[1].fwd, &lean_r[1].bwd, &lean_r[1].fb};
      for (int j = 0; j < 3; ++j) {
        const bool pf = b[j]->median < a[j]->median;
        const Stat* best = pf ? b[j] : a[j];
        std::fprintf(
            f,
            "  \"%s_lean_ms\": %.4f, \"%s_lean_min_ms\": %.4f, "
            "\"%s_lean_prefetch\": %s,\n",
            keys[j], best->median, keys[j], best->min, keys[j], pf ? "true" : "false");
      }
    }
    std::fprintf(f, "  \"compiler\": \"%s\", \"flags\": \"%s\"\n}\n", FLOOR_COMPILER, FLOOR_FLAGS);
    std::fclose(f);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const char* input = nullptr;
  const char* json_path = nullptr;
  int threads = 2, repeats = 20;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--threads" && i + 1 < argc)
      threads = std::atoi(argv[++i]);
    else if (a == "--repeats" && i + 1 < argc)
      repeats = std::atoi(argv[++i]);
    else if (a == "--json" && i + 1 < argc)
      json_path = argv[++i];
    else if (!a.empty() && a[0] != '-' && !input)
      input = argv[i];
    else {
      std::fprintf(
          stderr, "usage: %s INPUT.bin [--threads T] [--repeats R] [--json PATH]\n", argv[0]);
      return 2;
    }
  }
  if (!input || threads < 1 || repeats < 1) {
    std::fprintf(
        stderr, "usage: %s INPUT.bin [--threads T] [--repeats R] [--json PATH]\n", argv[0]);
    return 2;
  }
  try {
    const Problem p = load(input);
    switch (p.D) {
      case 16: return run<16>(p, threads, repeats, json_path, input);
      case 32: return run<32>(p, threads, repeats, json_path, input);
      case 64: return run<64>(p, threads, repeats, json_path, input);
      default: return run<0>(p, threads, repeats, json_path, input);
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "floor: %s\n", e.what());
    return 1;
  }
}
