// XLA FFI handlers of msdacore's forward and backward (CPU and CUDA platforms). Every call
// goes through the table of msdacore's C API (msdacore_c.h) that msdacore._core exports;
// this file only turns XLA buffers and attributes into msdacore_tensor views and options.
//
// Operands, as msdacore.jax passes them (always the flattened layout; any leading vmap
// dimensions in front of N are folded into N, the buffers being row-major):
//   value (..., N, S, M, D), sampling_locations (..., N, Lq, M, P_total, 2),
//   attention_weights (..., N, Lq, M, P_total), grad_output (..., N, Lq, M*D)
// Attributes: spatial_shapes (2L int64, rows H, W), level_start_index (L int64),
//   points_per_level (L int64), align_corners (int32 0/1), mode (int32, MSDACORE_MODE_*),
//   deterministic (int32 0/1: the CUDA backward without atomics).
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>

#include "msdacore/msdacore_c.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

#define MSDACORE_JAX_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

std::atomic<const msdacore_c_api_table*> g_api{nullptr};

// The last member of the table this file calls: a table shorter than that is refused.
constexpr size_t kTableNeeds = offsetof(msdacore_c_api_table, tensor_contiguous) +
                               sizeof(msdacore_c_api_table::tensor_contiguous);

// The attributes of every handler, decoded by name (the header comment lists them).
struct CallAttrs {
  ffi::Span<const int64_t> spatial_shapes, level_start_index, points_per_level;
  int32_t align_corners, mode, deterministic;
};

}  // namespace

XLA_FFI_REGISTER_STRUCT_ATTR_DECODING(
    CallAttrs, xla::ffi::StructMember<xla::ffi::Span<const int64_t>>("spatial_shapes"),
    xla::ffi::StructMember<xla::ffi::Span<const int64_t>>("level_start_index"),
    xla::ffi::StructMember<xla::ffi::Span<const int64_t>>("points_per_level"),
    xla::ffi::StructMember<int32_t>("align_corners"), xla::ffi::StructMember<int32_t>("mode"),
    xla::ffi::StructMember<int32_t>("deterministic"));

