// msdacore/runtime.hpp: what this build can do, and the CPU thread count.
#pragma once

#include <string>

namespace msdacore {

struct BuildInfo {
  std::string version;          // "0.1.0"
  bool openmp = false;          // CPU kernels parallelised with OpenMP
  int openmp_version = 0;       // _OPENMP date (e.g. 201511), 0 without OpenMP
  int num_threads = 1;          // threads the CPU kernels use now
  int max_threads = 1;          // default thread count (OMP_NUM_THREADS or cores)
  bool cuda_compiled = false;   // CUDA code compiled into this build
  bool cuda_kernels = false;    // CUDA forward/backward kernels available
  int cuda_runtime_version = 0; // CUDA runtime version (e.g. 13000), 0 without CUDA
  int cuda_devices = 0;         // CUDA devices visible now (0 without driver or GPU)
  std::string cpu_isa;          // instruction set the CPU kernels run with ("avx2", "generic")
  std::string cpu_isas;         // CPU kernel builds compiled in ("generic,avx2")
  std::string compiler;         // compiler that built the core
};

BuildInfo build_info();

// Threads used by the CPU kernels of calls started afterwards (1 <= n <= 1024, else Error).
// The default is OpenMP's (OMP_NUM_THREADS, else the number of cores). Results do not
// depend on it: they are bitwise identical for any thread count.
void set_num_threads(int n);
int get_num_threads();

}  // namespace msdacore
