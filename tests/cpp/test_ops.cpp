// C++ tests of the public op API against a plain double reference written from docs/conventions.md
// (not from detail/bilinear.hpp): forward and backward on several configurations, both
// align_corners, float32 and float64, strided inputs, NaN / infinite / outside
// locations, empty batches; the exact error messages of a few documented cases; bitwise
// determinism across thread counts; concurrent calls; the C API's thread-local error.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "msdacore/msdacore.hpp"
#include "msdacore/msdacore_c.h"

namespace {

using msdacore::DType;
using msdacore::TensorView;

// ---- the problem and its double reference ---------------------------------------------

struct Config {
  const char* name;
  int64_t N, Lq, M, D, P;
  std::vector<std::pair<int64_t, int64_t>> levels;  // (H_l, W_l)
  bool align_corners;
};

// Inputs in double, row-major (N, S, M, D), (N, Lq, M, L, P, 2), (N, Lq, M, L, P),
// grad_output (N, Lq, M*D).
struct Inputs {
  Config c;
  int64_t S = 0, L = 0;
  std::vector<int64_t> shapes, starts;  // (L, 2), (L,)
  std::vector<double> value, loc, attn, grad_out;
};

Inputs make_inputs(const Config& c, uint64_t seed) {
  Inputs in;
  in.c = c;
  in.L = static_cast<int64_t>(c.levels.size());
  for (const auto& hw : c.levels) {
    in.shapes.push_back(hw.first);
    in.shapes.push_back(hw.second);
    in.starts.push_back(in.S);
    in.S += hw.first * hw.second;
  }
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  // Mostly inside [0, 1], some outside it (skipped or partly padded samples).
  std::uniform_real_distribution<double> coord(-0.15, 1.15);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  in.value.resize(c.N * in.S * c.M * c.D);
  for (double& v : in.value) v = normal(rng);
  in.loc.resize(c.N * c.Lq * c.M * in.L * c.P * 2);
  for (double& v : in.loc) v = coord(rng);
  in.attn.resize(c.N * c.Lq * c.M * in.L * c.P);
  for (double& v : in.attn) v = unit(rng);
  in.grad_out.resize(c.N * c.Lq * c.M * c.D);
  for (double& v : in.grad_out) v = normal(rng);
  // Non-finite and far-away locations: skipped, never a crash or a NaN in the result.
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const double odd[] = {nan, inf, -inf, 1e30, -1e30, -7.0};
  for (size_t i = 0; i < in.loc.size(); i += 13) in.loc[i] = odd[(i / 13) % 6];
  return in;
}

struct Outputs {
  std::vector<double> out, grad_value, grad_loc, grad_attn;
};

Outputs reference(const Inputs& in) {
  const Config& c = in.c;
  const int64_t L = in.L, S = in.S;
  Outputs r;
  r.out.assign(c.N * c.Lq * c.M * c.D, 0.0);
  r.grad_value.assign(c.N * S * c.M * c.D, 0.0);
  r.grad_loc.assign(c.N * c.Lq * c.M * L * c.P * 2, 0.0);
  r.grad_attn.assign(c.N * c.Lq * c.M * L * c.P, 0.0);
  for (int64_t n = 0; n < c.N; ++n)
    for (int64_t q = 0; q < c.Lq; ++q)
      for (int64_t m = 0; m < c.M; ++m)
        for (int64_t l = 0; l < L; ++l)
          for (int64_t p = 0; p < c.P; ++p) {
            const int64_t H = in.shapes[2 * l], W = in.shapes[2 * l + 1];
            const int64_t sample = (((n * c.Lq + q) * c.M + m) * L + l) * c.P + p;
            const double x = in.loc[2 * sample], y = in.loc[2 * sample + 1];
            const double A = in.attn[sample];
            const double h = c.align_corners ? y * (H - 1) : y * H - 0.5;
            const double w = c.align_corners ? x * (W - 1) : x * W - 0.5;
            if (!(h > -1 && h < H && w > -1 && w < W)) continue;
            const int64_t h0 = static_cast<int64_t>(std::floor(h));
            const int64_t w0 = static_cast<int64_t>(std::floor(w));
            const double lh = h - h0, lw = w - w0, hh = 1 - lh, hw = 1 - lw;
            const int64_t ci[4] = {h0, h0, h0 + 1, h0 + 1};
            const int64_t cj[4] = {w0, w0 + 1, w0, w0 + 1};
            const double cw[4] = {hh * hw, hh * lw, lh * hw, lh * lw};
            const double dw[4] = {-hh, hh, -lh, lh};
            const double dh[4] = {-hw, -lw, hw, lw};
            double g_attn = 0, g_w = 0, g_h = 0;
            for (int64_t d = 0; d < c.D; ++d) {
              const double g = in.grad_out[(n * c.Lq + q) * c.M * c.D + m * c.D + d];
              double b = 0, bw = 0, bh = 0;
              for (int k = 0; k < 4; ++k) {
                if (ci[k] < 0 || ci[k] >= H || cj[k] < 0 || cj[k] >= W) continue;
                const int64_t token = in.starts[l] + ci[k] * W + cj[k];
                const int64_t at = ((n * S + token) * c.M + m) * c.D + d;
                b += cw[k] * in.value[at];
                bw += dw[k] * in.value[at];
                bh += dh[k] * in.value[at];
                r.grad_value[at] += A * cw[k] * g;
              }
              r.out[(n * c.Lq + q) * c.M * c.D + m * c.D + d] += A * b;
              g_attn += g * b;
              g_w += g * bw;
              g_h += g * bh;
            }
            const double sx = c.align_corners ? W - 1 : W, sy = c.align_corners ? H - 1 : H;
            r.grad_attn[sample] = g_attn;
            r.grad_loc[2 * sample] = A * sx * g_w;
            r.grad_loc[2 * sample + 1] = A * sy * g_h;
          }
  return r;
}

// max|a - b| / max|ref| (NaN anywhere counts as infinitely wrong).
template <typename T>
double relative_error(const std::vector<T>& got, const std::vector<double>& ref) {
  double scale = 0, err = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    scale = std::fmax(scale, std::fabs(ref[i]));
    const double diff = std::fabs(static_cast<double>(got[i]) - ref[i]);
    if (!(diff <= err)) err = std::isnan(diff) ? std::numeric_limits<double>::infinity() : diff;
  }
  return scale > 0 ? err / scale : err;
}

