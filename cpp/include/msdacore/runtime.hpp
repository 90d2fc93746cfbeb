// msdacore/runtime.hpp: what this build can do, the CPU thread count, and the few CUDA
// runtime services a front end needs (device count, stream ordering).
//
// Nothing here starts the CUDA driver except cuda_device_count() and the stream
// functions: build_info() is safe to call before fork() (DataLoader workers,
// multiprocessing), which a driver initialised in the parent would break.
#pragma once

#include <string>

namespace msdacore {

struct BuildInfo {
  std::string version;           // "0.1.0"
  bool openmp = false;           // CPU kernels parallelised with OpenMP
  int openmp_version = 0;        // _OPENMP date (e.g. 201511), 0 without OpenMP
  int num_threads = 1;           // threads the CPU kernels use now
  int max_threads = 1;           // default thread count (OMP_NUM_THREADS or cores)
  bool cuda_compiled = false;    // CUDA code compiled into this build
  bool cuda_kernels = false;     // CUDA forward/backward kernels available
  int cuda_runtime_version = 0;  // CUDA runtime the build links (e.g. 13000), 0 without CUDA
  std::string cuda_fallback;     // why a build that looked for CUDA has none though a CUDA
                                 // compiler was found ("" otherwise)
  std::string cpu_isa;           // instruction set the CPU kernels run with ("avx2", "generic")
  std::string cpu_isas;          // CPU kernel builds compiled in ("generic,avx2")
  std::string compiler;          // compiler that built the core
};

BuildInfo build_info();

// The most threads set_num_threads() accepts (beyond it, thread creation itself may fail).
constexpr int kMaxNumThreads = 1024;

// Threads used by the CPU kernels of calls started afterwards (1 <= n <= kMaxNumThreads,
// else Error).
// The default is OpenMP's (OMP_NUM_THREADS, else the number of cores). Results do not
// depend on it: they are bitwise identical for any thread count.
void set_num_threads(int n);
int get_num_threads();

// CUDA devices visible to this process: 0 in a build without CUDA, on a machine without a
// CUDA driver, or with no GPU (or CUDA_VISIBLE_DEVICES hiding them). Throws RuntimeError
// naming both versions when the driver is older than the CUDA runtime this build needs,
// and for any other failure of the driver. Initialises the driver (first call only).
int cuda_device_count();

// Makes CUDA stream `waiting` of `device` wait (on the device, without blocking the host)
// for the work enqueued so far on stream `producer`. Nothing when they are the same.
// DeviceError in a build without CUDA.
void cuda_stream_wait(int device, void* waiting, void* producer);

// Blocks until the work enqueued so far on `stream` of `device` is done.
// DeviceError in a build without CUDA.
void cuda_synchronize(int device, void* stream);

}  // namespace msdacore
