// Internal: the per-point work of the CPU kernels (pixel coordinates, skip test, floor,
// corner weights and token offsets) for a group of points at once, in SIMD lanes: the
// vector form of detail::sample_corners (msdacore/detail/bilinear.hpp). Lane j computes
// exactly what sample_corners computes for point j, with the same operations in the same
// order (no FMA contraction: -ffp-contract=off), so both forms give the same bits; the
// C++ tests check it (tests/cpp/test_points.cpp).
//
// A kernel plans the points of a (query, head) in groups of kLanes (plan_points), then
// runs its channel loops over the plan: the corners of every point, in point order
// and corner order k = 0..3, as the scalar loop would visit them.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_simd.hpp"
#include "msdacore/detail/bilinear.hpp"

namespace msdacore {
namespace cpu {
namespace MSDACORE_CPU_ISA {

// Vector types of one group of points: kLanes values of T, and kLanes int32 lanes. The
// default width is the build's vector width; kNarrowLanes<T> (16 bytes) serves runs of
// fewer points (a level's 4 points in the backward).
template <typename T>
constexpr int kNarrowLanes = 16 / static_cast<int>(sizeof(T));

template <typename T, int N = Simd<T>::kLanes>
struct PointLanes {
  static constexpr int kLanes = N;
  typedef T Vec __attribute__((vector_size(kLanes * sizeof(T))));
  typedef int32_t IVec __attribute__((vector_size(kLanes * 4)));
  // A comparison of two Vec: one integer lane of sizeof(T) bytes per point.
  typedef decltype(Vec{} < Vec{}) Mask;

