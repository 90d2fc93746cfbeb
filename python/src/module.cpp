// msdacore._core: the pybind11 module, a thin front end over the C++ API. Every array
// (inputs and outputs) arrives as a DLPack capsule; the Python package allocates the
// outputs (and CUDA scratch) with the caller's own framework on its current stream, so the
// module only turns capsules into views, releases the GIL and calls the core, which
// validates everything once. It never calls back into Python. The core's exceptions become
// ValueError / TypeError / RuntimeError.
//
// For CUDA arrays of frameworks the Python package has no allocator for, `cuda_empty`
// makes DeviceArray outputs from msdacore's default allocator (memory.hpp).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "dlpack_input.hpp"
#include "msdacore/msdacore.hpp"
#include "msdacore/msdacore_c.h"

namespace py = pybind11;
using msdacore::python::DLPackInput;

namespace {

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

DLDataType dl_dtype(msdacore::DType t) {
  switch (t) {
    case msdacore::DType::Float16: return DLDataType{kDLFloat, 16, 1};
    case msdacore::DType::BFloat16: return DLDataType{kDLBfloat, 16, 1};
    case msdacore::DType::Float32: return DLDataType{kDLFloat, 32, 1};
    case msdacore::DType::Float64: return DLDataType{kDLFloat, 64, 1};
    case msdacore::DType::Int32: return DLDataType{kDLInt, 32, 1};
    case msdacore::DType::Int64: return DLDataType{kDLInt, 64, 1};
  }
  return DLDataType{kDLFloat, 32, 1};
}

// Memory of msdacore's default allocator, released with the last reference: the
// DeviceArray and every DLPack capsule exported from it hold one.
struct DeviceBuffer {
  msdacore::Buffer buffer;
  DeviceBuffer(int device, int64_t bytes, void* stream)
      : buffer(msdacore::Device{msdacore::DeviceType::CUDA, device}, bytes, stream) {}
};

// What a DLPack capsule of a DeviceArray points to (the deleter frees it; no Python calls).
template <typename Managed>
struct Export {
  Managed managed{};
  std::shared_ptr<DeviceBuffer> owner;
  std::vector<int64_t> shape, strides;
  static void deleter(Managed* self) { delete static_cast<Export*>(self->manager_ctx); }
};

template <typename Managed>
void capsule_destructor(PyObject* capsule, const char* name) {
  // A capsule never consumed still owns its tensor.
  if (PyCapsule_IsValid(capsule, name)) {
    auto* managed = static_cast<Managed*>(PyCapsule_GetPointer(capsule, name));
    if (managed != nullptr && managed->deleter != nullptr) managed->deleter(managed);
  } else {
    PyErr_Clear();
  }
}

void versioned_capsule_destructor(PyObject* capsule) {
  capsule_destructor<DLManagedTensorVersioned>(capsule, "dltensor_versioned");
}
void legacy_capsule_destructor(PyObject* capsule) {
  capsule_destructor<DLManagedTensor>(capsule, "dltensor");
}

// A C-contiguous CUDA array from msdacore's default allocator (allocated on a stream and
// released on it): a DLPack producer (__dlpack__, __dlpack_device__), the output kind for
// CUDA inputs of frameworks without an allocator in the Python package, which waits for
// the computation before handing it out.
class DeviceArray {
 public:
  DeviceArray(int device, std::vector<int64_t> shape, msdacore::DType dtype, void* stream)
      : device_(device), shape_(std::move(shape)), dtype_(dtype) {
    strides_ = contiguous_strides(shape_);
    // Bytes, checked: a wrapped product would allocate too little for the kernels' writes.
    const int64_t big = std::numeric_limits<int64_t>::max();
    int64_t bytes = msdacore::dtype_size(dtype);
    for (int64_t d : shape_) {
      if (d < 0) throw msdacore::ShapeError("cuda_empty: sizes must be >= 0");
      if (d > 0 && bytes > big / d) {
        throw msdacore::ShapeError("cuda_empty: an output of shape " +
                                   py::str(py::cast(shape_)).cast<std::string>() +
                                   " would have more than 2^63 - 1 bytes");
      }
      bytes *= d;
    }
    buffer_ = std::make_shared<DeviceBuffer>(device, bytes, stream);
  }