template <typename T>
constexpr DType dtype_of() {
  return sizeof(T) == 8 ? DType::Float64 : DType::Float32;
}

template <typename T>
std::vector<T> cast(const std::vector<double>& v) {
  return std::vector<T>(v.begin(), v.end());
}

// Runs forward and backward in T and compares with the reference. `strided`: value is
// stored (N, M, S, D) and viewed through strides, the locations sit in a padded buffer
// with the y coordinate first and a negative stride, and the index arrays are int32.
template <typename T>
void check_config(const Config& c, bool strided, uint64_t seed) {
  const Inputs in = make_inputs(c, seed);
  const Outputs ref = reference(in);
  const int64_t N = c.N, S = in.S, M = c.M, D = c.D, Lq = c.Lq, L = in.L, P = c.P;
  const double tol = sizeof(T) == 8 ? 1e-12 : 5e-5;
  const DType dt = dtype_of<T>();

  std::vector<T> value = cast<T>(in.value), loc = cast<T>(in.loc), attn = cast<T>(in.attn);
  std::vector<T> grad_out = cast<T>(in.grad_out);
  std::vector<int32_t> shapes32(in.shapes.begin(), in.shapes.end());
  std::vector<int32_t> starts32(in.starts.begin(), in.starts.end());
  std::vector<int64_t> shapes64 = in.shapes, starts64 = in.starts;

  TensorView v(value.data(), {N, S, M, D}, dt);
  TensorView l(loc.data(), {N, Lq, M, L, P, 2}, dt);
  TensorView ss(shapes64.data(), {L, 2}, DType::Int64);
  TensorView lsi(starts64.data(), {L}, DType::Int64);
  std::vector<T> value_nmsd, loc_padded;
  if (strided) {
    value_nmsd.resize(value.size());
    for (int64_t n = 0; n < N; ++n)
      for (int64_t s = 0; s < S; ++s)
        for (int64_t m = 0; m < M; ++m)
          for (int64_t d = 0; d < D; ++d)
            value_nmsd[((n * M + m) * S + s) * D + d] = value[((n * S + s) * M + m) * D + d];
    const int64_t vshape[4] = {N, S, M, D};
    const int64_t vstrides[4] = {M * S * D, D, S * D, 1};
    v = TensorView(value_nmsd.data(), 4, vshape, vstrides, dt);
    // Each (x, y) pair stored as (pad, y, x): element (.., 0) at offset 2, (.., 1) at 1.
    const int64_t samples = N * Lq * M * L * P;
    loc_padded.assign(samples * 3, static_cast<T>(-99));
    for (int64_t i = 0; i < samples; ++i) {
      loc_padded[3 * i + 2] = loc[2 * i];
      loc_padded[3 * i + 1] = loc[2 * i + 1];
    }
    const int64_t lshape[6] = {N, Lq, M, L, P, 2};
    const int64_t lstrides[6] = {Lq * M * L * P * 3, M * L * P * 3, L * P * 3, P * 3, 3, -1};
    l = TensorView(loc_padded.data() + 2, 6, lshape, lstrides, dt);
    ss = TensorView(shapes32.data(), {L, 2}, DType::Int32);
    lsi = TensorView(starts32.data(), {L}, DType::Int32);
  }
  TensorView a(attn.data(), {N, Lq, M, L, P}, dt);
  TensorView g(grad_out.data(), {N, Lq, M * D}, dt);

  // Outputs start as NaN: every element must be overwritten.
  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> out(N * Lq * M * D, nan), gv(N * S * M * D, nan), gl(N * Lq * M * L * P * 2, nan),
      ga(N * Lq * M * L * P, nan);
  msdacore::Options options;
  options.align_corners = c.align_corners;
  const std::vector<T> value_before = strided ? value_nmsd : value;
  msdacore::ms_deform_attn_forward(
      v, ss, lsi, l, a, TensorView(out.data(), {N, Lq, M * D}, dt), options);
  msdacore::ms_deform_attn_backward(
      v, ss, lsi, l, a, g, TensorView(gv.data(), {N, S, M, D}, dt),
      TensorView(gl.data(), {N, Lq, M, L, P, 2}, dt), TensorView(ga.data(), {N, Lq, M, L, P}, dt),
      options);
  const double e_out = relative_error(out, ref.out), e_gv = relative_error(gv, ref.grad_value),
               e_gl = relative_error(gl, ref.grad_loc), e_ga = relative_error(ga, ref.grad_attn);
  const bool ok = e_out <= tol && e_gv <= tol && e_gl <= tol && e_ga <= tol;
  std::printf(
      "%-14s %-7s %s%s: output %.2e  grad_value %.2e  grad_loc %.2e  grad_attn %.2e\n", c.name,
      sizeof(T) == 8 ? "float64" : "float32", c.align_corners ? "align_corners " : "",
      strided ? "strided" : "contiguous", e_out, e_gv, e_gl, e_ga);
  CHECK(ok);
  CHECK((strided ? value_nmsd : value) == value_before);  // inputs never modified
}

