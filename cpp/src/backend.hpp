// Internal: the backend interface. Each backend implements the same four functions in its
// own namespace, on an already validated Problem:
//   cpu::  cpu_dispatch.cpp (OpenMP kernels, one build per instruction set)
//   cuda:: cuda/*.cu        (builds with MSDACORE_WITH_CUDA only)
// and ops.cpp calls the one of the problem's device. Shapes and dtypes are those of
// msdacore/ops.hpp; outputs are contiguous and fully overwritten.
//
//   forward_workspace_size / backward_workspace_size: bytes of scratch the call needs (the
//             value view too: a copy of a broadcast value holds its distinct elements);
//   forward:  output (N, Lq, M*D) from value, sampling_locations, attention_weights;
//   backward: grad_value, grad_sampling_locations, grad_attention_weights from the
//             same inputs and grad_output.
// `workspace` holds at least *_workspace_size() bytes (on the problem's device, usable on
// options.stream); the backend takes its buffers from it in the order it sized them.
#pragma once

#include <cstdint>

#include "msdacore/ops.hpp"
#include "workspace.hpp"

#define MSDACORE_DECLARE_BACKEND                                                           \
  int64_t forward_workspace_size(                                                          \
      const Problem& p, const Options& options, const TensorView& value);                  \
  int64_t backward_workspace_size(                                                         \
      const Problem& p, const Options& options, const TensorView& value);                  \
  void forward(                                                                            \
      const Problem& p, const Options& options, const TensorView& value,                   \
      const TensorView& sampling_locations, const TensorView& attention_weights,           \
      const TensorView& output, Workspace& workspace);                                     \
  void backward(                                                                           \
      const Problem& p, const Options& options, const TensorView& value,                   \
      const TensorView& sampling_locations, const TensorView& attention_weights,           \
      const TensorView& grad_output, const TensorView& grad_value,                         \
      const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights, \
      Workspace& workspace);

namespace msdacore {

// A type as a value, for the backends' dtype dispatch: a generic lambda called with
// TypeTag<T>{} reads T back as typename decltype(tag)::type.
template <typename T>
struct TypeTag {
  using type = T;
};

namespace cpu {
MSDACORE_DECLARE_BACKEND
}  // namespace cpu

#ifdef MSDACORE_WITH_CUDA
namespace cuda {
MSDACORE_DECLARE_BACKEND

// The CUDA runtime services of runtime.hpp and memory.hpp (cuda/runtime.cu).
// Devices visible; 0 without a driver or GPU; RuntimeError for a driver too old or broken.
int device_count();
// cudaRuntimeGetVersion of the linked runtime (e.g. 13000).
int runtime_version();
// The default allocator's CUDA part: the per-device stream-ordered pool.
void* pool_allocate(int device, int64_t bytes, void* stream);
void pool_free(int device, void* ptr, void* stream) noexcept;
void stream_wait(int device, void* waiting, void* producer);
void synchronize(int device, void* stream);
}  // namespace cuda
#endif

}  // namespace msdacore

#undef MSDACORE_DECLARE_BACKEND
