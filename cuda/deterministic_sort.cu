// Steps 2 and 3 of the deterministic backward's gather (the steps are described in
// deterministic.cu): the samples' ids sorted by the key of the cell they read, and the
// start of each key's segment in the sorted order. Nothing here depends on the element
// types, so the radix sort (much the costliest code of the CUDA backend to compile) is
// instantiated once, in this translation unit of its own.
#include <cub/device/device_radix_sort.cuh>

#include "common.cuh"

namespace msdacore {
namespace cuda {
namespace {

constexpr const char* kOp = "ms_deform_attn_backward (deterministic)";

// seg[k] = number of sorted keys below k, for k = 0..count_keys.
__global__ void segment_kernel(
    const uint64_t* __restrict__ sorted_keys, int64_t items, int64_t count_keys,
    int64_t* __restrict__ seg) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; k <= count_keys;
       k += stride) {
    int64_t lo = 0, hi = items;
    while (lo < hi) {
      const int64_t mid = lo + (hi - lo) / 2;
      if (sorted_keys[mid] < static_cast<uint64_t>(k)) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    seg[k] = lo;
  }
}

}  // namespace

GatherBuffers take_gather_buffers(
    const Problem& p, int64_t cells, cudaStream_t stream, Workspace& workspace) {
  GatherBuffers b;
  const int64_t samples = p.N * p.Lq * p.M * p.P_total;
  const int64_t count_keys = p.N * p.M * cells;
  b.keys_in = workspace.take<uint64_t>(samples, "the sort keys");
  b.keys_out = workspace.take<uint64_t>(samples, "the sorted keys");
  b.ids_in = workspace.take<uint64_t>(samples, "the sample ids");
  b.ids_out = workspace.take<uint64_t>(samples, "the sorted sample ids");
  while (b.end_bit < 64 && (uint64_t{1} << b.end_bit) <= static_cast<uint64_t>(count_keys)) {
    ++b.end_bit;
  }
  // Sizing pass of the sort: no memory is touched.
  check(
      cub::DeviceRadixSort::SortPairs(
          nullptr, b.sort_temp_bytes, b.keys_in, b.keys_out, b.ids_in, b.ids_out, samples, 0,
          b.end_bit, stream),
      kOp, "sizing the sample sort");
  b.sort_temp = workspace.take_bytes(static_cast<int64_t>(b.sort_temp_bytes), "the sort");
  b.seg = workspace.take<int64_t>(count_keys + 1, "the segment starts");
  return b;
}

void sort_by_cell(
    const GatherBuffers& buffers, int64_t samples, int64_t count_keys, cudaStream_t stream) {
  // 2. stable radix sort on the bits keys use.
  size_t temp_bytes = buffers.sort_temp_bytes;
  check(
      cub::DeviceRadixSort::SortPairs(
          buffers.sort_temp, temp_bytes, buffers.keys_in, buffers.keys_out, buffers.ids_in,
          buffers.ids_out, samples, 0, buffers.end_bit, stream),
      kOp, "sorting the samples by cell");
  check_launch(kOp, "cub::DeviceRadixSort::SortPairs", stream);

  // 3. segment starts.
  segment_kernel<<<item_grid(count_keys + 1), kBlockThreads, 0, stream>>>(
      buffers.keys_out, samples, count_keys, buffers.seg);
  check_launch(kOp, "segment_kernel", stream);
}

}  // namespace cuda
}  // namespace msdacore
