// Internal: the CPU backend for float16 / bfloat16 value and mixed precision (float32
// sampling_locations / attention_weights with a half value): inputs widened to float32
// in the workspace, the float32 kernels, outputs rounded once (cpu_widen.cpp).
#pragma once

#include "msdacore/ops.hpp"
#include "workspace.hpp"

namespace msdacore {
namespace cpu {

// The float32 kernels of the instruction set in use (cpu_dispatch.cpp fills it).
struct FloatKernels {
  void (*forward)(
      const Problem&, const Options&, const TensorView&, const TensorView&, const TensorView&,
      const TensorView&);
  void (*backward)(
      const Problem&, const Options&, const TensorView&, const TensorView&, const TensorView&,
      const TensorView&, const TensorView&, const TensorView&, const TensorView&);
};

// True when the problem's value is a half type (the float32 / float64 kernels read
// float32 and float64 directly).
bool needs_widening(const Problem& p);

// Bytes of workspace the forward (backward = false) or backward of such a problem needs.
// `value` is the call's (its broadcast dimensions are not copied).
int64_t widened_workspace_size(const Problem& p, bool backward, const TensorView& value);

// Forward / backward of such a problem. Run on a counting Workspace, they only take their
// buffers from it (sizing); the shapes and dtypes are those of msdacore/ops.hpp, the
// outputs in their own dtypes (output and grad_value: value's; grad_sampling_locations:
// sampling_locations'; grad_attention_weights: attention_weights').
void widened_forward(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, const TensorView& output, Workspace& workspace,
    const FloatKernels& kernels);
void widened_backward(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_loc, const TensorView& grad_attn, Workspace& workspace,
    const FloatKernels& kernels);

}  // namespace cpu
}  // namespace msdacore
