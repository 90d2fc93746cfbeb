// Argument validation: devices, dtypes, shapes and the index arrays (docs/conventions.md,
// "Errors"). Checks run in that order, so index arrays are only read once they are known to be host
// integer arrays of the right shape.
#include "validate.hpp"

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "msdacore/errors.hpp"
#include "msdacore/runtime.hpp"

#ifdef MSDACORE_WITH_CUDA
#include "backend.hpp"  // cuda/: device_count()
#endif

namespace msdacore {
namespace {

constexpr int64_t kUnknown = -1;  // a size not known because another input is malformed

std::vector<std::string> split_symbols(const char* symbols) {
  std::vector<std::string> out;
  std::string cur;
  for (const char* c = symbols; *c; ++c) {
    if (*c == ',') {
      out.push_back(cur);
      cur.clear();
    } else if (*c != ' ') {
      cur += *c;
    }
  }
  out.push_back(cur);
  return out;
}

// "(N, Lq, M*D) = (2, 100, 256)"; unknown sizes print as their symbol.
std::string describe_shape(const char* symbols, const std::vector<int64_t>& dims) {
  const std::vector<std::string> names = split_symbols(symbols);
  std::ostringstream os;
  os << "(" << symbols << (dims.size() == 1 ? ",)" : ")") << " = (";
  for (size_t i = 0; i < dims.size(); ++i) {
    if (i) os << ", ";
    if (dims[i] == kUnknown && i < names.size()) {
      os << names[i];
    } else {
      os << dims[i];
    }
  }
  os << (dims.size() == 1 ? ",)" : ")");
  return os.str();
}

// (No heap memory unless it throws: it runs for every input of every call.)
void expect_shape(
    const char* name, const TensorView& t, const char* symbols,
    std::initializer_list<int64_t> dims) {
  bool ok = t.ndim == static_cast<int32_t>(dims.size());
  int32_t i = 0;
  for (const int64_t d : dims) {
    if (!ok) break;
    if (d != kUnknown && t.shape[i] != d) ok = false;
    ++i;
  }
  if (!ok) {
    throw ShapeError(
        std::string(name) + " must have shape " + describe_shape(symbols, std::vector(dims)) +
        ", got " + t.shape_string());
  }
}

std::string list_string(const std::vector<int64_t>& v) {
  std::ostringstream os;
  os << "[";
  const size_t shown = v.size() > 16 ? 16 : v.size();
  for (size_t i = 0; i < shown; ++i) os << (i ? ", " : "") << v[i];
  if (shown < v.size()) os << ", ... (" << v.size() << " values)";
  os << "]";
  return os.str();
}

bool is_float(DType t) {
  return t == DType::Float16 || t == DType::BFloat16 || t == DType::Float32 || t == DType::Float64;
}

// How to get CUDA support, for messages about CUDA arrays this build cannot run.
constexpr const char kHowToGetCuda[] =
    "pass CPU arrays, or build msdacore with CUDA (a CUDA compiler on the PATH and "
    "MSDACORE_CUDA=ON) to run on the GPU";

void check_device_supported(const char* name, Device d) {
  if (d.type == DeviceType::CPU) return;
#ifdef MSDACORE_WITH_CUDA
  if (d.type == DeviceType::CUDA) {
    const int count = cuda::device_count();
    if (count == 0) {
      throw DeviceError(
          std::string(name) + " is on " + device_name(d) +
          ", but this build of msdacore sees no CUDA device (no GPU, no CUDA "
          "driver, or CUDA_VISIBLE_DEVICES hides them); pass CPU arrays, or run "
          "where a CUDA device is visible");
    }
    if (d.index < 0 || d.index >= count) {
      throw DeviceError(
          std::string(name) + " is on " + device_name(d) + ", but only " + std::to_string(count) +
          " CUDA device" + (count == 1 ? " is" : "s are") +
          " visible to this process (cuda:0 .. cuda:" + std::to_string(count - 1) + ")");
    }
    return;
  }
  throw DeviceError(
      std::string(name) + " is on " + device_name(d) +
      ", which msdacore does not support (backends: cpu, cuda); pass CPU or "
      "CUDA arrays");
#else
  throw DeviceError(
      std::string(name) + " is on " + device_name(d) +
      ", but this build of msdacore was compiled without CUDA (backends: cpu); " + kHowToGetCuda);
#endif
}

void check_same_device(const char* name, Device d, const char* ref_name, Device ref) {
  if (d != ref) {
    throw DeviceError(
        std::string(name) + " is on " + device_name(d) + " but " + ref_name + " is on " +
        device_name(ref) + ": all inputs must be on the same device");
  }
}

void check_on_host(const char* name, Device d) {
  if (d.type != DeviceType::CPU) {
    throw DeviceError(
        std::string(name) + " is on " + device_name(d) +
        ", but msdacore reads spatial_shapes and level_start_index on the host: "
        "pass them as CPU arrays (or Python lists)");
  }
}

// A floating-point dtype: float32, float64, float16 or bfloat16 (every backend).
void check_float_dtype(const char* name, DType t) {
  if (!is_float(t)) {
    throw DTypeError(
        std::string(name) +
        " must be a floating-point array (float32, float64, float16 or bfloat16), "
        "got " +
        dtype_name(t));
  }
}

bool is_half(DType t) { return t == DType::Float16 || t == DType::BFloat16; }

void check_index_dtype(const char* name, DType t) {
  if (t != DType::Int32 && t != DType::Int64) {
    throw DTypeError(std::string(name) + " must be an int32 or int64 array, got " + dtype_name(t));
  }
}

int64_t read_index(const TensorView& t, int64_t offset) {
  if (t.dtype == DType::Int32) return static_cast<const int32_t*>(t.data)[offset];
  return static_cast<const int64_t*>(t.data)[offset];
}

// a * b, or INT64_MAX when it does not fit (for a, b >= 0).
int64_t saturating_product(int64_t a, int64_t b) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  return (a > 0 && b > big / a) ? big : a * b;
}

// Reads Options::points_per_level (checked by check_options) into p->points,
// p->point_starts and p->P_total; p->L is known.
void read_points(const std::vector<int64_t>& counts, Problem* p) {
  if (static_cast<int64_t>(counts.size()) != p->L) {
    throw ShapeError(
        "points_per_level must have one count per level, L = " + std::to_string(p->L) +
        " (from spatial_shapes), got " + std::to_string(counts.size()) + ": " +
        list_string(counts));
  }
  p->points = counts;
  p->point_starts.resize(counts.size());
  int64_t total = 0;
  for (size_t l = 0; l < counts.size(); ++l) {
    p->point_starts[l] = total;
    total += counts[l];
  }
  p->P_total = total;
}

// Throws unless the product of `dims` (the sizes of a tensor the call reads or writes)
// fits in int64. Zero sizes are left out, so that an empty tensor's other sizes are
// checked too (their products are used in index arithmetic).
void check_elements(const char* name, const char* symbols, std::initializer_list<int64_t> dims) {
  const int64_t big = std::numeric_limits<int64_t>::max();
  int64_t n = 1;
  bool overflow = false;
  for (int64_t d : dims) {
    if (d == 0) continue;
    if (n > big / d) overflow = true;
    if (!overflow) n *= d;
  }
  if (overflow) {
    throw ShapeError(
        std::string(name) + " of shape " + symbols + " would have more than 2^63 - 1 elements");
  }
}

void check_has_data(const char* name, const TensorView& t) {
  if (t.data == nullptr && t.numel() > 0) {
    throw Error(
        std::string(name) + " has " + std::to_string(t.numel()) +
        " elements but a null data pointer");
  }
  const int64_t size = dtype_size(t.dtype);
  if (t.numel() > 0 &&
      reinterpret_cast<std::uintptr_t>(t.data) % static_cast<std::uintptr_t>(size) != 0) {
    throw Error(
        std::string(name) + " is not aligned to its element size (" + std::to_string(size) +
        " bytes for " + dtype_name(t.dtype) + "): pass an aligned array (a copy of it)");
  }
}

// Reads spatial_shapes and level_start_index into `p` and checks them against each
// other and against S.
void read_levels(
    const TensorView& spatial_shapes, const TensorView& level_start_index, Problem* p) {
  p->heights.resize(p->L);
  p->widths.resize(p->L);
  p->level_starts.resize(p->L);
  std::vector<int64_t> expected(p->L);
  int64_t total = 0;
  for (int64_t l = 0; l < p->L; ++l) {
    const int64_t row = l * spatial_shapes.strides[0];
    const int64_t H = read_index(spatial_shapes, row);
    const int64_t W = read_index(spatial_shapes, row + spatial_shapes.strides[1]);
    if (H < 1 || W < 1) {
      throw ShapeError(
          "spatial_shapes[" + std::to_string(l) + "] = (" + std::to_string(H) + ", " +
          std::to_string(W) + "): every level needs H_l >= 1 and W_l >= 1");
    }
    p->heights[l] = H;
    p->widths[l] = W;
    p->level_starts[l] = read_index(level_start_index, l * level_start_index.strides[0]);
    expected[l] = total;
    const int64_t big = std::numeric_limits<int64_t>::max();
    if (H > big / W || H * W > big - total) {  // exactly 2^63 - 1 tokens still fit
      throw ShapeError(
          "spatial_shapes[" + std::to_string(l) + "] = (" + std::to_string(H) + ", " +
          std::to_string(W) + "): the levels' H_l*W_l add up past 2^63 - 1 tokens");
    }
    total += H * W;
  }
  if (p->level_starts != expected) {
    throw ShapeError(
        "level_start_index must hold the prefix sums of H_l*W_l from "
        "spatial_shapes: expected " +
        list_string(expected) + ", got " + list_string(p->level_starts));
  }
  if (total != p->S) {
    throw ShapeError(
        "spatial_shapes gives S = sum of H_l*W_l = " + std::to_string(total) + " (level starts " +
        list_string(expected) + "), but value has S = " + std::to_string(p->S) +
        " tokens (value.shape[1])");
  }
}

// What check_call reads besides shapes, dtypes and devices.
enum class Data {
  All,          // every input has data: checked for null and alignment; levels read
  IfIndexKnown  // none is read except the index arrays, when both have data
};

// check_inputs (Data::All) and check_shapes (Data::IfIndexKnown).
Problem check_call(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const Options& options, Data data) {
  // 1. Devices: one supported device; index arrays are read on the host.
  check_device_supported("value", value.device);
  check_same_device("sampling_locations", sampling_locations.device, "value", value.device);
  check_same_device("attention_weights", attention_weights.device, "value", value.device);
  check_on_host("spatial_shapes", spatial_shapes.device);
  check_on_host("level_start_index", level_start_index.device);

  // 2. Dtypes.
  check_float_dtype("value", value.dtype);
  check_float_dtype("sampling_locations", sampling_locations.dtype);
  check_float_dtype("attention_weights", attention_weights.dtype);
  // Mixed precision: with a half value, locations and weights may be float32.
  const auto companion_ok = [&](DType t) {
    return t == value.dtype || (is_half(value.dtype) && t == DType::Float32);
  };
  if (!companion_ok(sampling_locations.dtype) || !companion_ok(attention_weights.dtype)) {
    throw DTypeError(
        std::string(
            "value, sampling_locations and attention_weights must have "
            "the same dtype") +
        (is_half(value.dtype) ? " (or float32 sampling_locations and "
                                "attention_weights with a half value)"
                              : "") +
        ", got " + dtype_name(value.dtype) + ", " + dtype_name(sampling_locations.dtype) + " and " +
        dtype_name(attention_weights.dtype));
  }
  check_index_dtype("spatial_shapes", spatial_shapes.dtype);
  check_index_dtype("level_start_index", level_start_index.dtype);

  // 3. Shapes. N, S, M, D come from value, L from spatial_shapes, Lq and P from
  // sampling_locations (or attention_weights when sampling_locations is malformed).
  Problem p;
  p.dtype = value.dtype;
  p.loc_dtype = sampling_locations.dtype;
  p.attn_dtype = attention_weights.dtype;
  p.device = value.device;
  expect_shape("value", value, "N, S, M, D", {kUnknown, kUnknown, kUnknown, kUnknown});
  p.N = value.shape[0];
  p.S = value.shape[1];
  p.M = value.shape[2];
  p.D = value.shape[3];
  if (p.N < 0 || p.S < 1 || p.M < 1 || p.D < 1) {
    throw ShapeError(
        "value must have shape (N, S, M, D) with N >= 0 and S, M, D >= 1, got " +
        value.shape_string());
  }
  expect_shape("spatial_shapes", spatial_shapes, "L, 2", {kUnknown, 2});
  p.L = spatial_shapes.shape[0];
  if (p.L < 1) {
    throw ShapeError(
        "spatial_shapes must have shape (L, 2) with L >= 1 levels, got " +
        spatial_shapes.shape_string());
  }
  expect_shape("level_start_index", level_start_index, "L", {p.L});

  check_options(options);
  p.mode = options.mode;
  p.flattened = !options.points_per_level.empty();
  if (p.flattened) {
    read_points(options.points_per_level, &p);
    const int64_t rank = 5;
    const bool loc_rank_ok = sampling_locations.ndim == rank;
    p.Lq = loc_rank_ok
               ? sampling_locations.shape[1]
               : (attention_weights.ndim == rank - 1 ? attention_weights.shape[1] : kUnknown);
    expect_shape(
        "sampling_locations", sampling_locations, "N, Lq, M, P_total, 2",
        {p.N, p.Lq, p.M, p.P_total, 2});
    expect_shape(
        "attention_weights", attention_weights, "N, Lq, M, P_total", {p.N, p.Lq, p.M, p.P_total});
  } else {
    const bool loc_rank_ok = sampling_locations.ndim == 6;
    const bool attn_rank_ok = attention_weights.ndim == 5;
    p.Lq = loc_rank_ok ? sampling_locations.shape[1]
                       : (attn_rank_ok ? attention_weights.shape[1] : kUnknown);
    p.P = loc_rank_ok ? sampling_locations.shape[4]
                      : (attn_rank_ok ? attention_weights.shape[4] : kUnknown);
    expect_shape(
        "sampling_locations", sampling_locations, "N, Lq, M, L, P, 2",
        {p.N, p.Lq, p.M, p.L, p.P, 2});
    expect_shape(
        "attention_weights", attention_weights, "N, Lq, M, L, P", {p.N, p.Lq, p.M, p.L, p.P});
    if (p.P < 1) {
      throw ShapeError(
          "sampling_locations must have shape (N, Lq, M, L, P, 2) with P >= 1 "
          "points, got " +
          sampling_locations.shape_string());
    }
    p.points.assign(static_cast<size_t>(p.L), p.P);
    p.point_starts.resize(static_cast<size_t>(p.L));
    for (int64_t l = 0; l < p.L; ++l) p.point_starts[l] = saturating_product(l, p.P);
    p.P_total = saturating_product(p.L, p.P);
  }

  if (p.Lq < 0) {
    throw ShapeError(
        "sampling_locations must have Lq >= 0 queries, got " + sampling_locations.shape_string());
  }
  check_elements("value", "(N, S, M, D)", {p.N, p.S, p.M, p.D});
  check_elements("the output", "(N, Lq, M*D)", {p.N, p.Lq, p.M, p.D});
  check_elements(
      "sampling_locations", p.flattened ? "(N, Lq, M, P_total, 2)" : "(N, Lq, M, L, P, 2)",
      {p.N, p.Lq, p.M, p.P_total, 2});

  // 4. Contents of the index arrays.
  if (data == Data::All) {
    check_has_data("value", value);
    check_has_data("sampling_locations", sampling_locations);
    check_has_data("attention_weights", attention_weights);
  } else if (spatial_shapes.data == nullptr || level_start_index.data == nullptr) {
    return p;  // the level table is not known yet: the call checks it
  }
  check_has_data("spatial_shapes", spatial_shapes);
  check_has_data("level_start_index", level_start_index);
  read_levels(spatial_shapes, level_start_index, &p);
  return p;
}

}  // namespace