  static IVec narrow(Mask m) { return __builtin_convertvector(m, IVec); }
  static Vec select(IVec keep, Vec x) {  // x where keep, else +0
    const Mask wide = __builtin_convertvector(keep, Mask);
    Mask bits;
    std::memcpy(&bits, &x, sizeof(x));
    bits &= wide;
    Vec out;
    std::memcpy(&out, &bits, sizeof(out));
    return out;
  }
};

// The level geometry of each lane of a group (lanes may belong to different levels).
template <typename T, int N = Simd<T>::kLanes>
struct GroupGeometry {
  using PL = PointLanes<T, N>;
  typename PL::Vec scale_x, scale_y, shift, height, width;
  typename PL::IVec H, W, start, live;  // start: the level's first token; live: -1 or 0
};

// The corners of a group of points: for each corner k the lanes where it lies inside the
// level (and the sample is not skipped), its bilinear weight and its token index
// (level start + i*W + j; 0 where not inside); and per lane the fractions
// lh = h - h0, lw = w - w0 (the derivative coefficients are -hh, hh, -lh, lh and
// -hw, -lw, hw, lw with hh = 1 - lh, hw = 1 - lw). `sampled`: the lanes not skipped.
template <typename T, int N = Simd<T>::kLanes>
struct GroupCorners {
  using PL = PointLanes<T, N>;
  typename PL::IVec sampled;
  typename PL::IVec inside[4];
  typename PL::IVec token[4];
  typename PL::Vec weight[4];
  typename PL::Vec lh, lw, hh, hw;
};

// detail::sample_corners for every lane: x, y the normalized locations.
// Requires level start + H*W + W + 1 to fit in int32 (PointRun checks S < 2^30).
template <typename T, int N>
inline void group_corners(
    const GroupGeometry<T, N>& g, typename PointLanes<T, N>::Vec x,
    typename PointLanes<T, N>::Vec y, GroupCorners<T, N>* c) {
  using PL = PointLanes<T, N>;
  using Vec = typename PL::Vec;
  using IVec = typename PL::IVec;
  const Vec h = y * g.scale_y - g.shift;  // detail::pixel_coord
  const Vec w = x * g.scale_x - g.shift;
  // detail::sample_in_range (false for NaN)
  const IVec ok =
      PL::narrow(
          (h > static_cast<T>(-1)) & (h < g.height) & (w > static_cast<T>(-1)) & (w < g.width)) &
      g.live;
  // detail::make_corners on the lanes in range (others computed on 0, then dropped)
  const Vec hs = PL::select(ok, h), ws = PL::select(ok, w);
  IVec h0 = __builtin_convertvector(hs, IVec), w0 = __builtin_convertvector(ws, IVec);
  h0 += PL::narrow(__builtin_convertvector(h0, Vec) > hs);  // -1 where truncation rounded up
  w0 += PL::narrow(__builtin_convertvector(w0, Vec) > ws);
  c->lh = hs - __builtin_convertvector(h0, Vec);
  c->lw = ws - __builtin_convertvector(w0, Vec);
  c->hh = static_cast<T>(1) - c->lh;
  c->hw = static_cast<T>(1) - c->lw;
  const IVec top = ok & (h0 >= 0), bottom = ok & (h0 + 1 <= g.H - 1);
  const IVec left = w0 >= 0, right = w0 + 1 <= g.W - 1;
  c->sampled = ok;
  c->inside[0] = top & left;
  c->inside[1] = top & right;
  c->inside[2] = bottom & left;
  c->inside[3] = bottom & right;
  const IVec base = g.start + h0 * g.W + w0;
  c->token[0] = base & c->inside[0];
  c->token[1] = (base + 1) & c->inside[1];
  c->token[2] = (base + g.W) & c->inside[2];
  c->token[3] = (base + g.W + 1) & c->inside[3];
  c->weight[0] = c->hh * c->hw;
  c->weight[1] = c->hh * c->lw;
  c->weight[2] = c->lh * c->hw;
  c->weight[3] = c->lh * c->lw;
}

// The geometry of the groups of a run of `count` points, point j on level
// *point_level[j]: groups of N lanes, the lanes past `count` not live.
template <typename T, int N>
std::vector<GroupGeometry<T, N>> group_geometry(
    const LevelGeometry<T>* const* point_level, int64_t count) {
  constexpr int kLanes = N;
  std::vector<GroupGeometry<T, N>> groups((count + kLanes - 1) / kLanes);
  for (auto& g : groups) std::memset(&g, 0, sizeof(g));
  for (int64_t j = 0; j < count; ++j) {
    GroupGeometry<T, N>& g = groups[j / kLanes];
    const int k = static_cast<int>(j % kLanes);
    const LevelGeometry<T>& lv = *point_level[j];
    g.scale_x[k] = lv.scale_x;
    g.scale_y[k] = lv.scale_y;
    g.shift[k] = lv.shift;
    g.height[k] = lv.height;
    g.width[k] = lv.width;
    g.H[k] = static_cast<int32_t>(lv.H);
    g.W[k] = static_cast<int32_t>(lv.W);
    g.start[k] = static_cast<int32_t>(lv.token_start);
    g.live[k] = -1;
  }
  return groups;
}

// Splits `src[0 .. 2*kLanes)` = (x0, y0, x1, y1, ...) into x and y.
template <typename T, int N>
inline void deinterleave(
    const T* src, typename PointLanes<T, N>::Vec* x, typename PointLanes<T, N>::Vec* y) {
  using Vec = typename PointLanes<T, N>::Vec;
  constexpr int kLanes = N;
  Vec lo, hi;
  std::memcpy(&lo, src, sizeof(Vec));
  std::memcpy(&hi, src + kLanes, sizeof(Vec));
#if defined(__clang__)
  for (int k = 0; k < kLanes / 2; ++k) {
    (*x)[k] = lo[2 * k];
    (*y)[k] = lo[2 * k + 1];
    (*x)[k + kLanes / 2] = hi[2 * k];
    (*y)[k + kLanes / 2] = hi[2 * k + 1];
  }
#else
  using Mask = typename PointLanes<T, N>::Mask;
  Mask even, odd;
  for (int k = 0; k < kLanes; ++k) {
    even[k] = 2 * k;
    odd[k] = 2 * k + 1;
  }
  *x = __builtin_shuffle(lo, hi, even);
  *y = __builtin_shuffle(lo, hi, odd);
#endif
}

// The corners of a run of `count` points of one (n, q, m) (all P_total points for the
// forward, a level's P_l for the backward), in blocks of kBlock points that the channel
// loops read: for point j of a block and corner k, `scaled[k][j]` = A_j * weight_k (the
// forward's and grad_value's factor), `token[k][j]` (level start + i*W + j) and bit k of
// `corners[j]` (corner read); with kGradients also the bilinear weights, the fractions
// lh, lw, A and `sampled[j]` (0: skipped, 1: bilinear, 2: discrete), for the location and
// attention gradients. Fixed-size blocks keep every array at a constant offset from one
// pointer in the channel loops.
template <typename T>
struct PlanBlock {
  static constexpr int kBlock = 64;  // a multiple of every lane count
  T scaled[4][kBlock];
  int64_t token[4][kBlock];
  int32_t corners[kBlock];
  T weight[4][kBlock];
  T lh[kBlock], lw[kBlock], attention[kBlock];
  int32_t sampled[kBlock];
};

template <typename T>
struct PointPlan {
  static constexpr int kBlock = PlanBlock<T>::kBlock;
  int64_t count = 0;
  std::vector<PlanBlock<T>> blocks;

