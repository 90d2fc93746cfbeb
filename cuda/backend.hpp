// Internal: the CUDA backend as the rest of the library sees it. Plain C++ (no CUDA
// headers), so that ops.cpp, runtime.cpp, validate.cpp and the Python module can call it.
// Only compiled and declared-for-use in builds with MSDACORE_WITH_CUDA.
//
// Every function runs on the device of its arguments (the calling thread's current device
// is restored afterwards) and enqueues its work on options.stream (a cudaStream_t; null
// is the default stream). Failures of the CUDA runtime raise msdacore::RuntimeError with
// a message naming the op; memory that is not CUDA memory of the named device raises
// msdacore::DeviceError.
#pragma once

#include <cstddef>
#include <cstdint>

#include "msdacore/ops.hpp"

namespace msdacore {
namespace cuda {

// Devices visible to this process; 0 without a driver or a GPU (never throws).
int device_count();
// cudaRuntimeGetVersion (e.g. 13000), 0 on failure.
int runtime_version();

// output (N, Lq, M*D) of an already validated problem on a CUDA device (p.N, p.Lq >= 1).
void forward(const Problem& p, const Options& options, const TensorView& value,
             const TensorView& sampling_locations, const TensorView& attention_weights,
             const TensorView& output);

// The three gradients of an already validated problem on a CUDA device (p.N >= 1).
// options.deterministic selects the sorted gather for grad_value instead of atomics.
void backward(const Problem& p, const Options& options, const TensorView& value,
              const TensorView& sampling_locations, const TensorView& attention_weights,
              const TensorView& grad_output, const TensorView& grad_value,
              const TensorView& grad_sampling_locations,
              const TensorView& grad_attention_weights);

// Device memory for outputs the Python module allocates itself (cudaMalloc on `device`;
// RuntimeError naming `what` on failure), and its release (cudaFree, errors ignored).
void* device_alloc(int device, size_t bytes, const char* what);
void device_free(int device, void* ptr) noexcept;
// Blocks until the work enqueued on `stream` of `device` is done (RuntimeError naming `op`).
void synchronize(int device, void* stream, const char* op);
// Makes `waiting` wait (on the device) for the work enqueued so far on `producer`; both are
// streams of `device`. Nothing happens when they are the same stream.
void stream_wait(int device, void* waiting, void* producer, const char* op);

}  // namespace cuda
}  // namespace msdacore