void check_options(const Options& options) {
  if (options.mode != SamplingMode::Bilinear && options.mode != SamplingMode::Discrete) {
    throw Error(
        "mode must be \"bilinear\" (0) or \"discrete\" (1), got the value " +
        std::to_string(static_cast<int32_t>(options.mode)));
  }
  if (options.mode == SamplingMode::Discrete && options.align_corners) {
    throw Error(
        "align_corners=True does not apply to mode=discrete (it samples the pixel "
        "floor(y*H + 0.5), clamped to the border): pass align_corners=False");
  }
  const std::vector<int64_t>& counts = options.points_per_level;
  const int64_t big = std::numeric_limits<int64_t>::max();
  int64_t total = 0;
  for (size_t l = 0; l < counts.size(); ++l) {
    if (counts[l] < 1) {
      throw ShapeError(
          "points_per_level[" + std::to_string(l) + "] = " + std::to_string(counts[l]) +
          ": every level needs at least 1 point, got " + list_string(counts));
    }
    if (counts[l] > big - total) {
      throw ShapeError("points_per_level adds up past 2^63 - 1 points: " + list_string(counts));
    }
    total += counts[l];
  }
}

const char* sampling_mode_name(SamplingMode mode) {
  switch (mode) {
    case SamplingMode::Bilinear: return "bilinear";
    case SamplingMode::Discrete: return "discrete";
  }
  return "unknown";
}

