// CUDA device queries (backend.hpp): how many devices are visible, which runtime. Safe
// on machines without a driver or a GPU (zero devices); a driver too old for this build's
// runtime is an error that names both versions, not "no device".
#include <cuda_runtime.h>

#include <string>

#include "backend.hpp"
#include "msdacore/errors.hpp"

namespace msdacore {
namespace cuda {
namespace {

// "13.0" from 13000.
std::string version_string(int v) {
  return std::to_string(v / 1000) + "." + std::to_string((v % 1000) / 10);
}

}  // namespace

int device_count() {
  int count = 0;
  const cudaError_t err = cudaGetDeviceCount(&count);
  if (err == cudaSuccess) return count;
  (void)cudaGetLastError();  // clear the error so later calls can succeed
  if (err == cudaErrorNoDevice) return 0;
  int driver = 0;
  if (cudaDriverGetVersion(&driver) != cudaSuccess) driver = 0;
  (void)cudaGetLastError();
  if (driver == 0) return 0;  // no CUDA driver installed: a CPU-only machine
  if (err == cudaErrorInsufficientDriver || driver < CUDART_VERSION) {
    throw RuntimeError(
        "msdacore: the CUDA driver supports CUDA " + version_string(driver) +
        ", but this build of msdacore needs CUDA " + version_string(CUDART_VERSION) +
        " or newer: update the NVIDIA driver, or install a build of msdacore "
        "for an older CUDA (or a CPU-only build, MSDACORE_CUDA=OFF)");
  }
  throw RuntimeError(
      std::string("msdacore: counting CUDA devices failed: ") + cudaGetErrorName(err) + ": " +
      cudaGetErrorString(err) + " (CUDA driver " + version_string(driver) + ", runtime " +
      version_string(CUDART_VERSION) + ")");
}

// The runtime this build links; known at compile time, so no driver call.
int runtime_version() { return CUDART_VERSION; }

}  // namespace cuda
}  // namespace msdacore