  void resize(int64_t points) {
    count = points;
    blocks.resize((points + kBlock - 1) / kBlock);
    for (auto& b : blocks) std::memset(&b, 0, sizeof(b));
  }
  // Points in block b.
  int64_t block_count(size_t b) const {
    const int64_t rest = count - static_cast<int64_t>(b) * kBlock;
    return rest < kBlock ? rest : kBlock;
  }
};

// Where a run of points of one (n, q, m) lies in sampling_locations and attention_weights,
// relative to the head's first element: point j's x at loc[loc_offset[j]], y at
// loc[loc_offset[j] + y_stride], its weight at attn[attn_offset[j]]. `dense`: x, y
// interleaved and the weights consecutive (loc_offset[j] = 2j, attn_offset[j] = j,
// y_stride = 1), loaded as vectors.
struct PointOffsets {
  std::vector<int64_t> loc_offset, attn_offset;
  int64_t y_stride = 1;
  bool dense = false;

  void finish() {
    dense = y_stride == 1;
    for (size_t j = 0; j < loc_offset.size(); ++j) {
      dense = dense && loc_offset[j] == static_cast<int64_t>(2 * j) &&
              attn_offset[j] == static_cast<int64_t>(j);
    }
  }
};

// Everything the planning of a run of points needs that is the same for every (n, q, m):
// the points of levels first .. last - 1 of a head, in the kernels' point order.
template <typename T>
struct PointRun {
  std::vector<const LevelGeometry<T>*> level;  // per point
  // Per point, its level's scale_x and scale_y (the location gradients' factors), zero
  // padded to whole plan blocks so that group_gradients reads whole lane groups.
  std::vector<T> scale_x, scale_y;
  // The order in which the backward's channel loop visits the points of each plan block:
  // visit[b * kBlock + i] is the i-th point of block b to visit (an index in the block).
  // Round robin over the levels (point 0 of every level, then point 1, ...), so that
  // neighbouring points of one level, which often share corner rows, do not update the
  // same grad_value rows back to back; the order among one level's points, hence the
  // order in which each grad_value row accumulates, stays the point order.
  std::vector<int32_t> visit;
  PointOffsets offsets;
  std::vector<GroupGeometry<T>> groups;                          // the build's width
  std::vector<GroupGeometry<T, kNarrowLanes<T>>> narrow_groups;  // 16 bytes
  bool vector = false;  // plan in SIMD lanes (bilinear mode, token indices fit in int32)
  bool narrow = false;  // with narrow_groups: fewer points than the build's lanes