SamplingMode sampling_mode_from_name(const std::string& name) {
  for (SamplingMode mode : {SamplingMode::Bilinear, SamplingMode::Discrete}) {
    if (name == sampling_mode_name(mode)) return mode;
  }
  throw Error("mode must be \"bilinear\" or \"discrete\", got \"" + name + "\"");
}

Problem check_inputs(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const Options& options) {
  return check_call(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, options,
      Data::All);
}

Problem check_shapes(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const Options& options, const TensorView* grad_output) {
  const Problem p = check_call(
      value, spatial_shapes, level_start_index, sampling_locations, attention_weights, options,
      Data::IfIndexKnown);
  if (grad_output != nullptr) {
    validate::check_float_input(
        "grad_output", *grad_output, p, "N, Lq, M*D", {p.N, p.Lq, p.M * p.D}, p.dtype, "value",
        /*need_data=*/false);
  }
  return p;
}

namespace {

Shape shape_of(std::initializer_list<int64_t> dims) {
  Shape s;
  for (const int64_t d : dims) s.dims[s.ndim++] = d;
  return s;
}

}  // namespace

CallShapes call_shapes(const Problem& p) {
  CallShapes s;
  s.output = shape_of({p.N, p.Lq, p.M * p.D});
  s.grad_value = shape_of({p.N, p.S, p.M, p.D});
  if (p.flattened) {
    s.grad_sampling_locations = shape_of({p.N, p.Lq, p.M, p.P_total, 2});
    s.grad_attention_weights = shape_of({p.N, p.Lq, p.M, p.P_total});
  } else {
    s.grad_sampling_locations = shape_of({p.N, p.Lq, p.M, p.L, p.P, 2});
    s.grad_attention_weights = shape_of({p.N, p.Lq, p.M, p.L, p.P});
  }
  return s;
}

