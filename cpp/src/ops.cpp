// Op entry points: a Call validates the inputs once (the only validation on the way from
// any front end to a kernel); its workspace queries and runs share that problem, size and
// provide the workspace, and call the backend of the problem's device (backend.hpp),
// which dispatches on dtype. The free functions are one Call each.
#include "msdacore/ops.hpp"

#include <cstdint>
#include <string>

#include "backend.hpp"
#include "msdacore/errors.hpp"
#include "msdacore/memory.hpp"
#include "validate.hpp"

namespace msdacore {
namespace {

// The four functions of one backend.
struct Backend {
  int64_t (*forward_workspace_size)(const Problem&, const Options&, const TensorView&);
  int64_t (*backward_workspace_size)(const Problem&, const Options&, const TensorView&);
  void (*forward)(
      const Problem&, const Options&, const TensorView&, const TensorView&, const TensorView&,
      const TensorView&, Workspace&);
  void (*backward)(
      const Problem&, const Options&, const TensorView&, const TensorView&, const TensorView&,
      const TensorView&, const TensorView&, const TensorView&, const TensorView&, Workspace&);
};

// The backend of a validated problem's device (check_inputs has already rejected devices
// this build cannot run on).
const Backend& backend_for(const Problem& p) {
  static const Backend cpu_backend{
      cpu::forward_workspace_size, cpu::backward_workspace_size, cpu::forward, cpu::backward};
#ifdef MSDACORE_WITH_CUDA
  static const Backend cuda_backend{
      cuda::forward_workspace_size, cuda::backward_workspace_size, cuda::forward, cuda::backward};
  if (p.device.type == DeviceType::CUDA) return cuda_backend;
#endif
  if (p.device.type != DeviceType::CPU) {
    throw DeviceError("msdacore: " + device_name(p.device) + " is not supported by this build");
  }
  return cpu_backend;
}

// Host scratch of at least `bytes` for a call on this thread: one block per thread, kept
// between calls and grown to the largest workspace the thread's calls needed, freed when
// the thread ends. The CPU's half-type paths need tens of megabytes per call (float32
// copies), and fresh pages cost their first touch (the OS zeroes every 4 KiB page):
// measured on detr-enc, float16 forward 52.8 -> 29.3 ms (docs/benchmarks.md).
void* thread_host_workspace(const Device& device, int64_t bytes) {
  struct Block {
    Buffer buffer;
    int64_t bytes = 0;
  };
  thread_local Block block;
  if (block.bytes < bytes) {
    block.buffer.reset();  // the old block first: the two need not coexist
    block.buffer = Buffer(device, bytes);
    block.bytes = bytes;
  }
  return block.buffer.data();
}

// The bytes of the caller's workspace a call that needs `needed` uses (none when the
// caller gave none), for the overlap check of the call's arguments.
validate::WorkspaceSpan caller_workspace(
    const Options& options, int64_t needed, const Device& device) {
  if (options.workspace == nullptr || needed <= 0) return {};
  return {options.workspace, needed, device};
}

// The call's workspace: the caller's (checked against `needed`; its overlap with the
// arguments is checked with theirs) or, when the caller gave none and some is needed, the
// calling thread's host block (CPU) or a block of the default allocator released on the
// call's stream (CUDA).
class CallWorkspace {
 public:
  CallWorkspace(const Problem& p, const Options& options, int64_t needed) : view_(nullptr, 0) {
    if (options.workspace != nullptr && needed > 0) {  // unused (and unchecked) otherwise
      if (options.workspace_bytes < needed) {
        throw Error(
            "workspace: " + std::to_string(options.workspace_bytes) +
            " bytes given, but this call needs " + std::to_string(needed) +
            " (Call::*_workspace_size, msdacore_*_workspace_size)");
      }
      if (reinterpret_cast<uintptr_t>(options.workspace) % Workspace::kAlign != 0) {
        throw Error(
            "workspace: the address must be " + std::to_string(Workspace::kAlign) +
            "-byte aligned");
      }
      view_ = Workspace(options.workspace, options.workspace_bytes);
    } else if (needed > 0 && p.device.type == DeviceType::CPU) {
      view_ = Workspace(thread_host_workspace(p.device, needed), needed);
    } else if (needed > 0) {
      owned_ = Buffer(p.device, needed, options.stream);
      view_ = Workspace(owned_.data(), needed);
    }
  }
  Workspace& get() { return view_; }

