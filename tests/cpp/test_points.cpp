// C++ unit tests of the CPU kernels' vector forms (cpp/src/cpu_points.hpp, cpu_simd.hpp)
// against the scalar math they must reproduce bit for bit: group_corners against
// detail::sample_corners, group_gradients against detail::sample_gradients,
// DotLanes::fold4 against fold_lanes and GradRow::dot_axpy against dot_axpy. Built once
// per kernel instruction set (MSDACORE_CPU_ISA, MSDACORE_VEC_BYTES, see CMakeLists.txt).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.hpp"
#include "cpu_points.hpp"

#define MSDACORE_STR2(x) #x
#define MSDACORE_STRINGIFY(x) MSDACORE_STR2(x)

namespace {

using namespace msdacore::cpu::MSDACORE_CPU_ISA;
namespace detail = msdacore::detail;

template <typename T>
bool same_bits(T a, T b) {
  return std::memcmp(&a, &b, sizeof(T)) == 0;
}

// Locations that hit every branch: in range, on the skip bounds, just inside and outside
// them, exact pixel centres and edges, NaN and infinities; and uniform ones in [-0.2, 1.2].
template <typename T>
std::vector<T> test_locations(std::mt19937& rng, int64_t H, int64_t W) {
  const T inf = std::numeric_limits<T>::infinity();
  std::vector<T> v = {T(0),    T(1),     T(-0.0),
                      T(0.5),  T(-1e-7), T(1 + 1e-7),
                      inf,     -inf,     std::numeric_limits<T>::quiet_NaN(),
                      T(1e30), T(-1e30)};
  for (int64_t size : {H, W}) {
    for (T pixel : {T(-1), T(-0.5), T(0), T(size) - 1, T(size) - T(0.5), T(size)}) {
      for (T eps : {T(0), T(1e-4), T(-1e-4)}) v.push_back((pixel + T(0.5) + eps) / T(size));
    }
  }
  std::uniform_real_distribution<double> u(-0.2, 1.2);
  for (int i = 0; i < 400; ++i) v.push_back(static_cast<T>(u(rng)));
  return v;
}

// group_corners (groups of N lanes) against sample_corners, lane by lane, on two levels.
template <typename T, int N>
void test_group_corners(bool align_corners) {
  using PL = PointLanes<T, N>;
  std::mt19937 rng(1);
  const int64_t heights[2] = {7, 1}, widths[2] = {5, 3}, starts[2] = {11, 46};
  LevelGeometry<T> levels[2];
  for (int l = 0; l < 2; ++l) {
    static_cast<detail::Level<T>&>(levels[l]) =
        detail::make_level<T>(heights[l], widths[l], align_corners);
    levels[l].token_start = starts[l];
  }
  const std::vector<T> xs = test_locations<T>(rng, 7, 5);
  std::vector<T> ys = xs;
  std::shuffle(ys.begin(), ys.end(), rng);
  // Points alternate between the levels, so a group mixes them.
  const int64_t count = static_cast<int64_t>(xs.size());
  std::vector<const LevelGeometry<T>*> point_level(count);
  for (int64_t j = 0; j < count; ++j) point_level[j] = &levels[j % 2];
  const auto groups = group_geometry<T, N>(point_level.data(), count);
  int checked = 0;
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    typename PL::Vec x{}, y{};
    for (int k = 0; k < N; ++k) {
      const int64_t j = static_cast<int64_t>(gi) * N + k;
      x[k] = j < count ? xs[j] : T(0);
      y[k] = j < count ? ys[j] : T(0);
    }
    GroupCorners<T, N> c;
    group_corners<T, N>(groups[gi], x, y, &c);
    for (int k = 0; k < N; ++k) {
      const int64_t j = static_cast<int64_t>(gi) * N + k;
      if (j >= count) {
        CHECK(c.sampled[k] == 0);  // lanes past the run are never sampled
        continue;
      }
      const LevelGeometry<T>& lv = *point_level[j];
      detail::Corners<T> s;
      const bool ok = detail::sample_corners<T>(lv, x[k], y[k], &s);
      CHECK(ok == (c.sampled[k] != 0));
      if (!ok) {
        for (int q = 0; q < 4; ++q) CHECK(c.inside[q][k] == 0);
        continue;
      }
      ++checked;
      for (int q = 0; q < 4; ++q) {
        CHECK(s.inside[q] == (c.inside[q][k] != 0));
        if (s.inside[q]) CHECK(c.token[q][k] == lv.token_start + s.offset[q]);
        CHECK(same_bits(s.weight[q], c.weight[q][k]));
      }
      CHECK(same_bits(s.d_dw[3], c.lh[k]));  // lh
      CHECK(same_bits(s.d_dh[3], c.lw[k]));  // lw
      CHECK(same_bits(s.d_dw[1], c.hh[k]));  // hh
      CHECK(same_bits(s.d_dh[2], c.hw[k]));  // hw
    }
  }
  CHECK(checked > 100);
}

