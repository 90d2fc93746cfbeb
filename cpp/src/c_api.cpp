// The C API (msdacore/msdacore_c.h): converts the C structs to TensorViews, calls the C++
// API and turns every exception into a status code plus a thread-local message.
#include <exception>
#include <limits>
#include <new>
#include <string>

#include "msdacore/errors.hpp"
#include "msdacore/msdacore_c.h"
#include "msdacore/ops.hpp"
#include "msdacore/runtime.hpp"
#include "msdacore/tensor.hpp"

namespace {

using msdacore::DeviceType;
using msdacore::DType;
using msdacore::TensorView;

// The message of this thread's last call that returned a status.
thread_local std::string t_last_error;

msdacore_status succeed() {
  t_last_error.clear();
  return MSDACORE_OK;
}

msdacore_status fail(msdacore_status status, const char* message) {
  // Assigning may itself run out of memory: keep the status, drop the message.
  try {
    t_last_error = message;
  } catch (...) {
    t_last_error.clear();
  }
  return status;
}

// Runs `body`, mapping what it throws to a status. Most derived classes first.
template <typename Body>
msdacore_status guarded(Body&& body) noexcept {
  try {
    body();
    return succeed();
  } catch (const msdacore::ShapeError& e) {
    return fail(MSDACORE_ERROR_SHAPE, e.what());
  } catch (const msdacore::DTypeError& e) {
    return fail(MSDACORE_ERROR_DTYPE, e.what());
  } catch (const msdacore::DeviceError& e) {
    return fail(MSDACORE_ERROR_DEVICE, e.what());
  } catch (const msdacore::Error& e) {
    return fail(MSDACORE_ERROR_INVALID_ARGUMENT, e.what());
  } catch (const msdacore::RuntimeError& e) {
    return fail(MSDACORE_ERROR_RUNTIME, e.what());
  } catch (const std::bad_alloc&) {
    return fail(MSDACORE_ERROR_OTHER, "out of memory");
  } catch (const std::exception& e) {
    return fail(MSDACORE_ERROR_OTHER, e.what());
  } catch (...) {
    return fail(MSDACORE_ERROR_OTHER, "unknown error");
  }
}

// The DType of each MSDACORE_* dtype code.
struct DTypeCode {
  int32_t code;
  DType dtype;
};
constexpr DTypeCode kDTypeCodes[] = {
    {MSDACORE_FLOAT16, DType::Float16}, {MSDACORE_BFLOAT16, DType::BFloat16},
    {MSDACORE_FLOAT32, DType::Float32}, {MSDACORE_FLOAT64, DType::Float64},
    {MSDACORE_INT32, DType::Int32},     {MSDACORE_INT64, DType::Int64},
};

DType to_dtype(const char* name, int32_t code) {
  for (const DTypeCode& entry : kDTypeCodes) {
    if (entry.code == code) return entry.dtype;
  }
  throw msdacore::DTypeError(
      std::string(name) + " has an unknown dtype code " + std::to_string(code) +
      " (expected one of MSDACORE_FLOAT16 .. MSDACORE_INT64, 0..5)");
}

msdacore::Device to_device(const char* name, int32_t type, int32_t index) {
  msdacore::Device device;
  if (type == MSDACORE_DEVICE_CPU) {
    device.type = DeviceType::CPU;
  } else if (type == MSDACORE_DEVICE_CUDA) {
    device.type = DeviceType::CUDA;
  } else {
    throw msdacore::DeviceError(
        std::string(name) + " has an unknown device type " + std::to_string(type) +
        " (expected MSDACORE_DEVICE_CPU or MSDACORE_DEVICE_CUDA)");
  }
  device.index = index;
  return device;
}

TensorView to_view(const char* name, const msdacore_tensor* t) {
  if (t == nullptr) {
    throw msdacore::Error(std::string(name) + " is a NULL msdacore_tensor pointer");
  }
  if (t->ndim < 0 || t->ndim > MSDACORE_MAX_DIMS) {
    throw msdacore::ShapeError(
        std::string(name) + " has ndim = " + std::to_string(t->ndim) +
        ", but msdacore_tensor holds 0 to 8 dimensions");
  }
  return TensorView(
      t->data, t->ndim, t->shape, t->strides, to_dtype(name, t->dtype),
      to_device(name, t->device_type, t->device_index));
}

// The five inputs every op takes, as views.
struct Inputs {
  TensorView value, spatial_shapes, level_start_index, sampling_locations, attention_weights;
  // L as spatial_shapes gives it, -1 when it is not (L, 2).
  int64_t levels() const {
    return spatial_shapes.ndim == 2 && spatial_shapes.shape[1] == 2 ? spatial_shapes.shape[0] : -1;
  }
};

// to_view of the five inputs, in this order.
Inputs to_inputs(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights) {
  return Inputs{
      to_view("value", value), to_view("spatial_shapes", spatial_shapes),
      to_view("level_start_index", level_start_index),
      to_view("sampling_locations", sampling_locations),
      to_view("attention_weights", attention_weights)};
}

static_assert(
    MSDACORE_MODE_BILINEAR == static_cast<int32_t>(msdacore::SamplingMode::Bilinear) &&
        MSDACORE_MODE_DISCRETE == static_cast<int32_t>(msdacore::SamplingMode::Discrete),
    "the C API's mode codes are the values of msdacore::SamplingMode");

// The size of the first msdacore_options with struct_size (0.1): every field below it is
// read; a caller's larger struct (a later header) has fields past it that this library
// does not know and leaves alone.
constexpr int64_t kOptionsSizeV1 = static_cast<int64_t>(sizeof(msdacore_options));

// The C++ options of a call; `levels` is L as spatial_shapes gives it (-1 when it is
// malformed), so that a wrong options.num_levels is refused before its counts are read.
msdacore::Options to_options(const msdacore_options* options, int64_t levels) {
  msdacore::Options out;
  if (options != nullptr) {
    if (options->struct_size < kOptionsSizeV1) {
      throw msdacore::Error(
          "options.struct_size is " + std::to_string(options->struct_size) + ", expected " +
          std::to_string(kOptionsSizeV1) +
          " or more (sizeof(msdacore_options)): start from msdacore_options_init() or "
          "MSDACORE_OPTIONS_INIT");
    }
    out.align_corners = options->align_corners != 0;
    out.stream = options->stream;
    out.deterministic = options->deterministic != 0;
    if (options->mode != MSDACORE_MODE_BILINEAR && options->mode != MSDACORE_MODE_DISCRETE) {
      throw msdacore::Error(
          "options.mode must be MSDACORE_MODE_BILINEAR (0) or "
          "MSDACORE_MODE_DISCRETE (1), got " +
          std::to_string(options->mode));
    }
    out.mode = static_cast<msdacore::SamplingMode>(options->mode);
    if (options->num_levels < 0 ||
        (options->num_levels > 0) != (options->points_per_level != nullptr)) {
      throw msdacore::Error(
          "options.points_per_level and options.num_levels: both set (one "
          "count per level) or both zero (the uniform layout)");
    }
    if (options->num_levels > 0 && levels >= 0 && options->num_levels != levels) {
      throw msdacore::ShapeError(
          "points_per_level must have one count per level, L = " + std::to_string(levels) +
          " (from spatial_shapes), got " +
          "options.num_levels = " + std::to_string(options->num_levels));
    }
    if (options->num_levels > 0) {
      out.points_per_level.assign(
          options->points_per_level, options->points_per_level + options->num_levels);
    }
    if (options->workspace_bytes < 0 ||
        (options->workspace_bytes > 0 && options->workspace == nullptr)) {
      throw msdacore::Error(
          "options.workspace_bytes must be >= 0, and 0 when options.workspace "
          "is NULL, got " +
          std::to_string(options->workspace_bytes));
    }
    out.workspace = options->workspace;
    out.workspace_bytes = options->workspace_bytes;
  }
  return out;
}

// Copies a validated problem's sizes to *out (when not NULL).
void write_problem(const msdacore::Problem& p, msdacore_problem* out) {
  if (out == nullptr) return;
  out->N = p.N;
  out->S = p.S;
  out->M = p.M;
  out->D = p.D;
  out->Lq = p.Lq;
  out->L = p.L;
  out->P = p.P;
  out->dtype = static_cast<int32_t>(p.dtype);
  out->P_total = p.P_total;
  out->loc_dtype = static_cast<int32_t>(p.loc_dtype);
  out->attn_dtype = static_cast<int32_t>(p.attn_dtype);
}

// Writes the workspace size of a forward (backward == false) or backward call to *bytes.
msdacore_status workspace_size(
    bool backward, const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_options* options, int64_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) throw msdacore::Error("bytes is a NULL pointer");
    const Inputs in =
        to_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    const msdacore::Call call(
        in.value, in.spatial_shapes, in.level_start_index, in.sampling_locations,
        in.attention_weights, to_options(options, in.levels()));
    *bytes = backward ? call.backward_workspace_size() : call.forward_workspace_size();
  });
}

}  // namespace

