// Internal: the caller's floating-point mode in every thread of a parallel region.
//
// On x86 the flush-to-zero (FTZ) and denormals-are-zero (DAZ) bits of MXCSR decide how
// subnormal numbers are treated, and they are per thread: a caller that set them (for
// example torch.set_flush_denormal(True)) sets them in its own thread only, so OpenMP's
// worker threads would compute differently and results would depend on the thread count.
// Each task of the CPU kernels runs under the calling thread's FTZ/DAZ bits instead
// (CallerFpMode captured before the parallel region, ScopedFpMode in each task).
// Elsewhere these are no-ops.
#pragma once

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

}  // namespace cpu
}  // namespace msdacore
