// msdacore._core: the pybind11 module. Takes DLPack capsules (the Python package turns
// NumPy arrays, torch tensors and other __dlpack__ objects into capsules), makes views,
// allocates NumPy outputs, releases the GIL around the computation, and turns the core's
// exceptions into ValueError / TypeError / RuntimeError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <vector>

#include "dlpack_input.hpp"
#include "msdacore/msdacore.hpp"

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

// A C-contiguous NumPy array and the view the core writes it through.
struct Output {
  py::array array;
  msdacore::TensorView view;

  Output(const msdacore::Problem& p, std::vector<py::ssize_t> shape)
      : array(numpy_dtype(p.dtype), shape) {
    std::vector<int64_t> dims(shape.begin(), shape.end());
    std::vector<int64_t> strides(dims.size());
    int64_t stride = 1;
    for (size_t d = dims.size(); d-- > 0;) {
      strides[d] = stride;
      stride *= dims[d];
    }
    view = msdacore::TensorView(array.mutable_data(), static_cast<int32_t>(dims.size()),
                                dims.data(), strides.data(), p.dtype, p.device);
  }
};

py::array forward(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
                  py::handle sampling_locations, py::handle attention_weights,
                  bool align_corners) {
  OpInputs in(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  const msdacore::TensorView v = in.value.view(), ss = in.spatial_shapes.view(),
                             lsi = in.level_start_index.view(),
                             loc = in.sampling_locations.view(),
                             attn = in.attention_weights.view();
  const msdacore::Problem p = msdacore::check_inputs(v, ss, lsi, loc, attn);
  Output out(p, {p.N, p.Lq, p.M * p.D});
  {
    py::gil_scoped_release release;
    msdacore::Options options;
    options.align_corners = align_corners;
    msdacore::ms_deform_attn_forward(v, ss, lsi, loc, attn, out.view, options);
  }
  return out.array;
}

py::tuple backward(py::handle value, py::handle spatial_shapes, py::handle level_start_index,
                   py::handle sampling_locations, py::handle attention_weights,
                   py::handle grad_output, bool align_corners) {
  OpInputs in(value, spatial_shapes, level_start_index, sampling_locations, attention_weights);
  DLPackInput grad_in(grad_output, "grad_output");
  const msdacore::TensorView v = in.value.view(), ss = in.spatial_shapes.view(),
                             lsi = in.level_start_index.view(),
                             loc = in.sampling_locations.view(),
                             attn = in.attention_weights.view(), g = grad_in.view();
  const msdacore::Problem p = msdacore::check_inputs(v, ss, lsi, loc, attn);
  Output grad_value(p, {p.N, p.S, p.M, p.D});
  Output grad_loc(p, {p.N, p.Lq, p.M, p.L, p.P, 2});
  Output grad_attn(p, {p.N, p.Lq, p.M, p.L, p.P});
  {
    py::gil_scoped_release release;
    msdacore::Options options;
    options.align_corners = align_corners;
    msdacore::ms_deform_attn_backward(v, ss, lsi, loc, attn, g, grad_value.view, grad_loc.view,
                                      grad_attn.view, options);
  }
  return py::make_tuple(grad_value.array, grad_loc.array, grad_attn.array);
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
        py::arg("attention_weights"), py::arg("align_corners"),
        "Forward on DLPack capsules; returns a NumPy array (N, Lq, M*D).");
  m.def("backward", &backward, py::arg("value"), py::arg("spatial_shapes"),
        py::arg("level_start_index"), py::arg("sampling_locations"),
        py::arg("attention_weights"), py::arg("grad_output"), py::arg("align_corners"),
        "Backward on DLPack capsules; returns NumPy (grad_value, grad_sampling_locations, "
        "grad_attention_weights).");
  m.def("build_info", &build_info, "What this build can do (dict).");
  m.def("set_num_threads", &msdacore::set_num_threads, py::arg("n"),
        "Threads used by the CPU kernels (n >= 1).");
  m.def("get_num_threads", &msdacore::get_num_threads, "Threads used by the CPU kernels.");
}
