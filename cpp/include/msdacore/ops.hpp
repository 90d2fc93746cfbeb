// msdacore/ops.hpp: multi-scale deformable attention, forward and backward.
//
// Shapes (docs/conventions.md): N batch, S = sum_l H_l*W_l value tokens, M heads, D channels per
// head, Lq queries, L levels, P points per level (the uniform layout below; with
// Options::points_per_level, the flattened layout: sampling_locations (N, Lq, M, P_total, 2)
// and attention_weights (N, Lq, M, P_total), level l's P_l points at offsets
// sum_{j<l} P_j, P_total = sum_l P_l).
//   value               (N, S, M, D)          float32 | float64 | float16 | bfloat16 (T)
//   spatial_shapes      (L, 2) rows (H_l, W_l) int32 | int64, on the host
//   level_start_index   (L,) prefix sums       int32 | int64, on the host
//   sampling_locations  (N, Lq, M, L, P, 2)   T, last axis (x, y) normalized to [0, 1]
//                                             (or float32 with a half T: mixed precision)
//   attention_weights   (N, Lq, M, L, P)      T (or float32 with a half T)
//   output              (N, Lq, M*D)          T, contiguous, written by the call
// Inputs may be strided (element strides, zero or negative allowed); outputs are
// caller-provided, contiguous, and fully overwritten. Inputs are never modified.
// Every function validates its arguments first and throws msdacore::Error subclasses
// (errors.hpp) with messages naming the argument, the expected and the received shape.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "msdacore/tensor.hpp"

namespace msdacore {

// How a sample reads its level (docs/conventions.md, "Sampling modes").
enum class SamplingMode : int32_t {
  Bilinear,  // bilinear interpolation, zero padding (the default)
  Discrete,  // the nearest pixel, clamped to the border (RT-DETRv2's deployment variant):
             // i = clamp(floor(y*H + 0.5), 0, H-1), j likewise; zero location gradients
};

// The one spelling of each mode, in every front end and runtime attribute: "bilinear",
// "discrete" (the C API's MSDACORE_MODE_* and the JAX handlers' attribute are the enum's
// values).
const char* sampling_mode_name(SamplingMode mode);
// The mode named `name`; Error (`mode must be "bilinear" or "discrete", got "..."`) for any
// other name.
SamplingMode sampling_mode_from_name(const std::string& name);

// How one call runs. Every backend takes the same Options; fields a backend has no use
// for are ignored there (the CPU backend ignores stream and deterministic, and uses a
// workspace only for half types). Adding an option: docs/architecture.md.
struct Options {
  bool align_corners = false;  // False: h = y*H - 0.5 (Deformable DETR); True: h = y*(H-1)
                               // (bilinear mode only: an error with Discrete)
  SamplingMode mode = SamplingMode::Bilinear;
  // Points per level, one count >= 1 per level: the flattened layout. Empty: the uniform
  // layout (N, Lq, M, L, P, 2). Both give the same numbers for the same data.
  std::vector<int64_t> points_per_level;
  bool deterministic = false;  // CUDA backward: bitwise-reproducible grad_value (sorted gather
                               // instead of atomics); the CPU backend is always deterministic
  void* stream = nullptr;      // device stream (cudaStream_t) for device backends; unused on CPU
  // Scratch memory for the call, owned by the caller: at least
  // ms_deform_attn_{forward,backward}_workspace_size() bytes on the problem's device,
  // usable by work enqueued on `stream`, 256-byte aligned. Null: the call takes what it
  // needs from msdacore's default allocator (memory.hpp) and releases it on `stream`.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Checks the options on their own (a known mode; align_corners only in bilinear mode;
// points per level >= 1, adding up within int64): every front end checks its options
// with it when it makes them, and every call again. Throws Error / ShapeError.
void check_options(const Options& options);

// The sizes of one call, read from validated inputs.
struct Problem {
  int64_t N = 0, S = 0, M = 0, D = 0, Lq = 0, L = 0;
  int64_t P = 0;           // points per level of the uniform layout (0 in the flattened one)
  int64_t P_total = 0;     // points per (query, head): L*P, or the sum of points_per_level
  bool flattened = false;  // sampling_locations (N, Lq, M, P_total, 2)
  SamplingMode mode = SamplingMode::Bilinear;
  DType dtype = DType::Float32;       // float dtype of value (and of output, grad_output,
                                      // grad_value)
  DType loc_dtype = DType::Float32;   // of sampling_locations: dtype, or float32 with a half
  DType attn_dtype = DType::Float32;  // value (mixed precision); likewise attention_weights
  Device device{};                    // where value and the float inputs live
  std::vector<int64_t> heights;       // H_l, l < L
  std::vector<int64_t> widths;        // W_l
  std::vector<int64_t> level_starts;  // level_start_index[l]
  std::vector<int64_t> points;        // P_l (P for every level in the uniform layout)
  std::vector<int64_t> point_starts;  // index of level l's first point: sum_{j<l} P_j
};

// Validates the five inputs against each other (in the layout and mode `options` give)
// and returns their sizes. Throws ShapeError / DTypeError / DeviceError / Error.
Problem check_inputs(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const Options& options = {});

// A shape of at most 6 dimensions, held without heap memory (dims[0 .. ndim-1]).
struct Shape {
  int32_t ndim = 0;
  int64_t dims[6] = {};
  const int64_t* begin() const { return dims; }
  const int64_t* end() const { return dims + ndim; }
};

// The shapes a call returns (row-major; gradients in the layout of the inputs).
struct CallShapes {
  Shape output;                   // (N, Lq, M*D)
  Shape grad_value;               // (N, S, M, D)
  Shape grad_sampling_locations;  // (N, Lq, M, L, P, 2) | (N, Lq, M, P_total, 2)
  Shape grad_attention_weights;   // (N, Lq, M, L, P) | (N, Lq, M, P_total)
};
CallShapes call_shapes(const Problem& p);

// The check that needs no data, for tracers (torch fake tensors, JAX at trace time, ONNX
// and OpenVINO shape inference): validates the call from its arguments' shapes, dtypes and
// devices with the same checks and messages as check_inputs, but never reads the float
// arrays (their data may be null). The index arrays' values are checked too (against each
// other and S) when both have data; with null data they are unknown and left to the call.
// grad_output, when given, is checked as the backward checks it. Returns the problem; its
// heights, widths and level_starts are empty when the index values were unknown.
Problem check_shapes(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const Options& options = {}, const TensorView* grad_output = nullptr);

// One call validated once: the constructor checks the five inputs (check_inputs); the
// workspace queries, forward() and backward() then use that problem and check only the
// arguments they add (outputs, grad_output). The views and options are copied; the
// memory they point to must outlive the calls. Options::stream and the workspace may be
// set between construction and the run (options()).
class Call {
 public:
  Call(
      const TensorView& value, const TensorView& spatial_shapes,
      const TensorView& level_start_index, const TensorView& sampling_locations,
      const TensorView& attention_weights, const Options& options = {});

