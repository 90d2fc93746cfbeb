// CUDA runtime queries for build_info(): how many devices are visible, which runtime.
// Safe on machines without a driver or a GPU: errors read as zero devices.
#include <cuda_runtime.h>

namespace msdacore {
namespace cuda {

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    (void)cudaGetLastError();  // clear the sticky "no driver" error
    return 0;
  }
  return count;
}

int runtime_version() {
  int version = 0;
  if (cudaRuntimeGetVersion(&version) != cudaSuccess) return 0;
  return version;
}

}  // namespace cuda
}  // namespace msdacore
