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
  msdacore::row_major_strides(static_cast<int32_t>(shape.size()), shape.data(), strides.data());
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
        throw msdacore::ShapeError(
            "cuda_empty: an output of shape " + py::str(py::cast(shape_)).cast<std::string>() +
            " would have more than 2^63 - 1 bytes");
      }
      bytes *= d;
    }
    buffer_ = std::make_shared<DeviceBuffer>(device, bytes, stream);
  }

  py::object dlpack(
      py::object stream, py::object max_version, py::object dl_device, py::object copy) const {
    (void)stream;  // the data is ready (see the class comment): nothing to order
    if (!dl_device.is_none()) {
      const py::tuple dev = dl_device.cast<py::tuple>();
      if (dev.size() != 2 || dev[0].cast<int>() != kDLCUDA || dev[1].cast<int>() != device_) {
        PyErr_SetString(
            PyExc_BufferError, "msdacore DeviceArray: export to another device is not supported");
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
    if (versioned)
      return make_capsule<DLManagedTensorVersioned>(
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
  Views(
      py::handle value, py::handle spatial_shapes, py::handle level_start_index,
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

// ---- Options: the operator's options as one Python type (msdacore.Options) ----------

std::string type_and_repr(py::handle v) {
  std::string repr = py::repr(v).cast<std::string>();
  if (repr.size() > 40) repr.resize(40);
  return std::string(Py_TYPE(v.ptr())->tp_name) + " " + repr;
}

// A boolean option: a Python or NumPy bool, else TypeError (a string such as "False" must
// not read as True).
bool as_flag(py::handle v, const char* name) {
  if (PyBool_Check(v.ptr())) return v.ptr() == Py_True;
  const py::handle type = reinterpret_cast<PyObject*>(Py_TYPE(v.ptr()));
  if (py::hasattr(type, "__module__") && type.attr("__module__").cast<std::string>() == "numpy" &&
      (std::string(Py_TYPE(v.ptr())->tp_name) == "numpy.bool_" ||
       std::string(Py_TYPE(v.ptr())->tp_name) == "numpy.bool")) {
    return PyObject_IsTrue(v.ptr()) == 1;
  }
  throw msdacore::DTypeError(std::string(name) + " must be a bool, got " + type_and_repr(v));
}

// Points per level: None (the uniform layout) or a sequence of ints (list, tuple, NumPy
// array, tensor); the core checks the values.
std::vector<int64_t> as_counts(py::handle v) {
  if (v.is_none()) return {};
  if (PyUnicode_Check(v.ptr()) || PyBytes_Check(v.ptr()) || !py::hasattr(v, "__len__")) {
    throw msdacore::DTypeError(
        "points_per_level must be a sequence of ints (one per level), got " +
        std::string(Py_TYPE(v.ptr())->tp_name));
  }
  const py::object items =
      py::hasattr(v, "tolist") ? v.attr("tolist")() : py::reinterpret_borrow<py::object>(v);
  std::vector<int64_t> counts;
  for (py::handle c : items) {
    if (PyBool_Check(c.ptr()) || PyFloat_Check(c.ptr()) || !PyIndex_Check(c.ptr())) {
      throw msdacore::DTypeError(
          "points_per_level must hold ints, got " + py::repr(c).cast<std::string>().substr(0, 40));
    }
    const py::int_ value = py::reinterpret_steal<py::int_>(PyNumber_Index(c.ptr()));
    int overflow = 0;
    const long long n = PyLong_AsLongLongAndOverflow(value.ptr(), &overflow);
    if (overflow != 0) {
      throw msdacore::Error(
          "points_per_level holds " + py::str(value).cast<std::string>() + ", past int64");
    }
    counts.push_back(static_cast<int64_t>(n));
  }
  if (counts.empty()) {
    throw msdacore::Error(
        "points_per_level must have one count per level, got an empty "
        "sequence (pass None for the uniform layout)");
  }
  return counts;
}

msdacore::SamplingMode as_mode(py::handle v) {
  if (!PyUnicode_Check(v.ptr())) {
    throw msdacore::DTypeError(
        "mode must be a str, \"bilinear\" or \"discrete\", got " +
        std::string(Py_TYPE(v.ptr())->tp_name));
  }
  return msdacore::sampling_mode_from_name(v.cast<std::string>());
}

msdacore::Options make_options(
    py::handle align_corners, py::handle mode, py::handle points_per_level,
    py::handle deterministic) {
  msdacore::Options o;
  o.align_corners = as_flag(align_corners, "align_corners");
  o.mode = as_mode(mode);
  o.points_per_level = as_counts(points_per_level);
  o.deterministic = as_flag(deterministic, "deterministic");
  msdacore::check_options(o);
  return o;
}

py::object counts_or_none(const msdacore::Options& o) {
  if (o.points_per_level.empty()) return py::none();
  return py::tuple(py::cast(o.points_per_level));
}

std::string options_repr(const msdacore::Options& o) {
  std::string s = std::string("msdacore.Options(align_corners=") +
                  (o.align_corners ? "True" : "False") + ", mode='" +
                  msdacore::sampling_mode_name(o.mode) + "', points_per_level=";
  s += py::repr(counts_or_none(o)).cast<std::string>();
  s += std::string(", deterministic=") + (o.deterministic ? "True" : "False") + ")";
  return s;
}

bool same_options(const msdacore::Options& a, const msdacore::Options& b) {
  return a.align_corners == b.align_corners && a.mode == b.mode &&
         a.points_per_level == b.points_per_level && a.deterministic == b.deterministic;
}

// A shape as a Python tuple of ints.
py::tuple tuple_of(const msdacore::Shape& shape) {
  py::tuple t(shape.ndim);
  for (int32_t d = 0; d < shape.ndim; ++d) t[d] = shape.dims[d];
  return t;
}

// ---- Calls ---------------------------------------------------------------------------

// One call validated once (msdacore::Call over the five consumed input capsules): the
// Python package asks it for the output shapes and, on CUDA, the workspace size, allocates
// with its framework, then runs it.
class PreparedCall {
 public:
  PreparedCall(
      py::handle value, py::handle spatial_shapes, py::handle level_start_index,
      py::handle sampling_locations, py::handle attention_weights, const msdacore::Options& options,
      std::uintptr_t stream)
      : views_(value, spatial_shapes, level_start_index, sampling_locations, attention_weights),
        call_(views_[0], views_[1], views_[2], views_[3], views_[4], options) {
    call_.options().stream = reinterpret_cast<void*>(stream);
  }

  // [output shape] (forward) or the three gradients' shapes (backward).
  py::list shapes(bool backward) const {
    const msdacore::CallShapes s = msdacore::call_shapes(call_.problem());
    py::list out;
    if (!backward) {
      out.append(tuple_of(s.output));
    } else {
      out.append(tuple_of(s.grad_value));
      out.append(tuple_of(s.grad_sampling_locations));
      out.append(tuple_of(s.grad_attention_weights));
    }
    return out;
  }

  int64_t workspace_size(bool backward) const {
    return backward ? call_.backward_workspace_size() : call_.forward_workspace_size();
  }

  void forward(py::handle output, std::uintptr_t workspace, int64_t workspace_bytes) {
    set_workspace(workspace, workspace_bytes);
    const msdacore::python::DLPackInput out(output, "output");
    const msdacore::TensorView view = out.view();
    py::gil_scoped_release release;
    call_.forward(view);
  }

  void backward(
      py::handle grad_output, py::handle grad_value, py::handle grad_sampling_locations,
      py::handle grad_attention_weights, std::uintptr_t workspace, int64_t workspace_bytes) {
    set_workspace(workspace, workspace_bytes);
    const DLPackInput g(grad_output, "grad_output"), gv(grad_value, "grad_value"),
        gl(grad_sampling_locations, "grad_sampling_locations"),
        ga(grad_attention_weights, "grad_attention_weights");
    const msdacore::TensorView vg = g.view(), vgv = gv.view(), vgl = gl.view(), vga = ga.view();
    py::gil_scoped_release release;
    call_.backward(vg, vgv, vgl, vga);
  }

 private:
  void set_workspace(std::uintptr_t workspace, int64_t workspace_bytes) {
    call_.options().workspace = reinterpret_cast<void*>(workspace);
    call_.options().workspace_bytes = workspace_bytes;
  }

  Views views_;
  msdacore::Call call_;
};

// A view with a shape, dtype and device but no data, from (shape, dtype name, device
// type ("cpu", "cuda", or another framework's device name), device index); `values`
// (int64, row-major), when given, are its data (index arrays), stored in `storage` in the
// view's dtype.
msdacore::TensorView spec_view(
    const char* name, const py::tuple& spec, py::handle values, std::vector<int64_t>* storage64,
    std::vector<int32_t>* storage32) {
  if (spec.size() != 4) throw std::logic_error("spec_view: (shape, dtype, device, index)");
  const auto shape = spec[0].cast<std::vector<int64_t>>();
  if (shape.size() > static_cast<size_t>(msdacore::TensorView::kMaxDims)) {
    throw msdacore::ShapeError(
        std::string(name) + " has " + std::to_string(shape.size()) +
        " dimensions; msdacore inputs have at most " +
        std::to_string(msdacore::TensorView::kMaxDims));
  }
  const msdacore::DType dtype = msdacore::dtype_from_name(name, spec[1].cast<std::string>());
  const std::string device = spec[2].cast<std::string>();
  msdacore::Device d;
  if (device == "cuda") {
    d = msdacore::Device{msdacore::DeviceType::CUDA, spec[3].cast<int32_t>()};
  } else if (device != "cpu") {
    throw msdacore::DeviceError(
        std::string(name) + " is on " + device +
        ", which msdacore does not support: pass CPU arrays");
  }
  std::vector<int64_t> strides(shape.size());
  msdacore::row_major_strides(static_cast<int32_t>(shape.size()), shape.data(), strides.data());
  void* data = nullptr;
  if (!values.is_none()) {
    *storage64 = values.cast<std::vector<int64_t>>();
    int64_t count = 1;
    for (int64_t s : shape) count *= s > 0 ? s : 0;
    if (static_cast<int64_t>(storage64->size()) != count) {
      throw std::logic_error("spec_view: values do not match the shape");
    }
    if (dtype == msdacore::DType::Int32) {
      storage32->assign(storage64->begin(), storage64->end());
      data = storage32->data();
    } else if (dtype == msdacore::DType::Int64) {
      data = storage64->data();
    }  // other dtypes: the core refuses the dtype before reading any value
  }
  return msdacore::TensorView(
      data, static_cast<int32_t>(shape.size()), shape.data(), strides.data(), dtype, d);
}

// check_shapes from specs: the output and gradient shapes, or the core's error.
py::dict check_shapes(
    const py::tuple& specs, const msdacore::Options& options, py::handle spatial_shapes_values,
    py::handle level_start_index_values, py::handle grad_output) {
  static const char* const names[5] = {
      "value", "spatial_shapes", "level_start_index", "sampling_locations", "attention_weights"};
  if (specs.size() != 5) throw std::logic_error("check_shapes: five specs");
  std::vector<int64_t> s64[6];
  std::vector<int32_t> s32[6];
  msdacore::TensorView v[6];
  for (size_t i = 0; i < 5; ++i) {
    const py::handle values =
        i == 1 ? spatial_shapes_values : (i == 2 ? level_start_index_values : py::none());
    v[i] = spec_view(names[i], specs[i].cast<py::tuple>(), values, &s64[i], &s32[i]);
  }
  if (!grad_output.is_none()) {
    v[5] = spec_view("grad_output", grad_output.cast<py::tuple>(), py::none(), &s64[5], &s32[5]);
  }
  const msdacore::Problem p = msdacore::check_shapes(
      v[0], v[1], v[2], v[3], v[4], options, grad_output.is_none() ? nullptr : &v[5]);
  const msdacore::CallShapes s = msdacore::call_shapes(p);
  using namespace py::literals;
  return py::dict(
      "output"_a = tuple_of(s.output), "grad_value"_a = tuple_of(s.grad_value),
      "grad_sampling_locations"_a = tuple_of(s.grad_sampling_locations),
      "grad_attention_weights"_a = tuple_of(s.grad_attention_weights));
}

py::dict build_info() {
  using namespace py::literals;
  const msdacore::BuildInfo info = msdacore::build_info();
  return py::dict(
      "version"_a = info.version, "openmp"_a = info.openmp,
      "openmp_version"_a = info.openmp_version, "num_threads"_a = info.num_threads,
      "max_threads"_a = info.max_threads, "cuda_compiled"_a = info.cuda_compiled,
      "cuda_kernels"_a = info.cuda_kernels, "cuda_runtime_version"_a = info.cuda_runtime_version,
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

  py::enum_<msdacore::SamplingMode>(
      m, "SamplingMode", "How a sample reads its level (the C API's MSDACORE_MODE_*).")
      .value("bilinear", msdacore::SamplingMode::Bilinear)
      .value("discrete", msdacore::SamplingMode::Discrete);

  py::class_<msdacore::Options>(
      m, "Options",
      "The operator's options, checked once (immutable; equal and hashable by value):\n"
      "  align_corners     False: h = y*H - 0.5 (Deformable DETR); True: h = y*(H - 1)\n"
      "  mode              \"bilinear\" or \"discrete\" (nearest pixel, clamped)\n"
      "  points_per_level  None (uniform layout) or L counts >= 1 (flattened layout)\n"
      "  deterministic     CUDA backward without atomics (bitwise reproducible)")
      .def(
          py::init(&make_options), py::kw_only(), py::arg("align_corners") = false,
          py::arg("mode") = "bilinear", py::arg("points_per_level") = py::none(),
          py::arg("deterministic") = false)
      .def_property_readonly(
          "align_corners", [](const msdacore::Options& o) { return o.align_corners; })
      .def_property_readonly(
          "mode", [](const msdacore::Options& o) { return msdacore::sampling_mode_name(o.mode); })
      .def_property_readonly(
          "mode_code", [](const msdacore::Options& o) { return static_cast<int>(o.mode); },
          "The mode's code (MSDACORE_MODE_*, the JAX handlers' attribute).")
      .def_property_readonly("points_per_level", &counts_or_none)
      .def_property_readonly(
          "deterministic", [](const msdacore::Options& o) { return o.deterministic; })
      .def("__repr__", &options_repr)
      .def(
          "__eq__",
          [](const msdacore::Options& a, py::handle b) {
            return py::isinstance<msdacore::Options>(b) &&
                   same_options(a, b.cast<msdacore::Options&>());
          })
      .def(
          "__hash__",
          [](const msdacore::Options& o) {
            return py::hash(
                py::make_tuple(
                    o.align_corners, static_cast<int>(o.mode), counts_or_none(o), o.deterministic));
          })
      .def(
          py::pickle(
              [](const msdacore::Options& o) {
                return py::make_tuple(
                    o.align_corners, msdacore::sampling_mode_name(o.mode), counts_or_none(o),
                    o.deterministic);
              },
              [](const py::tuple& t) { return make_options(t[0], t[1], t[2], t[3]); }));

  py::class_<PreparedCall>(
      m, "PreparedCall", "One call with its five inputs validated once (prepare()).")
      .def(
          "workspace_size", &PreparedCall::workspace_size, py::arg("backward"),
          "Bytes of device scratch the forward / backward needs.");
  // The runs are module functions (not methods): what runs the kernels is
  // msdacore._core.forward / backward, with the GIL released inside.
  m.def(
      "forward", &PreparedCall::forward, py::arg("call"), py::arg("output"),
      py::arg("workspace") = 0, py::arg("workspace_bytes") = 0,
      "Runs a prepared call's forward into the `output` capsule (workspace: address and "
      "size of caller-owned device scratch; 0: the default allocator).");
  m.def(
      "backward", &PreparedCall::backward, py::arg("call"), py::arg("grad_output"),
      py::arg("grad_value"), py::arg("grad_sampling_locations"), py::arg("grad_attention_weights"),
      py::arg("workspace") = 0, py::arg("workspace_bytes") = 0,
      "Runs a prepared call's backward into the three gradient capsules.");
  m.def(
      "prepare",
      [](py::handle v, py::handle ss, py::handle lsi, py::handle loc, py::handle attn,
         const msdacore::Options& options, std::uintptr_t stream, bool backward) {
        // One crossing for what every call needs first: the validated call and the shapes
        // of its outputs (it costs a pybind11 call per call less than asking for them).
        py::object call =
            py::cast(std::make_unique<PreparedCall>(v, ss, lsi, loc, attn, options, stream));
        py::list shapes = call.cast<const PreparedCall&>().shapes(backward);
        return py::make_tuple(std::move(call), std::move(shapes));
      },
      py::arg("value"), py::arg("spatial_shapes"), py::arg("level_start_index"),
      py::arg("sampling_locations"), py::arg("attention_weights"), py::arg("options"),
      py::arg("stream"), py::arg("backward"),
      "Consumes the five input capsules and validates the call (the core's errors); stream: "
      "the cudaStream_t the call runs on. Returns (the prepared call, [output shape]) or, "
      "with backward, (the prepared call, [the three gradients' shapes]).");
  m.def(
      "check_shapes", &check_shapes, py::arg("specs"), py::arg("options"),
      py::arg("spatial_shapes_values") = py::none(),
      py::arg("level_start_index_values") = py::none(), py::arg("grad_output") = py::none(),
      "The check that needs no data (msdacore::check_shapes). specs: five (shape, dtype "
      "name, device type, device index) tuples of value, spatial_shapes, "
      "level_start_index, sampling_locations, attention_weights; the index arrays' values "
      "(int sequences, row-major) where known; grad_output's spec for a backward. Returns "
      "{'output', 'grad_value', 'grad_sampling_locations', 'grad_attention_weights'} "
      "shapes, or raises the core's error.");
  m.def(
      "check_dtype_name",
      [](const std::string& arg, const std::string& name) {
        return msdacore::dtype_name(msdacore::dtype_from_name(arg, name));
      },
      py::arg("arg"), py::arg("dtype"),
      "The dtype name `dtype` of argument `arg` if msdacore supports it, else the core's "
      "TypeError.");
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
        return DeviceArray(
            device, std::move(shape), msdacore::dtype_from_name("cuda_empty", dtype),
            reinterpret_cast<void*>(stream));
      },
      py::arg("shape"), py::arg("dtype"), py::arg("device"), py::arg("stream") = 0,
      "A DeviceArray of msdacore's default allocator on cuda:`device`, ordered on `stream`.");
  m.def(
      "cuda_stream_wait",
      [](int device, std::uintptr_t waiting, std::uintptr_t producer) {
        py::gil_scoped_release release;
        msdacore::cuda_stream_wait(
            device, reinterpret_cast<void*>(waiting), reinterpret_cast<void*>(producer));
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
  m.def(
      "cuda_device_count", &msdacore::cuda_device_count,
      "CUDA devices visible (starts the CUDA driver; RuntimeError for a driver too old).");
  py::class_<DeviceArray>(
      m, "DeviceArray",
      "A CUDA array msdacore allocated: a DLPack producer "
      "(torch.from_dlpack, cupy.from_dlpack, ...).")
      .def(
          "__dlpack__", &DeviceArray::dlpack, py::kw_only(), py::arg("stream") = py::none(),
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
  m.def(
      "set_num_threads", &msdacore::set_num_threads, py::arg("n"),
      "Threads used by the CPU kernels (n >= 1).");
  m.attr("MAX_NUM_THREADS") = msdacore::kMaxNumThreads;
  m.def("get_num_threads", &msdacore::get_num_threads, "Threads used by the CPU kernels.");
  // The C API as a table of function pointers (msdacore_c.h), for native plugins that run
  // this module's kernels without linking it (the XLA FFI handlers of msdacore.jax).
  m.attr("c_api") =
      py::capsule(const_cast<msdacore_c_api_table*>(msdacore_c_api()), "msdacore.c_api");
}