// fold4 against fold_lanes, and GradRow::dot_axpy (row of kRowBytes) against dot_axpy.
template <typename T, int kRowBytes>
void test_dot_and_fold() {
  std::mt19937 rng(2);
  std::normal_distribution<double> nd;
  constexpr int D = kRowBytes / static_cast<int>(sizeof(T));
  std::vector<T> g(D), v(4 * D), y1(4 * D), y2;
  for (auto& x : g) x = static_cast<T>(nd(rng));
  for (auto& x : v) x = static_cast<T>(nd(rng));
  for (auto& x : y1) x = static_cast<T>(nd(rng));
  y2 = y1;
  const GradRow<T, kRowBytes> row(g.data());
  typename DotLanes<T>::Vec lanes[4];
  T scalar[4];
  for (int k = 0; k < 4; ++k) {
    const T a = static_cast<T>(nd(rng));
    lanes[k] = row.dot_axpy(v.data() + k * D, a, y1.data() + k * D);
    scalar[k] = dot_axpy<T>(D, g.data(), 1, v.data() + k * D, 1, a, y2.data() + k * D);
  }
  T folded[4];
  DotLanes<T>::fold4(lanes, folded);
  for (int k = 0; k < 4; ++k) {
    T copy[kDotLanes<T>];
    std::memcpy(copy, &lanes[k], sizeof(copy));
    CHECK(same_bits(fold_lanes(copy), folded[k]));
    CHECK(same_bits(scalar[k], folded[k]));
  }
  CHECK(std::memcmp(y1.data(), y2.data(), y1.size() * sizeof(T)) == 0);
}

// group_gradients against sample_gradients on planned points (bilinear, discrete, skipped).
template <typename T>
void test_group_gradients() {
  using PL = PointLanes<T>;
  constexpr int N = PL::kLanes;
  std::mt19937 rng(3);
  std::uniform_real_distribution<double> u(-0.1, 1.1);
  std::normal_distribution<double> nd;
  const LevelGeometry<T> lv = [] {
    LevelGeometry<T> g{};
    static_cast<detail::Level<T>&>(g) = detail::make_level<T>(6, 9, false);
    return g;
  }();
  PlanBlock<T> b;
  std::memset(&b, 0, sizeof(b));
  alignas(64) T dots[4][PlanBlock<T>::kBlock] = {};
  detail::Corners<T> cs[N];
  bool oks[N];
  for (int i = 0; i < N; ++i) {
    const bool discrete = i % 3 == 1;
    const T x = static_cast<T>(u(rng)), y = i % 5 == 2 ? T(-2) : static_cast<T>(u(rng));
    oks[i] = detail::mode_corners<T>(lv, discrete, x, y, &cs[i]);
    const T A = static_cast<T>(nd(rng));
    b.attention[i] = A;
    b.sampled[i] = oks[i] ? (discrete ? 2 : 1) : 0;
    if (oks[i]) {
      for (int k = 0; k < 4; ++k) b.weight[k][i] = cs[i].weight[k];
      b.lh[i] = cs[i].d_dw[3];
      b.lw[i] = cs[i].d_dh[3];
    }
    for (int k = 0; k < 4; ++k) dots[k][i] = oks[i] ? static_cast<T>(nd(rng)) : T(0);
  }
  typename PL::Vec ga, gx, gy;
  T scale_x[N], scale_y[N];
  for (int i = 0; i < N; ++i) {
    scale_x[i] = lv.scale_x;
    scale_y[i] = lv.scale_y;
  }
  group_gradients<T>(b, dots, 0, scale_x, scale_y, &ga, &gx, &gy);
  for (int i = 0; i < N; ++i) {
    T sa = 0, sx = 0, sy = 0;
    if (oks[i]) {
      const T d[4] = {dots[0][i], dots[1][i], dots[2][i], dots[3][i]};
      detail::sample_gradients(cs[i], d, b.attention[i], lv.scale_x, lv.scale_y, &sa, &sx, &sy);
    }
    CHECK(same_bits(sa, ga[i]));
    CHECK(same_bits(sx, gx[i]));
    CHECK(same_bits(sy, gy[i]));
  }
}

}  // namespace

int main() {
#if MSDACORE_VEC_BYTES > 16 && defined(__x86_64__)
  const bool runs = MSDACORE_VEC_BYTES == 32
                        ? __builtin_cpu_supports("avx2")
                        : __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                              __builtin_cpu_supports("avx512dq") &&
                              __builtin_cpu_supports("avx512bw");
  if (!runs) {
    std::printf(
        "points (%s): skipped, this CPU lacks the instruction set\n",
        MSDACORE_STRINGIFY(MSDACORE_CPU_ISA));
    return 0;
  }
#endif
  for (bool ac : {false, true}) {
    test_group_corners<float, PointLanes<float>::kLanes>(ac);
    test_group_corners<float, kNarrowLanes<float>>(ac);
    test_group_corners<double, PointLanes<double>::kLanes>(ac);
    test_group_corners<double, kNarrowLanes<double>>(ac);
  }
  test_dot_and_fold<float, 64>();
  test_dot_and_fold<float, 128>();
  test_dot_and_fold<float, 256>();
  test_dot_and_fold<double, 128>();
  test_dot_and_fold<double, 256>();
  test_group_gradients<float>();
  test_group_gradients<double>();
  return report("points (" MSDACORE_STRINGIFY(MSDACORE_CPU_ISA) "): vector forms bitwise equal "
                "to the scalar math");
}