void test_against_reference() {
  const std::vector<Config> configs = {
      {"three-levels", 2, 17, 3, 5, 3, {{6, 7}, {3, 5}, {1, 1}}, false},
      {"three-levels", 2, 17, 3, 5, 3, {{6, 7}, {3, 5}, {1, 1}}, true},
      // D = 37: vector chunks plus a tail; Lq = 70 spans two query blocks.
      {"two-levels-d37", 1, 70, 2, 37, 4, {{8, 9}, {4, 4}}, false},
      {"two-levels-d37", 1, 70, 2, 37, 4, {{8, 9}, {4, 4}}, true},
      {"one-point", 3, 5, 1, 1, 1, {{2, 3}}, false},
      {"wide-d", 1, 9, 2, 64, 2, {{5, 4}, {2, 2}}, true},
  };
  uint64_t seed = 1;
  for (const Config& c : configs) {
    for (bool strided : {false, true}) {
      check_config<double>(c, strided, seed);
      check_config<float>(c, strided, seed);
      ++seed;
    }
  }
}

// N = 0 or Lq = 0: no error, nothing written.
void test_empty() {
  std::vector<double> value(6), loc(2), attn(1), out(1, 42.0), gv(6, 42.0);
  std::vector<int64_t> shapes = {2, 3}, starts = {0};
  TensorView ss(shapes.data(), {1, 2}, DType::Int64), lsi(starts.data(), {1}, DType::Int64);
  for (int64_t N : {0, 1}) {
    const int64_t Lq = N == 0 ? 3 : 0;
    TensorView v(value.data(), {N, 6, 1, 1}, DType::Float64);
    TensorView l(loc.data(), {N, Lq, 1, 1, 1, 2}, DType::Float64);
    TensorView a(attn.data(), {N, Lq, 1, 1, 1}, DType::Float64);
    TensorView o(out.data(), {N, Lq, 1}, DType::Float64);
    msdacore::ms_deform_attn_forward(v, ss, lsi, l, a, o);
    CHECK(out[0] == 42.0);
    msdacore::ms_deform_attn_backward(
        v, ss, lsi, l, a, o, TensorView(gv.data(), {N, 6, 1, 1}, DType::Float64),
        TensorView(loc.data(), {N, Lq, 1, 1, 1, 2}, DType::Float64),
        TensorView(attn.data(), {N, Lq, 1, 1, 1}, DType::Float64));
    // Lq = 0 with N = 1: grad_value is all zero (no query reads any token).
    CHECK(gv[0] == (N == 0 ? 42.0 : 0.0));
  }
}

