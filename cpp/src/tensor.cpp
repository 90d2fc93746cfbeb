// TensorView construction and description helpers.
#include "msdacore/tensor.hpp"

#include <limits>
#include <sstream>

#include "msdacore/errors.hpp"

namespace msdacore {

namespace {

// Size and name of every DType.
struct DTypeInfo {
  DType dtype;
  int64_t size;  // bytes per element
  const char* name;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::Float16, 2, "float16"}, {DType::BFloat16, 2, "bfloat16"},
    {DType::Float32, 4, "float32"}, {DType::Float64, 8, "float64"},
    {DType::Int32, 4, "int32"},     {DType::Int64, 8, "int64"},
};

// The kDTypes entry of `t`; null for a value outside the enum.
const DTypeInfo* info_of(DType t) {
  for (const DTypeInfo& info : kDTypes) {
    if (info.dtype == t) return &info;
  }
  return nullptr;
}

}  // namespace

int64_t dtype_size(DType t) {
  const DTypeInfo* info = info_of(t);
  return info != nullptr ? info->size : 0;
}

const char* dtype_name(DType t) {
  const DTypeInfo* info = info_of(t);
  return info != nullptr ? info->name : "unknown";
}

void row_major_strides(int32_t ndim, const int64_t* shape, int64_t* strides) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  int64_t stride = 1;
  for (int32_t d = ndim - 1; d >= 0; --d) {
    strides[d] = stride;
    const int64_t extent = shape[d] > 1 ? shape[d] : 1;
    stride = stride > big / extent ? big : stride * extent;
  }
}

DType dtype_from_name(const std::string& arg, const std::string& name) {
  for (const DTypeInfo& info : kDTypes) {
    if (name == info.name) return info.dtype;
  }
  throw DTypeError(
      arg + " has dtype " + name +
      ", which msdacore does not support (float32, float64, float16 or bfloat16 "
      "for value, sampling_locations and attention_weights; int32 or int64 for "
      "spatial_shapes and level_start_index)");
}

std::string device_name(Device d) {
  if (d.type == DeviceType::CPU) return "cpu";
  return "cuda:" + std::to_string(d.index);
}

TensorView::TensorView(
    void* data_, std::initializer_list<int64_t> shape_, DType dtype_, Device device_)
    : data(data_), dtype(dtype_), device(device_) {
  if (shape_.size() > static_cast<size_t>(kMaxDims)) {
    throw ShapeError(
        "TensorView supports at most 8 dimensions, got " + std::to_string(shape_.size()));
  }
  ndim = static_cast<int32_t>(shape_.size());
  int i = 0;
  for (int64_t s : shape_) shape[i++] = s;
  row_major_strides(ndim, shape.data(), strides.data());
}

TensorView::TensorView(
    void* data_, int32_t ndim_, const int64_t* shape_, const int64_t* strides_, DType dtype_,
    Device device_)
    : data(data_), ndim(ndim_), dtype(dtype_), device(device_) {
  if (ndim_ < 0 || ndim_ > kMaxDims) {
    throw ShapeError("TensorView supports 0 to 8 dimensions, got " + std::to_string(ndim_));
  }
  for (int d = 0; d < ndim; ++d) {
    shape[d] = shape_[d];
    strides[d] = strides_[d];
  }
}

int64_t TensorView::numel() const {
  // Saturates at INT64_MAX instead of overflowing; 0 when any size is 0 or negative.
  const int64_t big = std::numeric_limits<int64_t>::max();
  int64_t n = 1;
  bool saturated = false;
  for (int d = 0; d < ndim; ++d) {
    if (shape[d] <= 0) return 0;
    if (saturated || n > big / shape[d]) {
      saturated = true;
    } else {
      n *= shape[d];
    }
  }
  return saturated ? big : n;
}

bool TensorView::is_contiguous() const {
  if (numel() == 0) return true;
  int64_t expected = 1;
  for (int d = ndim - 1; d >= 0; --d) {
    if (shape[d] != 1 && strides[d] != expected) return false;
    expected *= shape[d];
  }
  return true;
}

std::string TensorView::shape_string() const {
  std::ostringstream os;
  os << "(";
  for (int d = 0; d < ndim; ++d) {
    if (d) os << ", ";
    os << shape[d];
  }
  if (ndim == 1) os << ",";
  os << ")";
  return os.str();
}

TensorView dense_like(const TensorView& t, void* data, DType dtype, bool keep_broadcast) {
  TensorView v = t;
  v.data = data;
  v.dtype = dtype;
  int64_t stride = 1;
  for (int d = t.ndim - 1; d >= 0; --d) {
    const bool broadcast = keep_broadcast && t.strides[d] == 0 && t.shape[d] > 1;
    v.strides[d] = broadcast ? 0 : stride;
    if (!broadcast) stride *= t.shape[d];
  }
  return v;
}

}  // namespace msdacore