namespace validate {

void check_float_input(
    const char* name, const TensorView& t, const Problem& p, const char* symbols,
    std::initializer_list<int64_t> dims, DType dtype, const char* dtype_of, bool need_data) {
  check_same_device(name, t.device, "value", p.device);
  if (t.dtype != dtype) {
    throw DTypeError(
        std::string(name) + " must have the dtype of " + dtype_of + " (" + dtype_name(dtype) +
        "), got " + dtype_name(t.dtype));
  }
  expect_shape(name, t, symbols, dims);
  if (need_data) check_has_data(name, t);
}

void check_output(
    const char* name, const TensorView& t, const Problem& p, const char* symbols,
    std::initializer_list<int64_t> dims, DType dtype, const char* dtype_of) {
  check_float_input(name, t, p, symbols, dims, dtype, dtype_of);
  if (!t.is_contiguous()) {
    throw ShapeError(std::string(name) + " must be a contiguous (row-major) output buffer");
  }
}

namespace {

// [first, last) byte addresses `t` covers; empty for a tensor without elements.
std::pair<std::uintptr_t, std::uintptr_t> byte_span(const TensorView& t) {
  if (t.numel() <= 0 || t.data == nullptr) return {0, 0};
  int64_t low = 0, high = 0;  // in elements, relative to data
  for (int d = 0; d < t.ndim; ++d) {
    const int64_t reach = t.strides[d] * (t.shape[d] - 1);
    (reach < 0 ? low : high) += reach;
  }
  const auto base = reinterpret_cast<std::uintptr_t>(t.data);
  const auto size = static_cast<std::uintptr_t>(dtype_size(t.dtype));
  return {
      base + static_cast<std::uintptr_t>(low) * size,
      base + static_cast<std::uintptr_t>(high + 1) * size};
}

bool spans_overlap(
    std::pair<std::uintptr_t, std::uintptr_t> sa, std::pair<std::uintptr_t, std::uintptr_t> sb) {
  return sa.first < sa.second && sb.first < sb.second && sa.first < sb.second &&
         sb.first < sa.second;
}

bool overlap(const TensorView& a, const TensorView& b) {
  return a.device == b.device && spans_overlap(byte_span(a), byte_span(b));
}

}  // namespace

void check_no_overlap(
    std::initializer_list<NamedView> outputs, std::initializer_list<NamedView> inputs,
    const WorkspaceSpan& workspace) {
  for (auto out = outputs.begin(); out != outputs.end(); ++out) {
    for (const NamedView& in : inputs) {
      if (overlap(*out->view, *in.view)) {
        throw Error(
            std::string(out->name) + " overlaps " + in.name +
            " in memory: outputs must not share memory with the inputs or with "
            "each other");
      }
    }
    for (auto other = outputs.begin(); other != out; ++other) {
      if (overlap(*out->view, *other->view)) {
        throw Error(
            std::string(out->name) + " overlaps " + other->name +
            " in memory: outputs must not share memory with the inputs or with "
            "each other");
      }
    }
  }
  if (workspace.data == nullptr || workspace.bytes <= 0) return;
  const auto base = reinterpret_cast<std::uintptr_t>(workspace.data);
  const std::pair<std::uintptr_t, std::uintptr_t> span{
      base, base + static_cast<std::uintptr_t>(workspace.bytes)};
  for (const std::initializer_list<NamedView>& group : {inputs, outputs}) {
    for (const NamedView& argument : group) {
      if (argument.view->device == workspace.device &&
          spans_overlap(span, byte_span(*argument.view))) {
        throw Error(
            std::string("workspace overlaps ") + argument.name +
            " in memory: the workspace must not share memory with the inputs or the outputs");
      }
    }
  }
}

}  // namespace validate
}  // namespace msdacore