// ---- error messages ---------------------------------------------------------------------

template <typename Exception, typename F>
std::string message_of(F&& f) {
  try {
    f();
  } catch (const Exception& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("unexpected exception type: ") + e.what();
  }
  return "no exception";
}

void test_error_messages() {
  // Two levels (6, 7) and (3, 5): S = 57.
  std::vector<float> value(2 * 57 * 2 * 3), loc(2 * 4 * 2 * 2 * 3 * 2), attn(2 * 4 * 2 * 2 * 3);
  std::vector<float> out(2 * 4 * 6);
  std::vector<double> loc64(loc.size());
  std::vector<int64_t> shapes = {6, 7, 3, 5}, starts = {0, 42}, bad_starts = {0, 40};
  std::vector<int64_t> bad_shapes = {6, 7, 3, 4};
  const DType f32 = DType::Float32;
  TensorView v(value.data(), {2, 57, 2, 3}, f32);
  TensorView ss(shapes.data(), {2, 2}, DType::Int64), lsi(starts.data(), {2}, DType::Int64);
  TensorView l(loc.data(), {2, 4, 2, 2, 3, 2}, f32), a(attn.data(), {2, 4, 2, 2, 3}, f32);
  TensorView o(out.data(), {2, 4, 6}, f32);

  CHECK_EQ_STR(
      message_of<msdacore::ShapeError>([&] {
        msdacore::ms_deform_attn_forward(
            v, ss, lsi, TensorView(loc.data(), {2, 4, 2, 2, 2}, f32), a, o);
      }),
      // P comes from attention_weights when sampling_locations has the wrong rank.
      "sampling_locations must have shape (N, Lq, M, L, P, 2) = (2, 4, 2, 2, 3, 2), "
      "got (2, 4, 2, 2, 2)");
  CHECK_EQ_STR(
      message_of<msdacore::ShapeError>([&] {
        msdacore::ms_deform_attn_forward(
            v, ss, lsi, l, TensorView(attn.data(), {2, 4, 2, 3, 3}, f32), o);
      }),
      "attention_weights must have shape (N, Lq, M, L, P) = (2, 4, 2, 2, 3), "
      "got (2, 4, 2, 3, 3)");
  CHECK_EQ_STR(
      message_of<msdacore::ShapeError>([&] {
        msdacore::ms_deform_attn_forward(v, ss, lsi, l, a, TensorView(out.data(), {2, 4, 3}, f32));
      }),
      "output must have shape (N, Lq, M*D) = (2, 4, 6), got (2, 4, 3)");
  CHECK_EQ_STR(
      message_of<msdacore::ShapeError>([&] {
        msdacore::ms_deform_attn_forward(
            v, ss, TensorView(bad_starts.data(), {2}, DType::Int64), l, a, o);
      }),
      "level_start_index must hold the prefix sums of H_l*W_l from spatial_shapes: "
      "expected [0, 42], got [0, 40]");
  CHECK_EQ_STR(
      message_of<msdacore::ShapeError>([&] {
        msdacore::ms_deform_attn_forward(
            v, TensorView(bad_shapes.data(), {2, 2}, DType::Int64), lsi, l, a, o);
      }),
      "spatial_shapes gives S = sum of H_l*W_l = 54 (level starts [0, 42]), but value "
      "has S = 57 tokens (value.shape[1])");
  CHECK_EQ_STR(
      message_of<msdacore::DTypeError>([&] {
        msdacore::ms_deform_attn_forward(
            v, ss, lsi, TensorView(loc64.data(), {2, 4, 2, 2, 3, 2}, DType::Float64), a, o);
      }),
      "value, sampling_locations and attention_weights must have the same dtype, got "
      "float32, float64 and float32");
  CHECK_EQ_STR(
      message_of<msdacore::DeviceError>([&] {
        TensorView l_gpu = l;
        l_gpu.device = {msdacore::DeviceType::CUDA, 0};
        msdacore::ms_deform_attn_forward(v, ss, lsi, l_gpu, a, o);
      }),
      "sampling_locations is on cuda:0 but value is on cpu: all inputs must be on the "
      "same device");
  // All on a device the build cannot run on: the message says how to get support.
  {
    TensorView v_gpu = v, l_gpu = l, a_gpu = a, o_gpu = o;
    v_gpu.device = l_gpu.device = a_gpu.device = o_gpu.device = {msdacore::DeviceType::CUDA, 1};
    const std::string m = message_of<msdacore::DeviceError>(
        [&] { msdacore::ms_deform_attn_forward(v_gpu, ss, lsi, l_gpu, a_gpu, o_gpu); });
    if (!msdacore::build_info().cuda_kernels) {
      CHECK(m.rfind("value is on cuda:1, but this build of msdacore", 0) == 0);
      CHECK(m.find("build msdacore with CUDA") != std::string::npos);
    } else {
      // A CUDA build: either no device is visible ("... but this build of msdacore sees no
      // CUDA device"), or a host pointer is refused as device memory.
      CHECK(
          m.rfind("value is on cuda:1, but ", 0) == 0 ||
          m.find("is said to be on cuda:1") != std::string::npos);
    }
  }
  CHECK_EQ_STR(
      message_of<msdacore::ShapeError>([&] {
        const int64_t shape[3] = {2, 4, 6}, strides[3] = {24, 1, 4};
        msdacore::ms_deform_attn_forward(
            v, ss, lsi, l, a, TensorView(out.data(), 3, shape, strides, f32));
      }),
      "output must be a contiguous (row-major) output buffer");
  CHECK_EQ_STR(
      message_of<msdacore::Error>([] { msdacore::set_num_threads(-2); }),
      "num_threads must be between 1 and 1024, got -2");
  // Every input error is a std::invalid_argument; device failures are std::runtime_error.
  CHECK(message_of<std::invalid_argument>([&] {
          msdacore::check_inputs(v, ss, TensorView(bad_starts.data(), {2}, DType::Int64), l, a);
        }).rfind("level_start_index", 0) == 0);
  // Nothing was written to the output by any failed call.
  for (float x : out) CHECK(x == 0.0f);
}

