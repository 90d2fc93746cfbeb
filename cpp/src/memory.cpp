// The default allocator (memory.hpp): aligned host memory on the CPU, the CUDA backend's
// stream-ordered pool on CUDA devices.
#include "msdacore/memory.hpp"

#include <cstdlib>
#include <new>
#include <string>

#include "backend.hpp"
#include "msdacore/errors.hpp"

namespace msdacore {
namespace {

constexpr size_t kHostAlign = 64;

}  // namespace

void* allocate(Device device, int64_t bytes, void* stream) {
  if (bytes < 0) throw Error("allocate: bytes must be >= 0, got " + std::to_string(bytes));
  if (device.type == DeviceType::CPU) {
    const size_t size = (static_cast<size_t>(bytes) + kHostAlign - 1) / kHostAlign * kHostAlign;
    void* ptr = std::aligned_alloc(kHostAlign, size > 0 ? size : kHostAlign);
    if (ptr == nullptr) {
      throw RuntimeError(
          "msdacore: allocating " + std::to_string(bytes) + " bytes of host memory failed");
    }
    return ptr;
  }
#ifdef MSDACORE_WITH_CUDA
  if (device.type == DeviceType::CUDA) return cuda::pool_allocate(device.index, bytes, stream);
#else
  (void)stream;
#endif
  throw DeviceError("allocate: " + device_name(device) + " is not supported by this build");
}

void deallocate(Device device, void* ptr, void* stream) noexcept {
  if (ptr == nullptr) return;
  if (device.type == DeviceType::CPU) {
    std::free(ptr);
    return;
  }
#ifdef MSDACORE_WITH_CUDA
  if (device.type == DeviceType::CUDA) cuda::pool_free(device.index, ptr, stream);
#else
  (void)stream;
#endif
}

}  // namespace msdacore