  const Problem& problem() const { return problem_; }
  Options& options() { return options_; }
  // Bytes of scratch memory the forward / backward needs (Options::workspace). On the CPU
  // 0, except for half types (their float32 copies); on CUDA, the level table for many
  // levels, the float32 grad_value accumulator of half types, float32 copies for mixed
  // precision and the buffers of the deterministic backward.
  int64_t forward_workspace_size() const;
  int64_t backward_workspace_size() const;
  void forward(const TensorView& output) const;
  void backward(
      const TensorView& grad_output, const TensorView& grad_value,
      const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights) const;

 private:
  TensorView value_, spatial_shapes_, level_start_index_, sampling_locations_, attention_weights_;
  Options options_;
  Problem problem_;
};

// output (N, Lq, M*D) = sum_l sum_p A * bilinear(value_l, location).
void ms_deform_attn_forward(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& output, const Options& options = {});

// Given grad_output (N, Lq, M*D) (T, any strides), writes
//   grad_value               (N, S, M, D)
//   grad_sampling_locations  (N, Lq, M, L, P, 2)
//   grad_attention_weights   (N, Lq, M, L, P)
// all T and contiguous. On the CPU the result is bitwise identical for any thread count.
void ms_deform_attn_backward(
    const TensorView& value, const TensorView& spatial_shapes, const TensorView& level_start_index,
    const TensorView& sampling_locations, const TensorView& attention_weights,
    const TensorView& grad_output, const TensorView& grad_value,
    const TensorView& grad_sampling_locations, const TensorView& grad_attention_weights,
    const Options& options = {});

}  // namespace msdacore