  py::object dlpack(py::object stream, py::object max_version, py::object dl_device,
                    py::object copy) const {
    (void)stream;  // the data is ready (see the class comment): nothing to order
    if (!dl_device.is_none()) {
      const py::tuple dev = dl_device.cast<py::tuple>();
      if (dev.size() != 2 || dev[0].cast<int>() != kDLCUDA || dev[1].cast<int>() != device_) {
        PyErr_SetString(PyExc_BufferError,
                        "msdacore DeviceArray: export to another device is not supported");
        throw py::error_already_set();
      }
    }
    if (!copy.is_none() && copy.cast<bool>()) {
      PyErr_SetString(PyExc_BufferError, "msdacore DeviceArray: copy=True is not supported");
      throw py::error_already_set();
    }
    bool versioned = false;
    if (!max_version.is_none()) {
      const py::tuple mv = max_version.cast<py::tuple>();
      versioned = mv.size() >= 1 && mv[0].cast<int>() >= 1;
    }
    if (versioned) return make_capsule<DLManagedTensorVersioned>(
        "dltensor_versioned", versioned_capsule_destructor);
    return make_capsule<DLManagedTensor>("dltensor", legacy_capsule_destructor);
  }

  py::tuple dlpack_device() const { return py::make_tuple(static_cast<int>(kDLCUDA), device_); }
  py::tuple shape() const {
    py::tuple t(shape_.size());
    for (size_t i = 0; i < shape_.size(); ++i) t[i] = shape_[i];
    return t;
  }
  std::string dtype() const { return msdacore::dtype_name(dtype_); }
  std::string device() const { return "cuda:" + std::to_string(device_); }

 private:
  template <typename Managed>
  py::object make_capsule(const char* name, PyCapsule_Destructor destructor) const {
    auto* e = new Export<Managed>();
    e->owner = buffer_;
    e->shape = shape_;
    e->strides = strides_;
    DLTensor& t = tensor_of(e->managed);
    t.data = buffer_->buffer.data();
    t.device = DLDevice{kDLCUDA, device_};
    t.ndim = static_cast<int32_t>(shape_.size());
    t.dtype = dl_dtype(dtype_);
    t.shape = e->shape.data();
    t.strides = e->strides.data();
    t.byte_offset = 0;
    set_version(e->managed);
    e->managed.manager_ctx = e;
    e->managed.deleter = &Export<Managed>::deleter;
    PyObject* capsule = PyCapsule_New(&e->managed, name, destructor);
    if (capsule == nullptr) {
      delete e;
      throw py::error_already_set();
    }
    return py::reinterpret_steal<py::object>(capsule);
  }
  static DLTensor& tensor_of(DLManagedTensorVersioned& m) { return m.dl_tensor; }
  static DLTensor& tensor_of(DLManagedTensor& m) { return m.dl_tensor; }
  static void set_version(DLManagedTensorVersioned& m) {
    m.version = DLPackVersion{1, 0};
    m.flags = 0;
  }
  static void set_version(DLManagedTensor&) {}

  int device_;
  std::vector<int64_t> shape_, strides_;
  msdacore::DType dtype_;
  std::shared_ptr<DeviceBuffer> buffer_;
};

// The arguments of one op call: each capsule consumed into a view, held for the call
// (in place: no allocation per argument).
class Views {
 public:
  static constexpr size_t kMax = 9;
  using Arg = std::pair<py::handle, const char*>;  // a capsule and its argument name

  // The five inputs every op takes, then `more` (outputs, grad_output), in this order.
  Views(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
        py::handle sampling_locations, py::handle attention_weights,
        std::initializer_list<Arg> more = {}) {
    if (5 + more.size() > kMax) throw std::logic_error("Views: too many arguments");
    add(value, "value");
    add(spatial_shapes, "spatial_shapes");
    add(level_start_index, "level_start_index");
    add(sampling_locations, "sampling_locations");
    add(attention_weights, "attention_weights");
    for (const auto& [capsule, name] : more) add(capsule, name);
  }
  const msdacore::TensorView& operator[](size_t i) const { return views_[i]; }

 private:
  void add(py::handle capsule, const char* name) {
    inputs_[count_].emplace(capsule, name);
    views_[count_] = inputs_[count_]->view();
    ++count_;
  }