namespace {

// A row-major view of a buffer whose leading dimensions in front of the last `rank - 1`
// are folded into the first one (vmap's batch dimensions times N); rank <= dims.size().
msdacore_tensor folded_view(
    const msdacore_c_api_table* api, void* data, ffi::Span<const int64_t> dims, int32_t rank,
    int32_t dtype, int32_t device_type, int32_t device_index) {
  int64_t shape[MSDACORE_MAX_DIMS] = {};
  const int64_t lead = static_cast<int64_t>(dims.size()) - rank;  // dimensions folded into N
  shape[0] = 1;
  for (int64_t d = 0; d <= lead; ++d) shape[0] *= dims[d];
  for (int32_t d = 1; d < rank; ++d) shape[d] = dims[lead + d];
  msdacore_tensor t;
  api->tensor_contiguous(&t, data, rank, shape, dtype);  // rank <= MSDACORE_MAX_DIMS: OK
  t.device_type = device_type;
  t.device_index = device_index;
  return t;
}

// msdacore's dtype code of an XLA element type (-1: none).
int32_t dtype_code(ffi::DataType type) {
  switch (type) {
    case ffi::DataType::F16: return MSDACORE_FLOAT16;
    case ffi::DataType::BF16: return MSDACORE_BFLOAT16;
    case ffi::DataType::F32: return MSDACORE_FLOAT32;
    case ffi::DataType::F64: return MSDACORE_FLOAT64;
    default: return -1;
  }
}

// The host-side arguments every call shares: the index arrays and the options.
struct Common {
  msdacore_tensor spatial_shapes, level_start_index;
  msdacore_options options;
};

Common make_common(const msdacore_c_api_table* api, const CallAttrs& attrs) {
  Common c;
  const int64_t ss_shape[2] = {static_cast<int64_t>(attrs.spatial_shapes.size()) / 2, 2};
  const int64_t lsi_shape[1] = {static_cast<int64_t>(attrs.level_start_index.size())};
  api->tensor_contiguous(
      &c.spatial_shapes, const_cast<int64_t*>(attrs.spatial_shapes.begin()), 2, ss_shape,
      MSDACORE_INT64);
  api->tensor_contiguous(
      &c.level_start_index, const_cast<int64_t*>(attrs.level_start_index.begin()), 1, lsi_shape,
      MSDACORE_INT64);
  api->options_init(&c.options);
  c.options.align_corners = attrs.align_corners;
  c.options.mode = attrs.mode;
  c.options.deterministic = attrs.deterministic;
  c.options.points_per_level = attrs.points_per_level.begin();
  c.options.num_levels = static_cast<int64_t>(attrs.points_per_level.size());
  return c;
}

// The error XLA reports for a failed msdacore call: msdacore's own message.
ffi::Error failure(const msdacore_c_api_table* api, msdacore_status status) {
  return ffi::Error(
      ffi::ErrorCode::kInvalidArgument,
      std::string("msdacore: ") + api->status_name(status) + ": " + api->last_error());
}

const msdacore_c_api_table* api_or_null() { return g_api.load(std::memory_order_acquire); }

ffi::Error no_api() {
  return ffi::Error(
      ffi::ErrorCode::kFailedPrecondition,
      "msdacore: the XLA handlers were called before msdacore.jax handed them "
      "the C API table (import msdacore.jax first)");
}

// Floating-point view of a buffer, or an error naming it.
ffi::ErrorOr<msdacore_tensor> float_view(
    const msdacore_c_api_table* api, const char* name, void* data, ffi::DataType type,
    ffi::Span<const int64_t> dims, int32_t rank, int32_t device_type, int32_t device_index) {
  const int32_t code = dtype_code(type);
  if (code < 0 || static_cast<int32_t>(dims.size()) < rank) {
    return ffi::Unexpected(
        ffi::Error(
            ffi::ErrorCode::kInvalidArgument,
            std::string("msdacore: ") + name +
                " must be a float16, bfloat16, float32 or float64 "
                "array of rank >= " +
                std::to_string(rank)));
  }
  return folded_view(api, data, dims, rank, code, device_type, device_index);
}

// The device a handler runs on (msdacore's device type and index).
struct Device {
  int32_t type, index;
};

// What every handler starts from: the table, the host arguments, the five input views
// (value, spatial_shapes, level_start_index, sampling_locations, attention_weights) and
// the device.
struct Handler {
  const msdacore_c_api_table* api = nullptr;
  Common c;
  msdacore_tensor in[5];
  Device device;

