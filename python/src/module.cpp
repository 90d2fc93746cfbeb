// msdacore._core: the pybind11 module. Takes DLPack capsules (the Python package turns
// NumPy arrays, torch tensors and other __dlpack__ objects into capsules), makes views,
// allocates outputs, releases the GIL around the computation, and turns the core's
// exceptions into ValueError / TypeError / RuntimeError.
//
// Outputs: NumPy arrays for CPU inputs. For CUDA inputs, the Python package passes an
// `allocate(shape)` callable returning (array, DLPack capsule of it) for frameworks it
// knows (torch, CuPy: their allocators, on their streams); without one, the module
// allocates device memory itself and returns DeviceArray objects (DLPack producers), after
// waiting for the computation so they can be consumed on any stream.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "dlpack_input.hpp"
#include "msdacore/msdacore.hpp"

#ifdef MSDACORE_WITH_CUDA
#include "backend.hpp"  // cuda/: device memory and stream helpers
#endif

namespace py = pybind11;
using msdacore::python::DLPackInput;

namespace {

// The five inputs of an op, held for the duration of one call.
struct OpInputs {
  DLPackInput value, spatial_shapes, level_start_index, sampling_locations, attention_weights;

  OpInputs(py::handle v, py::handle ss, py::handle lsi, py::handle loc, py::handle attn)
      : value(v, "value"),
        spatial_shapes(ss, "spatial_shapes"),
        level_start_index(lsi, "level_start_index"),
        sampling_locations(loc, "sampling_locations"),
        attention_weights(attn, "attention_weights") {}
};

py::dtype numpy_dtype(msdacore::DType t) {
  return t == msdacore::DType::Float64 ? py::dtype::of<double>() : py::dtype::of<float>();
}

std::vector<int64_t> contiguous_strides(const std::vector<int64_t>& shape) {
  std::vector<int64_t> strides(shape.size());
  int64_t stride = 1;
  for (size_t d = shape.size(); d-- > 0;) {
    strides[d] = stride;
    stride *= shape[d];
  }
  return strides;
}

#ifdef MSDACORE_WITH_CUDA

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

// cudaMalloc'd memory, freed (cudaFree) with the last reference: the DeviceArray and every
// DLPack capsule exported from it hold one.
struct DeviceBuffer {
  int device;
  void* ptr;
  DeviceBuffer(int d, size_t bytes)
      : device(d), ptr(msdacore::cuda::device_alloc(d, bytes, "allocating an output")) {}
  ~DeviceBuffer() { msdacore::cuda::device_free(device, ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
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

// A C-contiguous array in device memory the module allocated: a DLPack producer
// (__dlpack__, __dlpack_device__), returned for CUDA inputs of frameworks without an
// allocator in the Python package. Its data is ready when it is returned.
class DeviceArray {
 public:
  DeviceArray(int device, std::vector<int64_t> shape, msdacore::DType dtype)
      : device_(device), shape_(std::move(shape)), dtype_(dtype) {
    strides_ = contiguous_strides(shape_);
    int64_t count = 1;
    for (int64_t d : shape_) count *= d;
    buffer_ = std::make_shared<DeviceBuffer>(
        device, static_cast<size_t>(count * msdacore::dtype_size(dtype)));
  }

  msdacore::TensorView view() const {
    return msdacore::TensorView(buffer_->ptr, static_cast<int32_t>(shape_.size()), shape_.data(),
                                strides_.data(), dtype_,
                                msdacore::Device{msdacore::DeviceType::CUDA, device_});
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
    t.data = buffer_->ptr;
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

#endif  // MSDACORE_WITH_CUDA

// One output of an op: a NumPy array (CPU), an array from the caller's `allocate` (CUDA,
// through its DLPack capsule), or a DeviceArray (CUDA, no allocator).
struct OpOutput {
  py::object array;
  std::unique_ptr<DLPackInput> capsule_input;  // for `allocate` arrays
  msdacore::TensorView view;

  OpOutput(const msdacore::Problem& p, std::vector<int64_t> shape, py::handle allocate,
           const char* name) {
    if (p.device.type == msdacore::DeviceType::CPU) {
      std::vector<py::ssize_t> dims(shape.begin(), shape.end());
      py::array a(numpy_dtype(p.dtype), dims);
      const std::vector<int64_t> strides = contiguous_strides(shape);
      view = msdacore::TensorView(a.mutable_data(), static_cast<int32_t>(shape.size()),
                                  shape.data(), strides.data(), p.dtype, p.device);
      array = std::move(a);
      return;
    }
    if (!allocate.is_none()) {
      py::tuple dims(shape.size());
      for (size_t i = 0; i < shape.size(); ++i) dims[i] = shape[i];
      const py::tuple made = allocate(dims).cast<py::tuple>();
      if (made.size() != 2) throw py::type_error("allocate must return (array, capsule)");
      array = made[0];
      capsule_input = std::make_unique<DLPackInput>(made[1], name);
      view = capsule_input->view();
      return;
    }
#ifdef MSDACORE_WITH_CUDA
    auto device_array = std::make_unique<DeviceArray>(p.device.index, shape, p.dtype);
    view = device_array->view();
    array = py::cast(std::move(device_array));
#else
    throw msdacore::DeviceError(std::string(name) + ": this build of msdacore has no CUDA support");
#endif
  }
};

msdacore::Options make_options(bool align_corners, std::uintptr_t stream, bool deterministic) {
  msdacore::Options options;
  options.align_corners = align_corners;
  options.stream = reinterpret_cast<void*>(stream);
  options.deterministic = deterministic;
  return options;
}

// For outputs the module allocated itself: wait for the computation (see DeviceArray).
void finish(const msdacore::Problem& p, py::handle allocate, const msdacore::Options& options,
            const char* op) {
#ifdef MSDACORE_WITH_CUDA
  if (p.device.type == msdacore::DeviceType::CUDA && allocate.is_none()) {
    msdacore::cuda::synchronize(p.device.index, options.stream, op);
  }
#else
  (void)p;
  (void)allocate;
  (void)options;
  (void)op;
#endif
}

py::object forward(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
                   py::handle sampling_locations, py::handle attention_weights,
                   bool align_corners, std::uintptr_t stream, py::handle allocate) {
  OpInputs in(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const msdacore::TensorView v = in.value.view(), ss = in.spatial_shapes.view(),
                             lsi = in.level_start_index.view(),
                             loc = in.sampling_locations.view(),
                             attn = in.attention_weights.view();
  const msdacore::Problem p = msdacore::check_inputs(v, ss, lsi, loc, attn);
  OpOutput out(p, {p.N, p.Lq, p.M * p.D}, allocate, "output");
  const msdacore::Options options = make_options(align_corners, stream, false);
  {
    py::gil_scoped_release release;
    msdacore::ms_deform_attn_forward(v, ss, lsi, loc, attn, out.view, options);
    finish(p, allocate, options, "ms_deform_attn_forward");
  }
  return out.array;
}

py::tuple backward(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
                   py::handle sampling_locations, py::handle attention_weights,
                   py::handle grad_output, bool align_corners, bool deterministic,
                   std::uintptr_t stream, py::handle allocate) {
  OpInputs in(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  DLPackInput grad_in(grad_output, "grad_output");
  const msdacore::TensorView v = in.value.view(), ss = in.spatial_shapes.view(),
                             lsi = in.level_start_index.view(),
                             loc = in.sampling_locations.view(),
                             attn = in.attention_weights.view(), g = grad_in.view();
  const msdacore::Problem p = msdacore::check_inputs(v, ss, lsi, loc, attn);
  OpOutput grad_value(p, {p.N, p.S, p.M, p.D}, allocate, "grad_value");
  OpOutput grad_loc(p, {p.N, p.Lq, p.M, p.L, p.P, 2}, allocate, "grad_sampling_locations");
  OpOutput grad_attn(p, {p.N, p.Lq, p.M, p.L, p.P}, allocate, "grad_attention_weights");
  const msdacore::Options options = make_options(align_corners, stream, deterministic);
  {
    py::gil_scoped_release release;
    msdacore::ms_deform_attn_backward(v, ss, lsi, loc, attn, g, grad_value.view, grad_loc.view,
                                      grad_attn.view, options);
    finish(p, allocate, options, "ms_deform_attn_backward");
  }
  return py::make_tuple(grad_value.array, grad_loc.array, grad_attn.array);
}

// Makes stream `waiting` of `device` wait for the work enqueued so far on `producer`.
void stream_wait(int device, std::uintptr_t waiting, std::uintptr_t producer) {
#ifdef MSDACORE_WITH_CUDA
  py::gil_scoped_release release;
  msdacore::cuda::stream_wait(device, reinterpret_cast<void*>(waiting),
                              reinterpret_cast<void*>(producer), "stream_wait");
#else
  (void)device;
  (void)waiting;
  (void)producer;
  throw msdacore::DeviceError("stream_wait: this build of msdacore was compiled without CUDA");
#endif
}

py::dict build_info() {
  const msdacore::BuildInfo info = msdacore::build_info();
  py::dict d;
  d["version"] = info.version;
  d["openmp"] = info.openmp;
  d["openmp_version"] = info.openmp_version;
  d["num_threads"] = info.num_threads;
  d["max_threads"] = info.max_threads;
  d["cuda_compiled"] = info.cuda_compiled;
  d["cuda_kernels"] = info.cuda_kernels;
  d["cuda_runtime_version"] = info.cuda_runtime_version;
  d["cuda_devices"] = info.cuda_devices;
  d["cpu_isa"] = info.cpu_isa;
  d["cpu_isas"] = info.cpu_isas;
  d["compiler"] = info.compiler;
  return d;
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
        py::arg("attention_weights"), py::arg("align_corners"), py::arg("stream") = 0,
        py::arg("allocate") = py::none(),
        "Forward on DLPack capsules; returns the output (N, Lq, M*D): NumPy for CPU inputs; "
        "for CUDA inputs what allocate(shape) -> (array, capsule) made, else a DeviceArray. "
        "stream: the cudaStream_t to run on (0: the default stream).");
  m.def("backward", &backward, py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"), py::arg("align_corners"),
        py::arg("deterministic") = false, py::arg("stream") = 0,
        py::arg("allocate") = py::none(),
        "Backward on DLPack capsules; returns (grad_value, grad_sampling_locations, "
        "grad_attention_weights), allocated as in forward.");
  m.def("stream_wait", &stream_wait, py::arg("device"), py::arg("waiting"), py::arg("producer"),
        "Makes CUDA stream `waiting` wait for the work enqueued so far on `producer`.");
#ifdef MSDACORE_WITH_CUDA
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
#endif
  m.def("build_info", &build_info, "What this build can do (dict).");
  m.def("set_num_threads", &msdacore::set_num_threads, py::arg("n"),
        "Threads used by the CPU kernels (n >= 1).");
  m.def("get_num_threads", &msdacore::get_num_threads, "Threads used by the CPU kernels.");
}