  std::array<std::optional<DLPackInput>, kMax> inputs_;
  std::array<msdacore::TensorView, kMax> views_;
  size_t count_ = 0;
};

// The operator's options as the Python package passes them: (align_corners,
// deterministic, mode ("bilinear" | "discrete"), points_per_level (a list, or None for the
// uniform layout)).
using OpOptions = std::tuple<bool, bool, std::string, std::optional<std::vector<int64_t>>>;

msdacore::Options make_options(const OpOptions& op, std::uintptr_t stream = 0,
                               std::uintptr_t workspace = 0, int64_t workspace_bytes = 0) {
  msdacore::Options options;
  options.align_corners = std::get<0>(op);
  options.deterministic = std::get<1>(op);
  const std::string& mode = std::get<2>(op);
  if (mode == "bilinear") {
    options.mode = msdacore::SamplingMode::Bilinear;
  } else if (mode == "discrete") {
    options.mode = msdacore::SamplingMode::Discrete;
  } else {
    throw msdacore::Error("mode must be \"bilinear\" or \"discrete\", got \"" + mode + "\"");
  }
  if (std::get<3>(op)) options.points_per_level = *std::get<3>(op);
  options.stream = reinterpret_cast<void*>(stream);
  options.workspace = reinterpret_cast<void*>(workspace);
  options.workspace_bytes = workspace_bytes;
  return options;
}

void forward(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
             py::handle sampling_locations, py::handle attention_weights, py::handle output,
             const OpOptions& op, std::uintptr_t stream, std::uintptr_t workspace,
             int64_t workspace_bytes) {
  const msdacore::Options options = make_options(op, stream, workspace, workspace_bytes);
  const Views v(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                {{output, "output"}});
  py::gil_scoped_release release;
  msdacore::ms_deform_attn_forward(v[0], v[1], v[2], v[3], v[4], v[5], options);
}

void backward(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
              py::handle sampling_locations, py::handle attention_weights,
              py::handle grad_output, py::handle grad_value, py::handle grad_sampling_locations,
              py::handle grad_attention_weights, const OpOptions& op, std::uintptr_t stream,
              std::uintptr_t workspace, int64_t workspace_bytes) {
  const msdacore::Options options = make_options(op, stream, workspace, workspace_bytes);
  const Views v(value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
                {{grad_output, "grad_output"},
                 {grad_value, "grad_value"},
                 {grad_sampling_locations, "grad_sampling_locations"},
                 {grad_attention_weights, "grad_attention_weights"}});
  py::gil_scoped_release release;
  msdacore::ms_deform_attn_backward(v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8],
                                    options);
}