  PointRun(const InputArgs<T>& a, int64_t first, int64_t last) {
    for (int64_t l = first; l < last; ++l) {
      const LevelGeometry<T>& lv = a.levels[l];
      for (int64_t pt = 0; pt < lv.points; ++pt) {
        level.push_back(&lv);
        offsets.loc_offset.push_back(lv.loc_offset + pt * a.loc.stride[4]);
        offsets.attn_offset.push_back(lv.attn_offset + pt * a.attn.stride[4]);
      }
    }
    // Relative to the run's first point.
    const int64_t loc0 = offsets.loc_offset.empty() ? 0 : offsets.loc_offset[0];
    const int64_t attn0 = offsets.attn_offset.empty() ? 0 : offsets.attn_offset[0];
    for (auto& o : offsets.loc_offset) o -= loc0;
    for (auto& o : offsets.attn_offset) o -= attn0;
    offsets.y_stride = a.loc.stride[5];
    offsets.finish();
    const int64_t points = static_cast<int64_t>(level.size());
    const int64_t padded =
        (points + PlanBlock<T>::kBlock - 1) / PlanBlock<T>::kBlock * PlanBlock<T>::kBlock;
    scale_x.assign(static_cast<size_t>(padded), T(0));
    scale_y.assign(static_cast<size_t>(padded), T(0));
    for (int64_t j = 0; j < points; ++j) {
      scale_x[j] = level[j]->scale_x;
      scale_y[j] = level[j]->scale_y;
    }
    // rank: a point's index among its level's points (points of a level are consecutive).
    std::vector<int64_t> rank(static_cast<size_t>(points));
    for (int64_t j = 0; j < points; ++j) {
      rank[j] = j > 0 && level[j] == level[j - 1] ? rank[j - 1] + 1 : 0;
    }
    visit.assign(static_cast<size_t>(padded), 0);
    for (int64_t b0 = 0; b0 < points; b0 += PlanBlock<T>::kBlock) {
      const int64_t b1 = std::min<int64_t>(points, b0 + PlanBlock<T>::kBlock);
      std::vector<int32_t> block;
      for (int64_t j = b0; j < b1; ++j) block.push_back(static_cast<int32_t>(j - b0));
      std::stable_sort(block.begin(), block.end(), [&](int32_t x, int32_t y) {
        return rank[b0 + x] < rank[b0 + y];
      });
      std::copy(block.begin(), block.end(), visit.begin() + b0);
    }
    groups = group_geometry<T, Simd<T>::kLanes>(level.data(), points);
    narrow_groups = group_geometry<T, kNarrowLanes<T>>(level.data(), points);
    narrow = points <= kNarrowLanes<T> && kNarrowLanes<T> < Simd<T>::kLanes;
    // int32 lanes hold token indices up to S + W + 1 (corner 3 before its mask).
    vector = !a.discrete && a.p.S < (static_cast<int64_t>(1) << 30);
  }
  int64_t count() const { return static_cast<int64_t>(level.size()); }
};

// plan_points' vector form with groups of N lanes.
template <typename T, bool kGradients, int N>
void plan_groups(
    const std::vector<GroupGeometry<T, N>>& group_list, const PointOffsets& offsets, const T* loc,
    const T* attn, PointPlan<T>* plan) {
  using PL = PointLanes<T, N>;
  using Vec = typename PL::Vec;
  using IVec = typename PL::IVec;
  constexpr int kLanes = N, kBlock = PlanBlock<T>::kBlock;
  const int64_t count = plan->count;
  const GroupGeometry<T, N>* groups = group_list.data();
  const int64_t group_count = static_cast<int64_t>(group_list.size());
  for (int64_t gi = 0; gi < group_count; ++gi) {
    const int64_t j0 = gi * kLanes;
    PlanBlock<T>& b = plan->blocks[j0 / kBlock];
    const int64_t i0 = j0 % kBlock;
    Vec x, y, A;
    if (offsets.dense && j0 + kLanes <= count) {
      deinterleave<T, N>(loc + 2 * j0, &x, &y);
      std::memcpy(&A, attn + j0, sizeof(Vec));
    } else {
      // A partial group or strided inputs: copied to zero-padded buffers first.
      T xy[2 * kLanes] = {}, weights[kLanes] = {};
      const int64_t live = count - j0 < kLanes ? count - j0 : kLanes;
      if (offsets.dense) {
        for (int64_t k = 0; k < 2 * live; ++k) xy[k] = loc[2 * j0 + k];
        for (int64_t k = 0; k < live; ++k) weights[k] = attn[j0 + k];
      } else {
        for (int64_t k = 0; k < live; ++k) {
          xy[2 * k] = loc[offsets.loc_offset[j0 + k]];
          xy[2 * k + 1] = loc[offsets.loc_offset[j0 + k] + offsets.y_stride];
          weights[k] = attn[offsets.attn_offset[j0 + k]];
        }
      }
      deinterleave<T, N>(xy, &x, &y);
      std::memcpy(&A, weights, sizeof(Vec));
    }
    GroupCorners<T, N> c;
    group_corners<T>(groups[gi], x, y, &c);
    const IVec bits = (c.inside[0] & 1) | (c.inside[1] & 2) | (c.inside[2] & 4) | (c.inside[3] & 8);
    std::memcpy(&b.corners[i0], &bits, sizeof(IVec));
    for (int k = 0; k < 4; ++k) {
      const Vec scaled = PL::select(c.inside[k], A * c.weight[k]);  // +0 where not read
      std::memcpy(&b.scaled[k][i0], &scaled, sizeof(Vec));
      for (int i = 0; i < kLanes; ++i) b.token[k][i0 + i] = c.token[k][i];
      if (kGradients) std::memcpy(&b.weight[k][i0], &c.weight[k], sizeof(Vec));
    }
    if (kGradients) {
      std::memcpy(&b.lh[i0], &c.lh, sizeof(Vec));
      std::memcpy(&b.lw[i0], &c.lw, sizeof(Vec));
      std::memcpy(&b.attention[i0], &A, sizeof(Vec));
      const IVec sampled = c.sampled & 1;
      std::memcpy(&b.sampled[i0], &sampled, sizeof(IVec));
    }
  }
}

// Fills `plan` (resized for run.count() points) for the points of `run` whose first
// location and weight are at loc, attn: the vector form when run.vector, otherwise
// point by point with detail::mode_corners (discrete mode, 2^30 tokens or more).
template <typename T, bool kGradients>
void plan_points(
    const PointRun<T>& run, bool discrete, const T* loc, const T* attn, PointPlan<T>* plan) {
  constexpr int kBlock = PlanBlock<T>::kBlock;
  const int64_t count = plan->count;
  const PointOffsets& offsets = run.offsets;
  if (!run.vector) {
    for (int64_t j = 0; j < count; ++j) {
      PlanBlock<T>& b = plan->blocks[j / kBlock];
      const int64_t i = j % kBlock;
      const T x = loc[offsets.loc_offset[j]], y = loc[offsets.loc_offset[j] + offsets.y_stride];
      const T A = attn[offsets.attn_offset[j]];
      const LevelGeometry<T>& level = *run.level[j];
      detail::Corners<T> c;
      const bool ok = detail::mode_corners<T>(level, discrete, x, y, &c);
      int32_t bits = 0;
      for (int k = 0; k < 4; ++k) {
        if (ok && c.inside[k]) bits |= 1 << k;
        b.scaled[k][i] = ok && c.inside[k] ? A * c.weight[k] : T(0);
        b.token[k][i] = ok && c.inside[k] ? level.token_start + c.offset[k] : 0;
        if (kGradients) b.weight[k][i] = ok ? c.weight[k] : T(0);
      }
      b.corners[i] = bits;
      if (kGradients) {
        // make_corners' d_dw / d_dh are -hh, hh, -lh, lh and -hw, -lw, hw, lw.
        b.lh[i] = ok ? c.d_dw[3] : T(0);
        b.lw[i] = ok ? c.d_dh[3] : T(0);
        b.attention[i] = A;
        b.sampled[i] = ok ? (c.discrete ? 2 : 1) : 0;
      }
    }
    return;
  }
  if (run.narrow) {
    plan_groups<T, kGradients>(run.narrow_groups, offsets, loc, attn, plan);
  } else {
    plan_groups<T, kGradients>(run.groups, offsets, loc, attn, plan);
  }
}

// The detail::Corners of planned point j of block `b` (planned with kGradients), for
// detail::sample_gradients: the weights, and the derivative coefficients as
// make_corners writes them.
template <typename T>
inline void corners_of(const PlanBlock<T>& b, int64_t j, detail::Corners<T>* c) {
  for (int k = 0; k < 4; ++k) c->weight[k] = b.weight[k][j];
  detail::set_corner_derivatives(b.lh[j], b.lw[j], c);
  c->discrete = b.sampled[j] == 2;
}

// detail::sample_gradients for the points i0 .. i0 + kLanes - 1 of block `b` (planned with
// kGradients) from their dot products dots[k][i] (0 for corners not read), point i0 + i
// on a level of scales scale_x[i], scale_y[i]: grad_attention, grad_x and grad_y per lane,
// +0 for a skipped point and the location gradients +0 in discrete mode, as the scalar
// form writes them.
template <typename T>
inline void group_gradients(
    const PlanBlock<T>& b, const T (*dots)[PlanBlock<T>::kBlock], int64_t i0, const T* scale_x,
    const T* scale_y, typename PointLanes<T>::Vec* grad_attention,
    typename PointLanes<T>::Vec* grad_x, typename PointLanes<T>::Vec* grad_y) {
  using PL = PointLanes<T>;
  using Vec = typename PL::Vec;
  using IVec = typename PL::IVec;
  Vec lh, lw, A, w[4], d[4], sx, sy;
  IVec sampled;
  std::memcpy(&sx, scale_x, sizeof(Vec));
  std::memcpy(&sy, scale_y, sizeof(Vec));
  std::memcpy(&lh, &b.lh[i0], sizeof(Vec));
  std::memcpy(&lw, &b.lw[i0], sizeof(Vec));
  std::memcpy(&A, &b.attention[i0], sizeof(Vec));
  std::memcpy(&sampled, &b.sampled[i0], sizeof(IVec));
  for (int k = 0; k < 4; ++k) {
    std::memcpy(&w[k], &b.weight[k][i0], sizeof(Vec));
    std::memcpy(&d[k], &dots[k][i0], sizeof(Vec));
  }
  const Vec hh = static_cast<T>(1) - lh, hw = static_cast<T>(1) - lw;
  const Vec d_dw[4] = {-hh, hh, -lh, lh};  // make_corners' coefficients
  const Vec d_dh[4] = {-hw, -lw, hw, lw};
  Vec gb = Vec{} * static_cast<T>(0), gw = gb, gh = gb;
  for (int k = 0; k < 4; ++k) {
    gb += w[k] * d[k];
    gw += d_dw[k] * d[k];
    gh += d_dh[k] * d[k];
  }
  const IVec bilinear = sampled == 1;
  *grad_attention = PL::select(sampled != 0, gb);
  *grad_x = PL::select(bilinear, A * sx * gw);
  *grad_y = PL::select(bilinear, A * sy * gh);
}

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