  // float_view of an XLA buffer (operand or result) on the call's device.
  ffi::ErrorOr<msdacore_tensor> view(const char* name, ffi::AnyBuffer buffer, int32_t rank) const {
    return float_view(
        api, name, buffer.untyped_data(), buffer.element_type(), buffer.dimensions(), rank,
        device.type, device.index);
  }
};

// Fills *h for a call on `device` (the table, the options, the five input views).
ffi::Error start(
    Handler* h, void* stream, Device device, ffi::AnyBuffer value, ffi::AnyBuffer loc,
    ffi::AnyBuffer attn, const CallAttrs& attrs);

// Scratch for a call: XLA's scratch allocator on CUDA, msdacore's default allocator (NULL)
// on the CPU, where only half types need any.
template <typename SizeFn>
ffi::Error take_workspace(
    SizeFn size_fn, ffi::ScratchAllocator* scratch, const msdacore_c_api_table* api,
    const msdacore_tensor* in, msdacore_options* options) {
  if (scratch == nullptr) return ffi::Error::Success();
  int64_t bytes = 0;
  const msdacore_status s = size_fn(&in[0], &in[1], &in[2], &in[3], &in[4], options, &bytes);
  if (s != MSDACORE_OK) return failure(api, s);
  if (bytes == 0) return ffi::Error::Success();
  std::optional<void*> memory = scratch->Allocate(static_cast<size_t>(bytes), 256);
  if (!memory.has_value()) {
    return ffi::Error(
        ffi::ErrorCode::kResourceExhausted, "msdacore: XLA's scratch allocator could not provide " +
                                                std::to_string(bytes) + " bytes of workspace");
  }
  options->workspace = *memory;
  options->workspace_bytes = bytes;
  return ffi::Error::Success();
}

ffi::Error start(
    Handler* h, void* stream, Device device, ffi::AnyBuffer value, ffi::AnyBuffer loc,
    ffi::AnyBuffer attn, const CallAttrs& attrs) {
  h->api = api_or_null();
  if (h->api == nullptr) return no_api();
  h->c = make_common(h->api, attrs);
  h->c.options.stream = stream;
  h->device = device;
  auto v = h->view("value", value, 4);
  if (v.has_error()) return v.error();
  auto l = h->view("sampling_locations", loc, 5);
  if (l.has_error()) return l.error();
  auto a = h->view("attention_weights", attn, 4);
  if (a.has_error()) return a.error();
  h->in[0] = *v;
  h->in[1] = h->c.spatial_shapes;
  h->in[2] = h->c.level_start_index;
  h->in[3] = *l;
  h->in[4] = *a;
  return ffi::Error::Success();
}

// The handlers of both platforms: the CPU ones have no stream and no scratch allocator.
ffi::Error forward(
    void* stream, ffi::ScratchAllocator* scratch, Device device, ffi::AnyBuffer value,
    ffi::AnyBuffer loc, ffi::AnyBuffer attn, ffi::Result<ffi::AnyBuffer> out,
    const CallAttrs& attrs) {
  Handler h;
  if (ffi::Error e = start(&h, stream, device, value, loc, attn, attrs); e.failure()) return e;
  const msdacore_c_api_table* api = h.api;
  msdacore_tensor* in = h.in;
  auto o = h.view("output", *out, 3);
  if (o.has_error()) return o.error();
  if (ffi::Error e = take_workspace(api->forward_workspace_size, scratch, api, in, &h.c.options);
      e.failure()) {
    return e;
  }
  const msdacore_status s = api->forward(&in[0], &in[1], &in[2], &in[3], &in[4], &*o, &h.c.options);
  return s == MSDACORE_OK ? ffi::Error::Success() : failure(api, s);
}

ffi::Error backward(
    void* stream, ffi::ScratchAllocator* scratch, Device device, ffi::AnyBuffer value,
    ffi::AnyBuffer loc, ffi::AnyBuffer attn, ffi::AnyBuffer grad_output,
    ffi::Result<ffi::AnyBuffer> grad_value, ffi::Result<ffi::AnyBuffer> grad_loc,
    ffi::Result<ffi::AnyBuffer> grad_attn, const CallAttrs& attrs) {
  Handler h;
  if (ffi::Error e = start(&h, stream, device, value, loc, attn, attrs); e.failure()) return e;
  const msdacore_c_api_table* api = h.api;
  msdacore_tensor* in = h.in;
  auto g = h.view("grad_output", grad_output, 3);
  if (g.has_error()) return g.error();
  auto gv = h.view("grad_value", *grad_value, 4);
  if (gv.has_error()) return gv.error();
  auto gl = h.view("grad_sampling_locations", *grad_loc, 5);
  if (gl.has_error()) return gl.error();
  auto ga = h.view("grad_attention_weights", *grad_attn, 4);
  if (ga.has_error()) return ga.error();
  if (ffi::Error e = take_workspace(api->backward_workspace_size, scratch, api, in, &h.c.options);
      e.failure()) {
    return e;
  }
  const msdacore_status s =
      api->backward(&in[0], &in[1], &in[2], &in[3], &in[4], &*g, &*gv, &*gl, &*ga, &h.c.options);
  return s == MSDACORE_OK ? ffi::Error::Success() : failure(api, s);
}

constexpr Device kCpu{MSDACORE_DEVICE_CPU, 0};

ffi::Error forward_cpu(
    ffi::AnyBuffer value, ffi::AnyBuffer loc, ffi::AnyBuffer attn, ffi::Result<ffi::AnyBuffer> out,
    CallAttrs attrs) {
  return forward(nullptr, nullptr, kCpu, value, loc, attn, out, attrs);
}

ffi::Error backward_cpu(
    ffi::AnyBuffer value, ffi::AnyBuffer loc, ffi::AnyBuffer attn, ffi::AnyBuffer grad_output,
    ffi::Result<ffi::AnyBuffer> gv, ffi::Result<ffi::AnyBuffer> gl, ffi::Result<ffi::AnyBuffer> ga,
    CallAttrs attrs) {
  return backward(nullptr, nullptr, kCpu, value, loc, attn, grad_output, gv, gl, ga, attrs);
}

ffi::Error forward_cuda(
    void* stream, ffi::ScratchAllocator scratch, int32_t device, ffi::AnyBuffer value,
    ffi::AnyBuffer loc, ffi::AnyBuffer attn, ffi::Result<ffi::AnyBuffer> out, CallAttrs attrs) {
  return forward(
      stream, &scratch, Device{MSDACORE_DEVICE_CUDA, device}, value, loc, attn, out, attrs);
}

ffi::Error backward_cuda(
    void* stream, ffi::ScratchAllocator scratch, int32_t device, ffi::AnyBuffer value,
    ffi::AnyBuffer loc, ffi::AnyBuffer attn, ffi::AnyBuffer grad_output,
    ffi::Result<ffi::AnyBuffer> gv, ffi::Result<ffi::AnyBuffer> gl, ffi::Result<ffi::AnyBuffer> ga,
    CallAttrs attrs) {
  return backward(
      stream, &scratch, Device{MSDACORE_DEVICE_CUDA, device}, value, loc, attn, grad_output, gv, gl,
      ga, attrs);
}

}  // namespace

