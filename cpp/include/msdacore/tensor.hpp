// msdacore/tensor.hpp: the non-owning tensor view the core computes on.
//
// A TensorView is a pointer with shape, element strides, dtype and device. The core
// never allocates or frees through it: callers (the Python binding, C++ applications)
// own the memory. Strides are counted in elements (not bytes) and may be zero or
// negative for inputs; outputs must be contiguous.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

namespace msdacore {

enum class DType : int32_t { Float16, BFloat16, Float32, Float64, Int32, Int64 };

enum class DeviceType : int32_t { CPU, CUDA };

struct Device {
  DeviceType type = DeviceType::CPU;
  int32_t index = 0;
  // The CPU is one device whatever index a caller gives it.
  bool operator==(const Device& o) const {
    return type == o.type && (type == DeviceType::CPU || index == o.index);
  }
  bool operator!=(const Device& o) const { return !(*this == o); }
};

// Row-major element strides of `shape` (ndim sizes) into `strides`: the last dimension
// 1, each earlier one the product of the sizes after it (sizes < 1 count as 1, products
// saturate at INT64_MAX instead of overflowing: validation rejects such shapes). The one
// place msdacore and its front ends compute contiguous strides.
void row_major_strides(int32_t ndim, const int64_t* shape, int64_t* strides);

// Size in bytes of one element of `t`.
int64_t dtype_size(DType t);
// "float32", "int64", ...
const char* dtype_name(DType t);
// The DType named `name` ("float16", ..., "int64"), for argument `arg`; a DTypeError
// naming what msdacore supports for any other name (e.g. "int8", "float32x4"): the one
// message of every front end for a dtype msdacore has no type for.
DType dtype_from_name(const std::string& arg, const std::string& name);
// "cpu", "cuda:1", ...
std::string device_name(Device d);

struct TensorView {
  static constexpr int kMaxDims = 8;

  void* data = nullptr;                     // address of element (0, ..., 0)
  int32_t ndim = 0;                         // number of dimensions, 0..kMaxDims
  std::array<int64_t, kMaxDims> shape{};    // extent of each dimension
  std::array<int64_t, kMaxDims> strides{};  // in elements, may be 0 or negative
  DType dtype = DType::Float32;
  Device device{};

  TensorView() = default;
  // A row-major contiguous view of `shape` (strides computed).
  TensorView(void* data, std::initializer_list<int64_t> shape, DType dtype, Device device = {});
  // A strided view; `ndim` <= kMaxDims, else std::invalid_argument.
  TensorView(
      void* data, int32_t ndim, const int64_t* shape, const int64_t* strides, DType dtype,
      Device device = {});

  int64_t numel() const;       // product of the sizes (0 if any is <= 0; INT64_MAX if it overflows)
  bool is_contiguous() const;  // row-major, ignoring strides of size-1 dimensions
  std::string shape_string() const;  // "(2, 100, 8)"
};

// A row-major view of `t`'s shape (and device) over `data`, of `dtype`. With
// keep_broadcast, the dimensions `t` broadcasts (stride 0, size > 1) keep stride 0 and
// take no room in `data` (it then holds t's distinct elements).
TensorView dense_like(const TensorView& t, void* data, DType dtype, bool keep_broadcast = false);

}  // namespace msdacore