// ---- threads ------------------------------------------------------------------------------

template <typename T>
bool bitwise_equal(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

struct Run {
  std::vector<float> out, gv, gl, ga;
};

// The `small`-like configuration of docs/benchmarks.md (fewer queries), float32.
struct ThreadProblem {
  Config c{"threads", 2, 300, 4, 19, 4, {{32, 32}, {16, 16}, {8, 8}, {4, 4}}, false};
  Inputs in = make_inputs(c, 99);
  std::vector<float> value = cast<float>(in.value), loc = cast<float>(in.loc),
                     attn = cast<float>(in.attn), grad_out = cast<float>(in.grad_out);

  Run run() const {
    const int64_t N = c.N, S = in.S, M = c.M, D = c.D, Lq = c.Lq, L = in.L, P = c.P;
    const DType f32 = DType::Float32;
    Run r;
    r.out.assign(N * Lq * M * D, 0.0f);
    r.gv.assign(N * S * M * D, 0.0f);
    r.gl.assign(N * Lq * M * L * P * 2, 0.0f);
    r.ga.assign(N * Lq * M * L * P, 0.0f);
    auto* self = const_cast<ThreadProblem*>(this);  // views take void*; inputs are not written
    TensorView v(self->value.data(), {N, S, M, D}, f32);
    TensorView ss(self->in.shapes.data(), {L, 2}, DType::Int64);
    TensorView lsi(self->in.starts.data(), {L}, DType::Int64);
    TensorView l(self->loc.data(), {N, Lq, M, L, P, 2}, f32);
    TensorView a(self->attn.data(), {N, Lq, M, L, P}, f32);
    TensorView g(self->grad_out.data(), {N, Lq, M * D}, f32);
    msdacore::ms_deform_attn_forward(
        v, ss, lsi, l, a, TensorView(r.out.data(), {N, Lq, M * D}, f32));
    msdacore::ms_deform_attn_backward(
        v, ss, lsi, l, a, g, TensorView(r.gv.data(), {N, S, M, D}, f32),
        TensorView(r.gl.data(), {N, Lq, M, L, P, 2}, f32),
        TensorView(r.ga.data(), {N, Lq, M, L, P}, f32));
    return r;
  }
};

bool same(const Run& a, const Run& b) {
  return bitwise_equal(a.out, b.out) && bitwise_equal(a.gv, b.gv) && bitwise_equal(a.gl, b.gl) &&
         bitwise_equal(a.ga, b.ga);
}

void test_thread_determinism() {
  const ThreadProblem problem;
  const int saved = msdacore::get_num_threads();
  msdacore::set_num_threads(1);
  CHECK(msdacore::get_num_threads() == 1 || !msdacore::build_info().openmp);
  const Run one = problem.run();
  for (int threads : {2, 3}) {
    msdacore::set_num_threads(threads);
    CHECK(same(problem.run(), one));
  }
  CHECK(same(problem.run(), one));  // and from run to run
  msdacore::set_num_threads(saved);
  std::printf(
      "threads: bitwise identical for 1, 2 and 3 threads (openmp %d)\n",
      msdacore::build_info().openmp ? 1 : 0);

  // Calls from several application threads at once.
  Run results[3];
  std::vector<std::thread> workers;
  for (Run& r : results) workers.emplace_back([&problem, &r] { r = problem.run(); });
  for (std::thread& t : workers) t.join();
  for (const Run& r : results) CHECK(same(r, one));
}

// ---- the C API's last error is per thread -------------------------------------------------

void test_c_api_thread_local_error() {
  CHECK(msdacore_set_num_threads(0) == MSDACORE_ERROR_INVALID_ARGUMENT);
  CHECK_EQ_STR(msdacore_last_error(), "num_threads must be between 1 and 1024, got 0");
  std::string other_before, other_after;
  std::thread t([&] {
    other_before = msdacore_last_error();
    msdacore_set_num_threads(-5);
    other_after = msdacore_last_error();
  });
  t.join();
  CHECK_EQ_STR(other_before, "");
  CHECK_EQ_STR(other_after, "num_threads must be between 1 and 1024, got -5");
  CHECK_EQ_STR(
      msdacore_last_error(),
      "num_threads must be between 1 and 1024, got 0");  // unchanged here
  CHECK(msdacore_set_num_threads(msdacore_get_num_threads()) == MSDACORE_OK);
  CHECK_EQ_STR(msdacore_last_error(), "");
}

// Workspace sizes and the caller's workspace on the CPU; the default allocator.
void test_workspace_and_memory() {
  const int64_t N = 1, Lq = 3, M = 2, D = 4, L = 1, P = 2, H = 3, W = 4, S = H * W;
  std::vector<float> value(N * S * M * D, 0.5f), loc(N * Lq * M * L * P * 2, 0.4f),
      attn(N * Lq * M * L * P, 1.0f), out(N * Lq * M * D), out2(N * Lq * M * D);
  int64_t shapes[2] = {H, W}, starts[1] = {0};
  const TensorView v(value.data(), {N, S, M, D}, DType::Float32), ss(shapes, {L, 2}, DType::Int64),
      lsi(starts, {L}, DType::Int64), l(loc.data(), {N, Lq, M, L, P, 2}, DType::Float32),
      a(attn.data(), {N, Lq, M, L, P}, DType::Float32);
  msdacore::Options options;
  CHECK(msdacore::Call(v, ss, lsi, l, a, options).forward_workspace_size() == 0);
  options.deterministic = true;
  CHECK(msdacore::Call(v, ss, lsi, l, a, options).backward_workspace_size() == 0);
  // The size query validates like the op.
  CHECK(message_of<msdacore::ShapeError>([&] {
          msdacore::Call(v, ss, lsi, TensorView(loc.data(), {N, Lq, M, L, P}, DType::Float32), a)
              .forward_workspace_size();
        }).find("sampling_locations must have shape") != std::string::npos);

  // A caller's workspace (aligned) changes nothing; a misaligned one is refused.
  msdacore::Buffer scratch(msdacore::Device{}, 1024);
  CHECK(scratch.data() != nullptr && reinterpret_cast<uintptr_t>(scratch.data()) % 64 == 0);
  msdacore::ms_deform_attn_forward(
      v, ss, lsi, l, a, TensorView(out.data(), {N, Lq, M * D}, DType::Float32));
  msdacore::Options with_workspace;
  with_workspace.workspace_bytes = 1024;
  std::vector<char> aligned(4096);
  void* p256 =
      reinterpret_cast<void*>((reinterpret_cast<uintptr_t>(aligned.data()) + 255) / 256 * 256);
  with_workspace.workspace = p256;
  msdacore::ms_deform_attn_forward(
      v, ss, lsi, l, a, TensorView(out2.data(), {N, Lq, M * D}, DType::Float32), with_workspace);
  CHECK(out == out2);
  // A float32 call needs none: a misaligned workspace is not even looked at.
  with_workspace.workspace = static_cast<char*>(p256) + 8;
  msdacore::ms_deform_attn_forward(
      v, ss, lsi, l, a, TensorView(out2.data(), {N, Lq, M * D}, DType::Float32), with_workspace);
  CHECK(out == out2);
  // A float16 call needs float32 copies: its workspace must be aligned and large enough.
  std::vector<uint16_t> value16(value.size(), 0x3c00), out16(out.size());  // 1.0 in float16
  const TensorView v16(value16.data(), {N, S, M, D}, DType::Float16),
      l32 = l, a32 = a, o16(out16.data(), {N, Lq, M * D}, DType::Float16);
  const int64_t need = msdacore::Call(v16, ss, lsi, l32, a32).forward_workspace_size();
  CHECK(need > 0 && need <= 1024);
  CHECK(message_of<msdacore::Error>([&] {
          msdacore::ms_deform_attn_forward(v16, ss, lsi, l32, a32, o16, with_workspace);
        }).find("256-byte aligned") != std::string::npos);
  with_workspace.workspace = p256;
  with_workspace.workspace_bytes = need - 1;
  CHECK(message_of<msdacore::Error>([&] {
          msdacore::ms_deform_attn_forward(v16, ss, lsi, l32, a32, o16, with_workspace);
        }).find("bytes given, but this call needs") != std::string::npos);
  with_workspace.workspace_bytes = need;
  msdacore::ms_deform_attn_forward(v16, ss, lsi, l32, a32, o16, with_workspace);
  CHECK(out16[0] != 0);  // the caller's workspace was used and the output written

  // The default allocator: host memory, moved and released once; devices of this build.
  msdacore::Buffer empty(msdacore::Device{}, 0);
  CHECK(empty.data() != nullptr);
  msdacore::Buffer moved = std::move(empty);
  CHECK(moved.data() != nullptr && empty.data() == nullptr);
  CHECK(message_of<msdacore::Error>([] {
          msdacore::allocate(msdacore::Device{}, -1);
        }).find("bytes must be >= 0") != std::string::npos);
  if (!msdacore::build_info().cuda_compiled) {
    CHECK(msdacore::cuda_device_count() == 0);
    CHECK(message_of<msdacore::DeviceError>([] {
            msdacore::allocate(msdacore::Device{msdacore::DeviceType::CUDA, 0}, 16);
          }).find("not supported by this build") != std::string::npos);
    CHECK(message_of<msdacore::DeviceError>([] {
            msdacore::cuda_synchronize(0, nullptr);
          }).find("without CUDA") != std::string::npos);
  }
}

// Outputs sharing memory with inputs or each other are refused; sizes at the limits.
void test_overlap_and_limits() {
  const int64_t N = 1, Lq = 2, M = 1, D = 2, L = 1, P = 1, H = 2, W = 2, S = H * W;
  std::vector<float> value(N * S * M * D, 1.0f), loc(N * Lq * M * L * P * 2, 0.5f),
      attn(N * Lq * M * L * P, 1.0f), grad(N * Lq * M * D, 1.0f), out(64);
  int64_t shapes[2] = {H, W}, starts[1] = {0};
  const TensorView v(value.data(), {N, S, M, D}, DType::Float32), ss(shapes, {L, 2}, DType::Int64),
      lsi(starts, {L}, DType::Int64), l(loc.data(), {N, Lq, M, L, P, 2}, DType::Float32),
      a(attn.data(), {N, Lq, M, L, P}, DType::Float32),
      g(grad.data(), {N, Lq, M * D}, DType::Float32);
  // output written over the attention weights' memory
  CHECK(message_of<msdacore::Error>([&] {
          msdacore::ms_deform_attn_forward(
              v, ss, lsi, l, a, TensorView(value.data(), {N, Lq, M * D}, DType::Float32));
        }).find("output overlaps value in memory") != std::string::npos);
  // two gradients in one buffer
  CHECK(message_of<msdacore::Error>([&] {
          msdacore::ms_deform_attn_backward(
              v, ss, lsi, l, a, g, TensorView(out.data(), {N, S, M, D}, DType::Float32),
              TensorView(out.data() + 4, {N, Lq, M, L, P, 2}, DType::Float32),
              TensorView(out.data() + 40, {N, Lq, M, L, P}, DType::Float32));
        }).find("grad_sampling_locations overlaps grad_value") != std::string::npos);
  // adjacent, not overlapping: accepted
  msdacore::ms_deform_attn_backward(
      v, ss, lsi, l, a, g, TensorView(out.data(), {N, S, M, D}, DType::Float32),
      TensorView(out.data() + 8, {N, Lq, M, L, P, 2}, DType::Float32),
      TensorView(out.data() + 12, {N, Lq, M, L, P}, DType::Float32));

  // A negative N (a broken producer) is blamed on value.
  int64_t bad_shape[4] = {-1, S, M, D}, bad_strides[4] = {S * M * D, M * D, D, 1};
  CHECK(message_of<msdacore::ShapeError>([&] {
          msdacore::check_inputs(
              TensorView(value.data(), 4, bad_shape, bad_strides, DType::Float32), ss, lsi, l, a);
        }).find("value must have shape (N, S, M, D) with N >= 0") != std::string::npos);

  // A level of exactly 2^63 - 1 tokens fits (value broadcast over them with stride 0).
  const int64_t big = std::numeric_limits<int64_t>::max();
  int64_t huge_shapes[2] = {big, 1}, huge_v_shape[4] = {1, big, 1, 1},
          huge_v_strides[4] = {0, 0, 0, 1};
  const TensorView huge_ss(huge_shapes, {1, 2}, DType::Int64),
      huge_v(value.data(), 4, huge_v_shape, huge_v_strides, DType::Float32);
  const msdacore::Problem hp = msdacore::check_inputs(huge_v, huge_ss, lsi, l, a);
  CHECK(hp.S == big);

  // The CPU is one device whatever its index.
  std::vector<float> out2(N * Lq * M * D);
  TensorView o(out2.data(), {N, Lq, M * D}, DType::Float32);
  o.device.index = 3;
  msdacore::ms_deform_attn_forward(v, ss, lsi, l, a, o);
  CHECK(out2[0] == 1.0f);
}

}  // namespace

int main() {
  test_against_reference();
  test_empty();
  test_error_messages();
  test_thread_determinism();
  test_c_api_thread_local_error();
  test_workspace_and_memory();
  test_overlap_and_limits();
  return report("all op checks passed");
}