// The handlers, exported (the library is built with hidden visibility).
MSDACORE_JAX_EXPORT XLA_FFI_Error* msdacore_jax_forward_cpu(XLA_FFI_CallFrame* call_frame);
MSDACORE_JAX_EXPORT XLA_FFI_Error* msdacore_jax_backward_cpu(XLA_FFI_CallFrame* call_frame);
MSDACORE_JAX_EXPORT XLA_FFI_Error* msdacore_jax_forward_cuda(XLA_FFI_CallFrame* call_frame);
MSDACORE_JAX_EXPORT XLA_FFI_Error* msdacore_jax_backward_cuda(XLA_FFI_CallFrame* call_frame);

// The attributes shared by every handler, after its buffers (CallAttrs).
#define MSDACORE_JAX_ATTRS .Attrs<CallAttrs>()

// The buffers of each handler: forward (value, sampling_locations, attention_weights) ->
// output; backward (the same, grad_output) -> the three gradients. The CUDA handlers take
// XLA's stream, scratch allocator and device ordinal first.
#define MSDACORE_JAX_FORWARD_BUFFERS \
  .Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()
#define MSDACORE_JAX_BACKWARD_BUFFERS \
  .Arg<ffi::AnyBuffer>()              \
      .Arg<ffi::AnyBuffer>()          \
      .Arg<ffi::AnyBuffer>()          \
      .Arg<ffi::AnyBuffer>()          \
      .Ret<ffi::AnyBuffer>()          \
      .Ret<ffi::AnyBuffer>()          \
      .Ret<ffi::AnyBuffer>()
#define MSDACORE_JAX_CUDA_CONTEXT \
  .Ctx<ffi::PlatformStream<void*>>().Ctx<ffi::ScratchAllocator>().Ctx<ffi::DeviceOrdinal>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(
    msdacore_jax_forward_cpu, forward_cpu,
    ffi::Ffi::Bind() MSDACORE_JAX_FORWARD_BUFFERS MSDACORE_JAX_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    msdacore_jax_backward_cpu, backward_cpu,
    ffi::Ffi::Bind() MSDACORE_JAX_BACKWARD_BUFFERS MSDACORE_JAX_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    msdacore_jax_forward_cuda, forward_cuda,
    ffi::Ffi::Bind() MSDACORE_JAX_CUDA_CONTEXT MSDACORE_JAX_FORWARD_BUFFERS MSDACORE_JAX_ATTRS);
XLA_FFI_DEFINE_HANDLER_SYMBOL(
    msdacore_jax_backward_cuda, backward_cuda,
    ffi::Ffi::Bind() MSDACORE_JAX_CUDA_CONTEXT MSDACORE_JAX_BACKWARD_BUFFERS MSDACORE_JAX_ATTRS);

// Hands the handlers msdacore._core's C API table (the pointer of the PyCapsule
// "msdacore.c_api"). Returns 0, or -1 for a NULL or too short table.
MSDACORE_JAX_EXPORT int32_t msdacore_jax_set_api(const void* table) {
  const auto* api = static_cast<const msdacore_c_api_table*>(table);
  if (api == nullptr || api->struct_size < static_cast<int64_t>(kTableNeeds)) return -1;
  g_api.store(api, std::memory_order_release);
  return 0;
}