 private:
  Buffer owned_;
  Workspace view_;
};

void check_backward_arguments(
    const Problem& p, const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights) {
  validate::check_float_input(
      "grad_output", grad_output, p, "N, Lq, M*D", {p.N, p.Lq, p.M * p.D}, p.dtype);
  validate::check_output("grad_value", grad_value, p, "N, S, M, D", {p.N, p.S, p.M, p.D}, p.dtype);
  // In the layout of sampling_locations and attention_weights.
  if (p.flattened) {
    validate::check_output(
        "grad_sampling_locations", grad_sampling_locations, p, "N, Lq, M, P_total, 2",
        {p.N, p.Lq, p.M, p.P_total, 2}, p.loc_dtype, "sampling_locations");
    validate::check_output(
        "grad_attention_weights", grad_attention_weights, p, "N, Lq, M, P_total",
        {p.N, p.Lq, p.M, p.P_total}, p.attn_dtype, "attention_weights");
  } else {
    validate::check_output(
        "grad_sampling_locations", grad_sampling_locations, p, "N, Lq, M, L, P, 2",
        {p.N, p.Lq, p.M, p.L, p.P, 2}, p.loc_dtype, "sampling_locations");
    validate::check_output(
        "grad_attention_weights", grad_attention_weights, p, "N, Lq, M, L, P",
        {p.N, p.Lq, p.M, p.L, p.P}, p.attn_dtype, "attention_weights");
  }
}

// Bytes of workspace a forward (backward = false) or backward call of a validated problem
// needs: 0 when the call computes nothing (N == 0, and for a forward Lq == 0), else what
// the problem's backend says.
int64_t workspace_size(
    const Problem& p, const Options& options, const TensorView& value, bool backward) {
  if (p.N == 0 || (!backward && p.Lq == 0)) return 0;
  const Backend& backend = backend_for(p);
  return backward ? backend.backward_workspace_size(p, options, value)
                  : backend.forward_workspace_size(p, options, value);
}

}  // namespace

Call::Call(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const Options& options)
    : value_(value),
      spatial_shapes_(spatial_shapes),
      level_start_index_(level_start_index),
      sampling_locations_(sampling_locations),
      attention_weights_(attention_weights),
      options_(options),
      problem_(check_inputs(
          value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
          options)) {}

int64_t Call::forward_workspace_size() const {
  return workspace_size(problem_, options_, value_, /*backward=*/false);
}

int64_t Call::backward_workspace_size() const {
  return workspace_size(problem_, options_, value_, /*backward=*/true);
}

void Call::forward(const TensorView& output) const {
  const Problem& p = problem_;
  validate::check_output("output", output, p, "N, Lq, M*D", {p.N, p.Lq, p.M * p.D}, p.dtype);
  const int64_t needed = forward_workspace_size();  // 0 when nothing is computed
  validate::check_no_overlap(
      {{"output", &output}},
      {{"value", &value_},
       {"spatial_shapes", &spatial_shapes_},
       {"level_start_index", &level_start_index_},
       {"sampling_locations", &sampling_locations_},
       {"attention_weights", &attention_weights_}},
      caller_workspace(options_, needed, p.device));
  if (p.N == 0 || p.Lq == 0) return;
  CallWorkspace workspace(p, options_, needed);
  backend_for(p).forward(
      p, options_, value_, sampling_locations_, attention_weights_, output, workspace.get());
}

void Call::backward(
    const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights) const {
  const Problem& p = problem_;
  check_backward_arguments(
      p, grad_output, grad_value, grad_sampling_locations, grad_attention_weights);
  const int64_t needed = backward_workspace_size();  // 0 when nothing is computed
  validate::check_no_overlap(
      {{"grad_value", &grad_value},
       {"grad_sampling_locations", &grad_sampling_locations},
       {"grad_attention_weights", &grad_attention_weights}},
      {{"value", &value_},
       {"spatial_shapes", &spatial_shapes_},
       {"level_start_index", &level_start_index_},
       {"sampling_locations", &sampling_locations_},
       {"attention_weights", &attention_weights_},
       {"grad_output", &grad_output}},
      caller_workspace(options_, needed, p.device));
  if (p.N == 0) return;
  CallWorkspace workspace(p, options_, needed);
  backend_for(p).backward(
      p, options_, value_, sampling_locations_, attention_weights_, grad_output, grad_value,
      grad_sampling_locations, grad_attention_weights, workspace.get());
}

void ms_deform_attn_forward(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& output, const Options& options) {
  Call(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, options)
      .forward(output);
}

void ms_deform_attn_backward(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights,
    const Options& options) {
  Call(value, spatial_shapes, level_start_index, sampling_locations, attention_weights, options)
      .backward(grad_output, grad_value, grad_sampling_locations, grad_attention_weights);
}

}  // namespace msdacore