extern "C" {

msdacore_status msdacore_tensor_contiguous(
    msdacore_tensor* t, void* data, int32_t ndim, const int64_t* shape, int32_t dtype) {
  return guarded([&] {
    if (t == nullptr) throw msdacore::Error("t is a NULL msdacore_tensor pointer");
    if (ndim < 0 || ndim > MSDACORE_MAX_DIMS) {
      throw msdacore::ShapeError(
          "ndim = " + std::to_string(ndim) + ", but msdacore_tensor holds 0 to 8 dimensions");
    }
    if (ndim > 0 && shape == nullptr) throw msdacore::Error("shape is a NULL pointer");
    msdacore_tensor out{};
    out.data = data;
    out.ndim = ndim;
    for (int32_t d = 0; d < ndim; ++d) out.shape[d] = shape[d];
    msdacore::row_major_strides(ndim, out.shape, out.strides);
    out.dtype = dtype;
    out.device_type = MSDACORE_DEVICE_CPU;
    out.device_index = 0;
    *t = out;
  });
}

msdacore_status msdacore_options_init(msdacore_options* options) {
  return guarded([&] {
    if (options == nullptr) throw msdacore::Error("options is a NULL msdacore_options pointer");
    *options = msdacore_options{};
    options->struct_size = static_cast<int64_t>(sizeof(msdacore_options));
  });
}

msdacore_status msdacore_mode_from_name(const char* name, int32_t* mode) {
  return guarded([&] {
    if (name == nullptr || mode == nullptr) throw msdacore::Error("name and mode must not be NULL");
    *mode = static_cast<int32_t>(msdacore::sampling_mode_from_name(name));
  });
}

msdacore_status msdacore_check_inputs(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_options* options,
    msdacore_problem* problem) {
  return guarded([&] {
    const Inputs in =
        to_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    write_problem(
        msdacore::check_inputs(
            in.value, in.spatial_shapes, in.level_start_index, in.sampling_locations,
            in.attention_weights, to_options(options, in.levels())),
        problem);
  });
}

msdacore_status msdacore_check_shapes(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_tensor* grad_output,
    const msdacore_options* options, msdacore_problem* problem) {
  return guarded([&] {
    const Inputs in =
        to_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    const TensorView g =
        grad_output != nullptr ? to_view("grad_output", grad_output) : TensorView();
    write_problem(
        msdacore::check_shapes(
            in.value, in.spatial_shapes, in.level_start_index, in.sampling_locations,
            in.attention_weights, to_options(options, in.levels()),
            grad_output != nullptr ? &g : nullptr),
        problem);
  });
}

// The two workspace queries are one function of the direction they ask for.
#define MSDACORE_DEFINE_WORKSPACE_SIZE(name, backward)                                             \
  msdacore_status name(                                                                            \
      const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,                         \
      const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,         \
      const msdacore_tensor* attention_weights, const msdacore_options* options, int64_t* bytes) { \
    return workspace_size(                                                                         \
        backward, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, \
        options, bytes);                                                                           \
  }
MSDACORE_DEFINE_WORKSPACE_SIZE(msdacore_forward_workspace_size, false)
MSDACORE_DEFINE_WORKSPACE_SIZE(msdacore_backward_workspace_size, true)
#undef MSDACORE_DEFINE_WORKSPACE_SIZE

msdacore_status msdacore_forward(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_tensor* output,
    const msdacore_options* options) {
  return guarded([&] {
    const Inputs in =
        to_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    const TensorView out = to_view("output", output);
    msdacore::ms_deform_attn_forward(
        in.value, in.spatial_shapes, in.level_start_index, in.sampling_locations,
        in.attention_weights, out, to_options(options, in.levels()));
  });
}

msdacore_status msdacore_backward(
    const msdacore_tensor* value, const msdacore_tensor* spatial_shapes,
    const msdacore_tensor* level_start_index, const msdacore_tensor* sampling_locations,
    const msdacore_tensor* attention_weights, const msdacore_tensor* grad_output,
    const msdacore_tensor* grad_value, const msdacore_tensor* grad_sampling_locations,
    const msdacore_tensor* grad_attention_weights, const msdacore_options* options) {
  return guarded([&] {
    const Inputs in =
        to_inputs(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
    const TensorView g = to_view("grad_output", grad_output);
    const TensorView gv = to_view("grad_value", grad_value);
    const TensorView gl = to_view("grad_sampling_locations", grad_sampling_locations);
    const TensorView ga = to_view("grad_attention_weights", grad_attention_weights);
    msdacore::ms_deform_attn_backward(
        in.value, in.spatial_shapes, in.level_start_index, in.sampling_locations,
        in.attention_weights, g, gv, gl, ga, to_options(options, in.levels()));
  });
}

const char* msdacore_last_error(void) { return t_last_error.c_str(); }

const char* msdacore_status_name(msdacore_status status) {
  switch (status) {
    case MSDACORE_OK: return "MSDACORE_OK";
    case MSDACORE_ERROR_SHAPE: return "MSDACORE_ERROR_SHAPE";
    case MSDACORE_ERROR_DTYPE: return "MSDACORE_ERROR_DTYPE";
    case MSDACORE_ERROR_DEVICE: return "MSDACORE_ERROR_DEVICE";
    case MSDACORE_ERROR_INVALID_ARGUMENT: return "MSDACORE_ERROR_INVALID_ARGUMENT";
    case MSDACORE_ERROR_RUNTIME: return "MSDACORE_ERROR_RUNTIME";
    case MSDACORE_ERROR_OTHER: return "MSDACORE_ERROR_OTHER";
  }
  return "MSDACORE_UNKNOWN_STATUS";
}

const char* msdacore_version(void) { return MSDACORE_VERSION_STRING; }

msdacore_status msdacore_set_num_threads(int n) {
  return guarded([&] { msdacore::set_num_threads(n); });
}

int msdacore_get_num_threads(void) {
  try {
    return msdacore::get_num_threads();
  } catch (...) {
    return 1;
  }
}

const msdacore_c_api_table* msdacore_c_api(void) {
  static const msdacore_c_api_table table = {
      static_cast<int64_t>(sizeof(msdacore_c_api_table)),
      &msdacore_version,
      &msdacore_check_inputs,
      &msdacore_forward_workspace_size,
      &msdacore_backward_workspace_size,
      &msdacore_forward,
      &msdacore_backward,
      &msdacore_last_error,
      &msdacore_status_name,
      &msdacore_check_shapes,
      &msdacore_options_init,
      &msdacore_mode_from_name,
      &msdacore_tensor_contiguous,
  };
  return &table;
}

}  // extern "C"
