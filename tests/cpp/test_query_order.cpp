// C++ unit test of the CPU kernels' query visiting order (cpp/src/cpu_query_order.hpp):
// a stable sort of each batch element's queries by vertical strip of their first
// sampling location, a permutation whatever the locations (NaN, infinities, outside
// [0, 1]), and the index order (an empty vector) for a single strip or no samples.
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "check.hpp"
#include "cpu_query_order.hpp"

namespace {

using msdacore::Problem;
using msdacore::cpu::generic::kStripPixels;
using msdacore::cpu::generic::query_order;
using msdacore::cpu::generic::strip_of;

Problem problem(int64_t N, int64_t Lq, int64_t width) {
  Problem p;
  p.N = N;
  p.Lq = Lq;
  p.M = 1;
  p.D = 1;
  p.L = 2;
  p.P = 1;
  p.P_total = 2;
  p.heights = {3, 2};
  p.widths = {width, width / 2 > 0 ? width / 2 : 1};
  return p;
}

void test_strips() {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(strip_of(0.0, 4) == 0);
  CHECK(strip_of(0.2499, 4) == 0);
  CHECK(strip_of(0.25, 4) == 1);
  CHECK(strip_of(0.9999, 4) == 3);
  CHECK(strip_of(1.0, 4) == 3);
  CHECK(strip_of(-0.5, 4) == 0);
  CHECK(strip_of(nan, 4) == 0);
  CHECK(strip_of(inf, 4) == 3);
  CHECK(strip_of(-inf, 4) == 0);
  CHECK(strip_of(0.7f, 4) == 2);
}

// Locations (N, Lq, 1 head, 2 points, 2) with query q's first x given; every query of
// batch element n visited once, strips in increasing order, queries of a strip in order.
void test_order() {
  const int64_t N = 2, Lq = 9, width = 4 * kStripPixels;  // 4 strips
  const Problem p = problem(N, Lq, width);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float xs[N][Lq] = {
      {0.9f, 0.1f, 0.6f, 0.3f, 0.2f, nan, 1.5f, -0.2f, 0.55f},
      {0.0f, 0.0f, 0.0f, 0.99f, 0.0f, 0.26f, 0.0f, 0.0f, 0.0f}};
  const int64_t query_stride = 4, batch_stride = Lq * query_stride;
  std::vector<float> loc(N * batch_stride, 0.5f);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t q = 0; q < Lq; ++q) loc[n * batch_stride + q * query_stride] = xs[n][q];
  const std::vector<int64_t> order = query_order(p, loc.data(), batch_stride, query_stride);
  // strips: 0.9->3 0.1->0 0.6->2 0.3->1 0.2->0 nan->0 1.5->3 -0.2->0 0.55->2
  const int64_t want0[Lq] = {1, 4, 5, 7, 3, 2, 8, 0, 6};
  const int64_t want1[Lq] = {0, 1, 2, 4, 6, 7, 8, 5, 3};
  CHECK(static_cast<int64_t>(order.size()) == N * Lq);
  for (int64_t i = 0; i < Lq; ++i) {
    CHECK(order[i] == want0[i]);
    CHECK(order[Lq + i] == want1[i]);
  }
}

// Index order (an empty vector, nothing allocated): a single strip, or nothing sampled
// (here 2^40 queries of no heads, which no input could hold an order for).
void test_index_order() {
  const int64_t Lq = 5;
  const Problem p = problem(1, Lq, kStripPixels);  // widest level one strip wide
  const std::vector<double> loc = {0.9, 0, 0.1, 0, 0.5, 0, 0.2, 0, 0.7, 0};
  CHECK(query_order(p, loc.data(), Lq * 2, 2).empty());
  Problem empty = problem(1, int64_t{1} << 40, 4 * kStripPixels);
  empty.M = 0;
  CHECK(query_order(empty, loc.data(), 0, 0).empty());
}

// No more strips than queries: a level 2^50 pixels wide (and 0 high) with 5 queries
// sorts them into at most 5 strips, taking memory for 5, not 2^47.
void test_strips_capped_by_queries() {
  const int64_t Lq = 5;
  Problem p = problem(1, Lq, kStripPixels);
  p.widths[0] = int64_t{1} << 50;
  p.heights[0] = 0;
  const std::vector<double> loc = {0.9, 0, 0.1, 0, 0.5, 0, 0.2, 0, 0.7, 0};
  const std::vector<int64_t> order = query_order(p, loc.data(), Lq * 2, 2);
  // 5 strips of [0, 1): 0.1 -> 0, 0.2 -> 1, 0.5 -> 2, 0.7 -> 3, 0.9 -> 4
  const int64_t want[Lq] = {1, 3, 2, 4, 0};
  CHECK(static_cast<int64_t>(order.size()) == Lq);
  for (int64_t i = 0; i < Lq && i < static_cast<int64_t>(order.size()); ++i) {
    CHECK(order[i] == want[i]);
  }
}

}  // namespace

int main() {
  test_strips();
  test_order();
  test_index_order();
  test_strips_capped_by_queries();
  return report("query_order: strips, stable order and permutation as specified");
}
