// The CPU backend's half types and mixed precision (docs/conventions.md, "Numerics"):
// float16 / bfloat16 inputs are widened to float32 in the workspace, the float32 kernels
// compute, and the outputs are rounded once to their dtypes. grad_value is therefore
// reduced in a float32 buffer before its final cast, and results stay bitwise identical
// for any thread count (every step is element-wise or one of the float32 kernels).
#include "cpu_widen.hpp"

#include <cstdint>
#include <initializer_list>

#include "half_convert.hpp"
#include "msdacore/errors.hpp"
#include "msdacore/runtime.hpp"

namespace msdacore {
namespace cpu {
namespace {

// `t`'s shape with the dimensions it broadcasts (stride 0) cut to 1: the elements that
// are distinct, which is all a widened copy needs to hold.
TensorView compact(const TensorView& t) {
  TensorView c = t;
  for (int d = 0; d < t.ndim; ++d) {
    if (t.strides[d] == 0 && t.shape[d] > 1) c.shape[d] = 1;
  }
  return c;
}

// dst[i] = t[i] as float32, i in row-major order over t's shape (any strides); `read`
// turns one stored element of type T into float32 (branch free, so the unit-stride loops
// vectorize).
template <typename T, typename Read>
void widen_as(const TensorView& t, float* dst, Read read) {
  const T* src = static_cast<const T*>(t.data);
  const int64_t total = t.numel();
  if (total <= 0) return;
  if (t.is_contiguous()) {  // one flat range, in chunks
    constexpr int64_t kChunk = 16384;
    const int64_t chunks = (total + kChunk - 1) / kChunk;
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (chunks > 4)
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t end = (c + 1) * kChunk < total ? (c + 1) * kChunk : total;
      for (int64_t i = c * kChunk; i < end; ++i) dst[i] = read(src[i]);
    }
    return;
  }
  const int last = t.ndim - 1;
  const int64_t inner = t.ndim > 0 ? t.shape[last] : 1;
  const int64_t inner_stride = t.ndim > 0 ? t.strides[last] : 0;
  const int64_t rows = total / inner;
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (rows > 64)
  for (int64_t r = 0; r < rows; ++r) {
    int64_t offset = 0, rest = r;
    for (int d = last - 1; d >= 0; --d) {
      offset += (rest % t.shape[d]) * t.strides[d];
      rest /= t.shape[d];
    }
    float* out = dst + r * inner;
    const T* in = src + offset;
    if (inner_stride == 1) {
      for (int64_t i = 0; i < inner; ++i) out[i] = read(in[i]);
    } else {
      for (int64_t i = 0; i < inner; ++i) out[i] = read(in[i * inner_stride]);
    }
  }
}

// widen_as for t's half dtype (decided once, outside the element loop; float32 inputs are
// never copied).
void widen(const TensorView& t, float* dst) {
  if (t.dtype == DType::Float16) {
    widen_as<uint16_t>(t, dst, [](uint16_t x) { return half_to_float(x); });
  } else if (t.dtype == DType::BFloat16) {
    widen_as<uint16_t>(t, dst, [](uint16_t x) { return bfloat16_to_float(x); });
  } else {
    throw DTypeError("msdacore: unexpected dtype in the half-type path");
  }
}

// out[i] = src[i] rounded to out's dtype (out contiguous, `count` elements).
void narrow(const float* src, const TensorView& out, int64_t count) {
  if (out.dtype == DType::Float32) return;  // the kernels wrote it directly
  uint16_t* dst = static_cast<uint16_t*>(out.data);
  // One loop per dtype, branch free inside, so that each vectorizes.
  if (out.dtype == DType::BFloat16) {
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (count > 65536)
    for (int64_t i = 0; i < count; ++i) dst[i] = float_to_bfloat16(src[i]);
  } else {
#pragma omp parallel for schedule(static) num_threads(get_num_threads()) if (count > 65536)
    for (int64_t i = 0; i < count; ++i) dst[i] = float_to_half(src[i]);
  }
}

// The float32 stand-in of an argument: `t` itself when it is float32, else a float32
// buffer from the workspace holding its distinct elements (filled from `t` when `fill`;
// outputs are contiguous, so theirs is the whole tensor).
TensorView as_float32(const TensorView& t, Workspace& workspace, const char* what, bool fill) {
  if (t.dtype == DType::Float32) return t;
  const TensorView distinct = compact(t);
  float* buffer = workspace.take<float>(distinct.numel(), what);
  if (fill && !workspace.counting_only()) widen(distinct, buffer);
  return dense_like(t, buffer, DType::Float32, /*keep_broadcast=*/true);
}

// float32 copies of the three float inputs, taken from the workspace first, in this order.
struct Float32Inputs {
  TensorView value, loc, attn;
  Float32Inputs(
      const TensorView& value_, const TensorView& loc_, const TensorView& attn_,
      Workspace& workspace)
      : value(as_float32(value_, workspace, "the float32 value", true)),
        loc(as_float32(loc_, workspace, "the float32 sampling_locations", true)),
        attn(as_float32(attn_, workspace, "the float32 attention_weights", true)) {}
};

// The problem as the float32 kernels see it.
Problem float32_problem(const Problem& p) {
  Problem q = p;
  q.dtype = q.loc_dtype = q.attn_dtype = DType::Float32;
  return q;
}

// A view of `shape` and `dtype` without data (for sizing).
TensorView shape_only(std::initializer_list<int64_t> shape, DType dtype) {
  return TensorView(nullptr, shape, dtype);
}

}  // namespace

int64_t widened_workspace_size(const Problem& p, bool backward, const TensorView& value) {
  const TensorView loc = p.flattened ? shape_only({p.N, p.Lq, p.M, p.P_total, 2}, p.loc_dtype)
                                     : shape_only({p.N, p.Lq, p.M, p.L, p.P, 2}, p.loc_dtype);
  const TensorView attn = p.flattened ? shape_only({p.N, p.Lq, p.M, p.P_total}, p.attn_dtype)
                                      : shape_only({p.N, p.Lq, p.M, p.L, p.P}, p.attn_dtype);
  const TensorView out = shape_only({p.N, p.Lq, p.M * p.D}, p.dtype);
  Workspace counting = Workspace::counting();
  const FloatKernels none{nullptr, nullptr};
  if (backward) {
    const TensorView grad_value = shape_only({p.N, p.S, p.M, p.D}, p.dtype);
    widened_backward(p, Options{}, value, loc, attn, out, grad_value, loc, attn, counting, none);
  } else {
    widened_forward(p, Options{}, value, loc, attn, out, counting, none);
  }
  return counting.used();
}

bool needs_widening(const Problem& p) {
  return p.dtype != DType::Float32 && p.dtype != DType::Float64;
}

void widened_forward(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, const TensorView& output, Workspace& workspace,
    const FloatKernels& kernels) {
  const Float32Inputs in(value, loc, attn, workspace);
  const TensorView out = as_float32(output, workspace, "the float32 output", false);
  if (workspace.counting_only()) return;
  kernels.forward(float32_problem(p), options, in.value, in.loc, in.attn, out);
  narrow(static_cast<const float*>(out.data), output, output.numel());
}

void widened_backward(
    const Problem& p, const Options& options, const TensorView& value, const TensorView& loc,
    const TensorView& attn, const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_loc, const TensorView& grad_attn, Workspace& workspace,
    const FloatKernels& kernels) {
  const Float32Inputs in(value, loc, attn, workspace);
  const TensorView g = as_float32(grad_output, workspace, "the float32 grad_output", true);
  const TensorView gv = as_float32(grad_value, workspace, "the float32 grad_value", false);
  const TensorView gl = as_float32(grad_loc, workspace, "the float32 location gradients", false);
  const TensorView ga = as_float32(grad_attn, workspace, "the float32 weight gradients", false);
  if (workspace.counting_only()) return;
  kernels.backward(float32_problem(p), options, in.value, in.loc, in.attn, g, gv, gl, ga);
  narrow(static_cast<const float*>(gv.data), grad_value, grad_value.numel());
  narrow(static_cast<const float*>(gl.data), grad_loc, grad_loc.numel());
  narrow(static_cast<const float*>(ga.data), grad_attn, grad_attn.numel());
}

}  // namespace cpu
}  // namespace msdacore