int64_t workspace_size(bool backward, py::handle value, py::handle spatial_shapes,
                       py::handle level_start_index, py::handle sampling_locations,
                       py::handle attention_weights, const OpOptions& op) {
  const msdacore::Options options = make_options(op);
  const Views v(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  return backward ? msdacore::ms_deform_attn_backward_workspace_size(v[0], v[1], v[2], v[3],
                                                                     v[4], options)
                  : msdacore::ms_deform_attn_forward_workspace_size(v[0], v[1], v[2], v[3],
                                                                    v[4], options);
}

msdacore::DType dtype_from_name(const std::string& name) {
  for (msdacore::DType t : {msdacore::DType::Float16, msdacore::DType::BFloat16,
                            msdacore::DType::Float32, msdacore::DType::Float64,
                            msdacore::DType::Int32, msdacore::DType::Int64}) {
    if (name == msdacore::dtype_name(t)) return t;
  }
  throw msdacore::DTypeError("cuda_empty: unsupported dtype " + name);
}

py::dict build_info() {
  using namespace py::literals;
  const msdacore::BuildInfo info = msdacore::build_info();
  return py::dict("version"_a = info.version, "openmp"_a = info.openmp,
                  "openmp_version"_a = info.openmp_version, "num_threads"_a = info.num_threads,
                  "max_threads"_a = info.max_threads, "cuda_compiled"_a = info.cuda_compiled,
                  "cuda_kernels"_a = info.cuda_kernels,
                  "cuda_runtime_version"_a = info.cuda_runtime_version,
                  "cuda_fallback"_a = info.cuda_fallback, "cpu_isa"_a = info.cpu_isa,
                  "cpu_isas"_a = info.cpu_isas, "compiler"_a = info.compiler);
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "msdacore C++ core: multi-scale deformable attention kernels";

  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const msdacore::DTypeError& e) {
      PyErr_SetString(PyExc_TypeError, e.what());
    } catch (const msdacore::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    } catch (const msdacore::RuntimeError& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  m.def("forward", &forward, py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("output"), py::arg("options"),
        py::arg("stream") = 0, py::arg("workspace") = 0, py::arg("workspace_bytes") = 0,
        "Forward on DLPack capsules, into `output`. options: (align_corners, deterministic, "
        "mode, points_per_level or None); stream: the cudaStream_t to run on; workspace: "
        "address and size of caller-owned device scratch (0: the default allocator).");
  m.def("backward", &backward, py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"), py::arg("grad_value"),
        py::arg("grad_sampling_locations"), py::arg("grad_attention_weights"),
        py::arg("options"), py::arg("stream") = 0, py::arg("workspace") = 0,
        py::arg("workspace_bytes") = 0,
        "Backward on DLPack capsules, into the three gradient capsules.");
  for (const bool backward : {false, true}) {
    m.def(
        backward ? "backward_workspace_size" : "forward_workspace_size",
        [backward](py::handle v, py::handle ss, py::handle lsi, py::handle loc, py::handle attn,
                   const OpOptions& op) {
          return workspace_size(backward, v, ss, lsi, loc, attn, op);
        },
        py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"),
        py::arg("sampling_locations"), py::arg("attention_weights"), py::arg("options"),
        "Bytes of device scratch a call with these inputs and options needs.");
  }
  m.def(
      "describe",
      [](py::handle capsule, const char* name) {
        const DLPackInput input(capsule, name);
        const msdacore::TensorView v = input.view();
        py::tuple shape(v.ndim);
        for (int32_t d = 0; d < v.ndim; ++d) shape[d] = v.shape[d];
        return py::make_tuple(shape, msdacore::dtype_name(v.dtype));
      },
      py::arg("capsule"), py::arg("name"),
      "(shape, dtype name) of a DLPack capsule (consumed), read as the ops read it.");
  m.def(
      "cuda_empty",
      [](std::vector<int64_t> shape, const std::string& dtype, int device, std::uintptr_t stream) {
        return DeviceArray(device, std::move(shape), dtype_from_name(dtype),
                           reinterpret_cast<void*>(stream));
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device"), py::arg("stream") = 0,
      "A DeviceArray of msdacore's default allocator on cuda:`device`, ordered on `stream`.");
  m.def(
      "cuda_stream_wait",
      [](int device, std::uintptr_t waiting, std::uintptr_t producer) {
        py::gil_scoped_release release;
        msdacore::cuda_stream_wait(device, reinterpret_cast<void*>(waiting),
                                   reinterpret_cast<void*>(producer));
      },
      py::arg("device"), py::arg("waiting"), py::arg("producer"),
      "Makes CUDA stream `waiting` wait for the work enqueued so far on `producer`.");
  m.def(
      "cuda_synchronize",
      [](int device, std::uintptr_t stream) {
        py::gil_scoped_release release;
        msdacore::cuda_synchronize(device, reinterpret_cast<void*>(stream));
      },
      py::arg("device"), py::arg("stream"), "Waits for the work enqueued on a CUDA stream.");
  m.def("cuda_device_count", &msdacore::cuda_device_count,
        "CUDA devices visible (starts the CUDA driver; RuntimeError for a driver too old).");
  py::class_<DeviceArray>(m, "DeviceArray",
                          "A CUDA array msdacore allocated: a DLPack producer "
                          "(torch.from_dlpack, cupy.from_dlpack, ...).")
      .def("__dlpack__", &DeviceArray::dlpack, py::kw_only(), py::arg("stream") = py::none(),
           py::arg("max_version") = py::none(), py::arg("dl_device") = py::none(),
           py::arg("copy") = py::none())
      .def("__dlpack_device__", &DeviceArray::dlpack_device)
      .def_property_readonly("shape", &DeviceArray::shape)
      .def_property_readonly("dtype", &DeviceArray::dtype)
      .def_property_readonly("device", &DeviceArray::device)
      .def("__repr__", [](const DeviceArray& a) {
        return "msdacore.DeviceArray(shape=" + py::str(a.shape()).cast<std::string>() +
               ", dtype=" + a.dtype() + ", device=" + a.device() + ")";
      });
  m.def("build_info", &build_info, "What this build can do (dict).");
  m.def("set_num_threads", &msdacore::set_num_threads, py::arg("n"),
        "Threads used by the CPU kernels (n >= 1).");
  m.attr("MAX_NUM_THREADS") = msdacore::kMaxNumThreads;
  m.def("get_num_threads", &msdacore::get_num_threads, "Threads used by the CPU kernels.");
  // The C API as a table of function pointers (msdacore_c.h), for native plugins that run
  // this module's kernels without linking it (the XLA FFI handlers of msdacore.jax).
  m.attr("c_api") = py::capsule(const_cast<msdacore_c_api_table*>(msdacore_c_api()),
                                "msdacore.c_api");
}
