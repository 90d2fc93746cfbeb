// Internal: the order in which the CPU kernels visit the queries of a batch element.
//
// An encoder's queries are the pixels of its feature maps in raster order, and each one
// samples a few pixels around itself on every level. Visited in that order, the rows of
// value (and, in the backward, grad_value) a query touches were last touched a whole
// image row of queries earlier: on detr-enc that is megabytes ago, past the L2 cache, so
// every row comes from L3 again for each query row that samples it. Visiting the queries
// in vertical strips (all queries whose first sampling location lies in strip 0 of the
// image, top to bottom, then strip 1, ...) keeps a strip's few rows of value in L2 while
// the strip is swept (docs/benchmarks.md: detr-enc forward about 30% faster).
//
// The order depends only on the sampling locations (never on the thread count or the
// instruction set: plain float arithmetic), is a stable counting sort (queries of one
// strip keep their relative order), and is a permutation, so every output row is still
// computed once, the same way; in the backward it fixes the order in which grad_value
// accumulates, the same for every thread count.
#pragma once

#include <cstdint>
#include <vector>

#include "msdacore/ops.hpp"

#ifndef MSDACORE_CPU_ISA
#define MSDACORE_CPU_ISA generic
#endif

namespace msdacore {
namespace cpu {
namespace MSDACORE_CPU_ISA {

// Strip width in pixels of the widest level (measured on detr-enc, forward: 4 to 12
// pixels within noise of each other, 24 slower, one strip (the raster order) 25% slower).
constexpr int64_t kStripPixels = 8;

// The strip of a normalized x in [0, 1) split into `strips`: 0 below (and for NaN),
// strips - 1 above.
template <typename T>
inline int64_t strip_of(T x, int64_t strips) {
  const T scaled = x * static_cast<T>(strips);
  if (!(scaled >= static_cast<T>(0))) return 0;  // negative or NaN
  if (!(scaled < static_cast<T>(strips))) return strips - 1;
  return static_cast<int64_t>(scaled);
}

// For every batch element n of `p`, the queries of n in visiting order: order[n*Lq + i]
// is the i-th query of n to visit; or an empty vector when that order is the index order
// (a single strip) or nothing is sampled (no points, heads or channels: then Lq may be
// huge with inputs of no elements, and no memory is taken for it). Keyed by the x of
// head 0's first sampling location of each query: loc[n * batch_stride + q *
// query_stride] (sampling_locations' first two strides, in elements).
template <typename T>
std::vector<int64_t> query_order(
    const Problem& p, const T* loc, int64_t batch_stride, int64_t query_stride) {
  int64_t widest = 1;
  for (int64_t l = 0; l < p.L; ++l) widest = p.widths[l] > widest ? p.widths[l] : widest;
  // No more strips than queries (a level may be wide with no pixels at all: H = 0).
  const int64_t wanted = widest / kStripPixels + (widest % kStripPixels != 0);
  const int64_t strips = wanted < p.Lq ? wanted : p.Lq;
  if (strips <= 1 || p.P_total == 0 || p.M == 0 || p.D == 0 || p.N == 0 || p.Lq == 0) {
    return {};
  }
  std::vector<int64_t> order(static_cast<size_t>(p.N * p.Lq));
  std::vector<int64_t> strip(static_cast<size_t>(p.Lq));
  std::vector<int64_t> next(static_cast<size_t>(strips + 1));
  for (int64_t n = 0; n < p.N; ++n) {
    int64_t* row = order.data() + n * p.Lq;
    for (auto& c : next) c = 0;
    for (int64_t q = 0; q < p.Lq; ++q) {
      const T x = loc[n * batch_stride + q * query_stride];
      strip[q] = strip_of(x, strips);
      ++next[strip[q] + 1];
    }
    for (int64_t s = 0; s < strips; ++s) next[s + 1] += next[s];  // first slot of each strip
    for (int64_t q = 0; q < p.Lq; ++q) row[next[strip[q]]++] = q;
  }
  return order;
}

}  // namespace MSDACORE_CPU_ISA
}  // namespace cpu
}  // namespace msdacore
