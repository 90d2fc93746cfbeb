// CUDA runtime queries for build_info() and device validation: how many devices are
// visible, which runtime. Safe on machines without a driver or a GPU: errors read as zero
// devices, and nothing else is initialised.
#include <cuda_runtime.h>

#include "backend.hpp"

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
