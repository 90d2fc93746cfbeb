// DLPack capsule consumption (see dlpack_input.hpp).
#include "dlpack_input.hpp"

#include <cstring>
#include <limits>

#include "msdacore/errors.hpp"

namespace py = pybind11;

namespace msdacore {
namespace python {
namespace {

constexpr const char* kVersionedName = "dltensor_versioned";
constexpr const char* kLegacyName = "dltensor";

std::string dl_dtype_name(DLDataType t) {
  std::string base;
  switch (t.code) {
    case kDLInt: base = "int"; break;
    case kDLUInt: base = "uint"; break;
    case kDLFloat: base = "float"; break;
    case kDLBfloat: base = "bfloat"; break;
    case kDLComplex: base = "complex"; break;
    case kDLBool: return "bool";
    default: base = "type_code_" + std::to_string(t.code) + "_bits_"; break;
  }
  std::string name = base + std::to_string(t.bits);
  if (t.lanes != 1) name += "x" + std::to_string(t.lanes);
  return name;
}

// msdacore's DType of a DLPack dtype, or the core's DTypeError (dtype_from_name's message)
// for one msdacore does not support. The supported ones are mapped without strings.
DType dtype_of(const std::string& arg, DLDataType t) {
  if (t.lanes == 1) {
    if (t.code == kDLFloat && t.bits == 32) return DType::Float32;
    if (t.code == kDLFloat && t.bits == 64) return DType::Float64;
    if (t.code == kDLFloat && t.bits == 16) return DType::Float16;
    if (t.code == kDLBfloat && t.bits == 16) return DType::BFloat16;
    if (t.code == kDLInt && t.bits == 32) return DType::Int32;
    if (t.code == kDLInt && t.bits == 64) return DType::Int64;
  }
  return dtype_from_name(arg, dl_dtype_name(t));
}

const char* dl_device_name(int32_t type) {
  switch (type) {
    case kDLOpenCL: return "OpenCL";
    case kDLVulkan: return "Vulkan";
    case kDLMetal: return "Metal";
    case kDLVPI: return "VPI";
    case kDLROCM: return "ROCm";
    case kDLROCMHost: return "ROCm host";
    case kDLExtDev: return "an extension device";
    case kDLCUDAManaged: return "CUDA managed memory";
    case kDLOneAPI: return "oneAPI";
    case kDLWebGPU: return "WebGPU";
    case kDLHexagon: return "Hexagon";
    case kDLMAIA: return "MAIA";
    default: return "an unknown device";
  }
}

}  // namespace

DLPackInput::DLPackInput(py::handle capsule, std::string name) : name_(std::move(name)) {
  PyObject* cap = capsule.ptr();
  if (!PyCapsule_CheckExact(cap)) {
    throw py::type_error(name_ + ": expected a DLPack capsule");
  }
  const char* cap_name = PyCapsule_GetName(cap);
  if (cap_name != nullptr && std::strcmp(cap_name, kVersionedName) == 0) {
    versioned_ = static_cast<DLManagedTensorVersioned*>(PyCapsule_GetPointer(cap, kVersionedName));
    if (versioned_ == nullptr) throw py::error_already_set();
    PyCapsule_SetName(cap, "used_dltensor_versioned");
  } else if (cap_name != nullptr && std::strcmp(cap_name, kLegacyName) == 0) {
    legacy_ = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap, kLegacyName));
    if (legacy_ == nullptr) throw py::error_already_set();
    PyCapsule_SetName(cap, "used_dltensor");
  } else {
    throw py::type_error(
        name_ + ": the DLPack capsule is named '" + std::string(cap_name ? cap_name : "") +
        "' (already consumed, or not a DLPack tensor)");
  }
}

DLPackInput::~DLPackInput() {
  if (versioned_ != nullptr && versioned_->deleter != nullptr) versioned_->deleter(versioned_);
  if (legacy_ != nullptr && legacy_->deleter != nullptr) legacy_->deleter(legacy_);
}

TensorView DLPackInput::view() const {
  if (versioned_ != nullptr && versioned_->version.major != 1) {
    throw DTypeError(
        name_ + " was exported with DLPack " + std::to_string(versioned_->version.major) + "." +
        std::to_string(versioned_->version.minor) + ", but msdacore reads DLPack 1.x");
  }
  const DLTensor& t = versioned_ != nullptr ? versioned_->dl_tensor : legacy_->dl_tensor;

  const DType dtype = dtype_of(name_, t.dtype);
  Device device;
  if (t.device.device_type == kDLCPU || t.device.device_type == kDLCUDAHost) {
    device = Device{DeviceType::CPU, 0};
  } else if (t.device.device_type == kDLCUDA) {
    device = Device{DeviceType::CUDA, t.device.device_id};
  } else {
    throw DeviceError(
        name_ + " is on " + dl_device_name(t.device.device_type) + " (DLPack device type " +
        std::to_string(t.device.device_type) +
        "), which msdacore does not support: pass CPU arrays");
  }
  if (t.ndim < 0 || t.ndim > TensorView::kMaxDims) {
    throw ShapeError(
        name_ + " has " + std::to_string(t.ndim) + " dimensions; msdacore inputs have at most " +
        std::to_string(TensorView::kMaxDims));
  }
  if (t.ndim > 0 && t.shape == nullptr) {
    throw ShapeError(
        name_ + " was exported with " + std::to_string(t.ndim) +
        " dimensions but no shape (a null shape pointer): a broken DLPack "
        "producer");
  }
  int64_t strides[TensorView::kMaxDims];
  if (t.strides != nullptr) {
    for (int d = 0; d < t.ndim; ++d) strides[d] = t.strides[d];
  } else {
    row_major_strides(t.ndim, t.shape, strides);  // compact row-major (legacy producers)
  }
  void* data = static_cast<char*>(t.data) + t.byte_offset;
  return TensorView(data, t.ndim, t.shape, strides, dtype, device);
}

}  // namespace python
}  // namespace msdacore
