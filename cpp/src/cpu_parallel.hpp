// Internal: how the CPU kernels' tasks run: the thread count, whether a problem is worth
// a parallel region, and the caller's floating-point mode in every thread of it.
//
// On x86 the flush-to-zero (FTZ) and denormals-are-zero (DAZ) bits of MXCSR decide how
// subnormal numbers are treated, and they are per thread: a caller that set them (for
// example torch.set_flush_denormal(True)) sets them in its own thread only, so OpenMP's
// worker threads would compute differently and results would depend on the thread count.
// Each task of the CPU kernels runs under the calling thread's FTZ/DAZ bits instead
// (CallerFpMode captured before the parallel region, ScopedFpMode in each task).
// Elsewhere these are no-ops.
#pragma once

#include "cpu_simd.hpp"
#include "msdacore/runtime.hpp"

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <xmmintrin.h>
#define MSDACORE_HAVE_MXCSR 1
#endif

namespace msdacore {
namespace cpu {

#ifdef MSDACORE_HAVE_MXCSR
constexpr unsigned kFtzDaz = 0x8040u;  // MXCSR bit 15 (FTZ) and bit 6 (DAZ)

// The FTZ/DAZ bits of the calling thread.
inline unsigned caller_fp_mode() { return _mm_getcsr() & kFtzDaz; }

// Sets this thread's FTZ/DAZ bits to `mode` for the guard's lifetime.
class ScopedFpMode {
 public:
  explicit ScopedFpMode(unsigned mode) : saved_(_mm_getcsr()) {
    if ((saved_ & kFtzDaz) != mode) _mm_setcsr((saved_ & ~kFtzDaz) | mode);
  }
  ~ScopedFpMode() { _mm_setcsr(saved_); }
  ScopedFpMode(const ScopedFpMode&) = delete;
  ScopedFpMode& operator=(const ScopedFpMode&) = delete;

 private:
  unsigned saved_;
};
#else
inline unsigned caller_fp_mode() { return 0; }
class ScopedFpMode {
 public:
  explicit ScopedFpMode(unsigned) {}
};
#endif

// The setup of one kernel's parallel loop, read once on the calling thread:
//   const TaskRun run(p);
//   #pragma omp parallel for num_threads(run.threads) if (run.parallel)
//   for (task ...) { const ScopedFpMode caller_mode(run.fp_mode); ... }
// One thread (a forked child, set_num_threads(1)) or a small problem: no parallel region.
namespace MSDACORE_CPU_ISA {
struct TaskRun {
  int threads;
  bool parallel;
  unsigned fp_mode;
  explicit TaskRun(const Problem& p)
      : threads(get_num_threads()),
        parallel(threads > 1 && parallel_worth_it(p)),
        fp_mode(caller_fp_mode()) {}
};
}  // namespace MSDACORE_CPU_ISA

}  // namespace cpu
}  // namespace msdacore
