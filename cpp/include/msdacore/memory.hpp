// msdacore/memory.hpp: msdacore's default allocator, for C++ callers that do not bring
// their own memory (outputs, or the scratch of Options::workspace).
//
// CPU: 64-byte aligned host memory. CUDA: a stream-ordered pool that msdacore owns, one
// per device (cudaMallocFromPoolAsync / cudaFreeAsync). The pool keeps up to its release
// threshold of freed memory cached across synchronizations instead of returning it to
// the driver each time; the default threshold is 1 GiB, or MSDACORE_CUDA_POOL_RELEASE_THRESHOLD
// bytes when that environment variable is set. On devices without memory pools, cudaMalloc,
// and cudaFree after synchronizing the stream.
// Framework front ends (NumPy, torch, CuPy) do not use it: they allocate with their own
// framework, on its current stream, and pass the memory in.
#pragma once

#include <cstdint>

#include "msdacore/tensor.hpp"

namespace msdacore {

// `bytes` of memory on `device`, usable by work enqueued on `stream` (a cudaStream_t;
// null is the legacy default stream; ignored on the CPU). Never null (a unique pointer
// for 0 bytes). Throws RuntimeError when the memory is not available, DeviceError for a
// device this build cannot use.
void* allocate(Device device, int64_t bytes, void* stream = nullptr);

// Releases memory from allocate() once the work enqueued on `stream` so far is done.
void deallocate(Device device, void* ptr, void* stream = nullptr) noexcept;

// Owns one allocate() block; released on its stream when destroyed.
class Buffer {
 public:
  Buffer() = default;
  Buffer(Device device, int64_t bytes, void* stream = nullptr)
      : device_(device), stream_(stream), data_(allocate(device, bytes, stream)) {}
  ~Buffer() { reset(); }
  Buffer(Buffer&& other) noexcept { *this = static_cast<Buffer&&>(other); }
  Buffer& operator=(Buffer&& other) noexcept {
    if (this != &other) {
      reset();
      device_ = other.device_;
      stream_ = other.stream_;
      data_ = other.data_;
      other.data_ = nullptr;
    }
    return *this;
  }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  void* data() const { return data_; }
  void reset() noexcept {
    if (data_ != nullptr) deallocate(device_, data_, stream_);
    data_ = nullptr;
  }

 private:
  Device device_{};
  void* stream_ = nullptr;
  void* data_ = nullptr;
};

}  // namespace msdacore
