// build_info(), the CPU thread count, and the CUDA runtime services of runtime.hpp.
// build_info() reads only what the build knows: it starts no CUDA driver.
#include "msdacore/runtime.hpp"

#include <atomic>
#include <string>

#include "backend.hpp"
#include "build_config.hpp"
#include "cpu_kernels.hpp"
#include "msdacore/errors.hpp"
#include "msdacore/version.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define MSDACORE_HAVE_PTHREAD_ATFORK 1
#endif

namespace msdacore {
namespace {

std::atomic<int> g_num_threads{0};  // 0: OpenMP's default

// Fork safety: GNU libgomp's thread pool does not survive fork(), so a parallel region in a
// child of a process that has run one never returns. As torch does, a forked child starts
// at one thread (its CPU calls run on the calling thread); set_num_threads() in the child
// can raise it again, at the child's own risk with libgomp.
#ifdef MSDACORE_HAVE_PTHREAD_ATFORK
void one_thread_after_fork() { g_num_threads.store(1); }
[[maybe_unused]] const bool g_fork_handler_registered =
    pthread_atfork(nullptr, nullptr, &one_thread_after_fork) == 0;
#endif

int default_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

std::string compiler_name() {
#if defined(__clang__)
  return "clang " __clang_version__;
#elif defined(__GNUC__)
  return "gcc " __VERSION__;
#elif defined(_MSC_VER)
  return "msvc " + std::to_string(_MSC_VER);
#else
  return "unknown";
#endif
}

}  // namespace

void set_num_threads(int n) {
  if (n < 1 || n > kMaxNumThreads) {
    throw Error(
        "num_threads must be between 1 and " + std::to_string(kMaxNumThreads) + ", got " +
        std::to_string(n));
  }
#ifdef _OPENMP
  g_num_threads.store(n);
#endif
}

int get_num_threads() {
  const int n = g_num_threads.load();
  return n > 0 ? n : default_threads();
}

BuildInfo build_info() {
  BuildInfo info;
  info.version = MSDACORE_VERSION_STRING;
#ifdef _OPENMP
  info.openmp = true;
  info.openmp_version = _OPENMP;
#endif
  info.num_threads = get_num_threads();
  info.max_threads = default_threads();
#ifdef MSDACORE_WITH_CUDA
  info.cuda_compiled = true;
  info.cuda_kernels = true;  // cuda/forward.cu, backward.cu, deterministic.cu
  info.cuda_runtime_version = cuda::runtime_version();  // no driver call
#endif
  info.cuda_fallback = MSDACORE_CUDA_FALLBACK;
  info.cpu_isa = cpu::selected_isa();
  info.cpu_isas = cpu::compiled_isas();
  info.compiler = compiler_name();
  return info;
}

int cuda_device_count() {
#ifdef MSDACORE_WITH_CUDA
  return cuda::device_count();
#else
  return 0;
#endif
}

void cuda_stream_wait(int device, void* waiting, void* producer) {
#ifdef MSDACORE_WITH_CUDA
  cuda::stream_wait(device, waiting, producer);
#else
  (void)device;
  (void)waiting;
  (void)producer;
  throw DeviceError("cuda_stream_wait: this build of msdacore was compiled without CUDA");
#endif
}

void cuda_synchronize(int device, void* stream) {
#ifdef MSDACORE_WITH_CUDA
  cuda::synchronize(device, stream);
#else
  (void)device;
  (void)stream;
  throw DeviceError("cuda_synchronize: this build of msdacore was compiled without CUDA");
#endif
}

}  // namespace msdacore
