// C++ unit tests of the shared bilinear math (msdacore/detail/bilinear.hpp) and of the
// public op API on small known cases. No Python; run by ctest.
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "check.hpp"
#include "msdacore/detail/bilinear.hpp"
#include "msdacore/msdacore.hpp"

namespace {

using msdacore::detail::Corners;
using msdacore::detail::make_corners;
using msdacore::detail::pixel_coord;
using msdacore::detail::sample_in_range;

void test_pixel_coords() {
  const auto plain = msdacore::detail::make_level<double>(10, 4, false);
  CHECK(pixel_coord(0.0, plain.scale_y, plain.shift) == -0.5);
  CHECK(pixel_coord(1.0, plain.scale_y, plain.shift) == 9.5);
  CHECK(pixel_coord(0.25, plain.scale_x, plain.shift) == 0.5);
  CHECK(plain.scale_x == 4.0 && plain.scale_y == 10.0);
  const auto aligned = msdacore::detail::make_level<double>(10, 7, true);
  CHECK(pixel_coord(0.0, aligned.scale_y, aligned.shift) == 0.0);
  CHECK(pixel_coord(1.0, aligned.scale_y, aligned.shift) == 9.0);
  CHECK(aligned.scale_x == 6.0 && aligned.scale_y == 9.0);
  // -0.0 stays -0.0 and NaN stays NaN with align_corners (the shift is an exact 0).
  CHECK(std::signbit(pixel_coord(-0.0, aligned.scale_x, aligned.shift)));
}

void test_skip_rule() {
  const double inf = std::numeric_limits<double>::infinity();
  const double nan = std::numeric_limits<double>::quiet_NaN();
  CHECK(sample_in_range(0.0, 0.0, 3.0, 4.0));
  CHECK(sample_in_range(-0.999, -0.999, 3.0, 4.0));
  CHECK(!sample_in_range(-1.0, 0.0, 3.0, 4.0));
  CHECK(!sample_in_range(0.0, -1.0, 3.0, 4.0));
  CHECK(sample_in_range(2.999, 3.999, 3.0, 4.0));
  CHECK(!sample_in_range(3.0, 0.0, 3.0, 4.0));
  CHECK(!sample_in_range(0.0, 4.0, 3.0, 4.0));
  CHECK(!sample_in_range(nan, 0.0, 3.0, 4.0));
  CHECK(!sample_in_range(0.0, nan, 3.0, 4.0));
  CHECK(!sample_in_range(inf, 0.0, 3.0, 4.0));
  CHECK(!sample_in_range(0.0, -inf, 3.0, 4.0));
  CHECK(sample_in_range(0.5f, 0.5f, 1.0f, 1.0f));
  // sample_corners applies the same rule to normalized locations.
  Corners<double> c;
  const auto lv = msdacore::detail::make_level<double>(3, 4, false);
  CHECK(msdacore::detail::sample_corners(lv, 0.5, 0.5, &c));
  CHECK(!msdacore::detail::sample_corners(lv, nan, 0.5, &c));
  CHECK(!msdacore::detail::sample_corners(lv, 0.5, (-1.0 + 0.5) / 3.0, &c));  // h = -1 exactly
}

void test_corners() {
  Corners<double> c;
  // Inside: weights sum to one, all corners inside, offsets row-major.
  make_corners(1.25, 2.5, 4, 5, &c);
  CHECK_NEAR(c.weight[0] + c.weight[1] + c.weight[2] + c.weight[3], 1.0, 1e-15);
  CHECK_NEAR(c.weight[0], 0.75 * 0.5, 1e-15);
  CHECK_NEAR(c.weight[3], 0.25 * 0.5, 1e-15);
  CHECK(c.inside[0] && c.inside[1] && c.inside[2] && c.inside[3]);
  CHECK(c.offset[0] == 1 * 5 + 2 && c.offset[1] == 1 * 5 + 3);
  CHECK(c.offset[2] == 2 * 5 + 2 && c.offset[3] == 2 * 5 + 3);
  // Integer coordinates: all weight on the top-left corner.
  make_corners(2.0, 3.0, 4, 5, &c);
  CHECK(c.weight[0] == 1.0 && c.weight[1] == 0.0 && c.weight[2] == 0.0 && c.weight[3] == 0.0);
  // Between -1 and 0: floor is -1, the top row and left column are zero padding.
  make_corners(-0.25, -0.75, 4, 5, &c);
  CHECK(c.h0 == -1 && c.w0 == -1);
  CHECK(!c.inside[0] && !c.inside[1] && !c.inside[2] && c.inside[3]);
  CHECK(c.offset[3] == 0);
  CHECK_NEAR(c.weight[3], 0.75 * 0.25, 1e-15);
  // Last row/column: the bottom/right corners fall outside.
  make_corners(3.5, 4.5, 4, 5, &c);
  CHECK(c.h0 == 3 && c.w0 == 4);
  CHECK(c.inside[0] && !c.inside[1] && !c.inside[2] && !c.inside[3]);
  CHECK(c.offset[0] == 3 * 5 + 4);
  // A 1x1 level at h = 0.25, w = -0.5: cell (0, -1); only corner 1, pixel (0, 0), is real.
  Corners<float> c1;
  make_corners(0.25f, -0.5f, 1, 1, &c1);
  CHECK(!c1.inside[0] && c1.inside[1] && !c1.inside[2] && !c1.inside[3]);
  CHECK(c1.offset[1] == 0);
  CHECK(c1.weight[1] == 0.75f * 0.5f);
}

// B(h, w) over a level with given corner values, zero padded.
double bilinear(const std::vector<double>& level, int64_t H, int64_t W, double h, double w) {
  if (!sample_in_range(h, w, static_cast<double>(H), static_cast<double>(W))) return 0.0;
  Corners<double> c;
  make_corners(h, w, H, W, &c);
  double b = 0;
  for (int k = 0; k < 4; ++k) b += c.inside[k] ? c.weight[k] * level[c.offset[k]] : 0.0;
  return b;
}

void test_derivatives_match_finite_differences() {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> coord(-0.9, 4.9), val(-1.0, 1.0);
  const int64_t H = 5, W = 6;
  std::vector<double> level(H * W);
  for (double& v : level) v = val(rng);
  int checked = 0;
  for (int trial = 0; trial < 500; ++trial) {
    const double h = coord(rng), w = coord(rng) * 1.1;
    if (!sample_in_range(h, w, static_cast<double>(H), static_cast<double>(W))) continue;
    const double eps = 1e-6;
    // Stay away from cell edges, where the derivative is one-sided.
    if (std::fabs(h - std::round(h)) < 1e-3 || std::fabs(w - std::round(w)) < 1e-3) continue;
    Corners<double> c;
    make_corners(h, w, H, W, &c);
    double dots[4];
    for (int k = 0; k < 4; ++k) dots[k] = c.inside[k] ? level[c.offset[k]] : 0.0;
    double ga, gx, gy;
    const double A = 0.7, sx = 3.0, sy = 2.0;
    msdacore::detail::sample_gradients(c, dots, A, sx, sy, &ga, &gx, &gy);
    CHECK_NEAR(ga, bilinear(level, H, W, h, w), 1e-14);
    const double db_dw =
        (bilinear(level, H, W, h, w + eps) - bilinear(level, H, W, h, w - eps)) / (2 * eps);
    const double db_dh =
        (bilinear(level, H, W, h + eps, w) - bilinear(level, H, W, h - eps, w)) / (2 * eps);
    CHECK_NEAR(gx, A * sx * db_dw, 1e-7);
    CHECK_NEAR(gy, A * sy * db_dh, 1e-7);
    ++checked;
  }
  CHECK(checked > 200);
}

// A 2x3 single-level problem through the public API.
void test_op_known_values() {
  using msdacore::DType;
  using msdacore::TensorView;
  // value[0, s, 0, 0] = s (tokens of a 2x3 level), one head, one channel.
  std::vector<double> value = {0, 1, 2, 3, 4, 5};
  std::vector<int64_t> shapes = {2, 3}, starts = {0};
  // Three queries, one point: centre of pixel (1, 2); the middle of the four top-left
  // pixels; outside the level.
  std::vector<double> loc = {2.5 / 3, 1.5 / 2, 1.0 / 3, 1.0 / 2, 1.5, 0.5};
  std::vector<double> attn = {2.0, 1.0, 5.0};
  std::vector<double> out(3, -1.0);
  TensorView v(value.data(), {1, 6, 1, 1}, DType::Float64);
  TensorView ss(shapes.data(), {1, 2}, DType::Int64);
  TensorView lsi(starts.data(), {1}, DType::Int64);
  TensorView l(loc.data(), {1, 3, 1, 1, 1, 2}, DType::Float64);
  TensorView a(attn.data(), {1, 3, 1, 1, 1}, DType::Float64);
  TensorView o(out.data(), {1, 3, 1}, DType::Float64);
  msdacore::ms_deform_attn_forward(v, ss, lsi, l, a, o);
  CHECK_NEAR(out[0], 2.0 * 5.0, 1e-12);              // pixel (1, 2) holds 5
  CHECK_NEAR(out[1], (0 + 1 + 3 + 4) / 4.0, 1e-12);  // average of the 2x2 block
  CHECK(out[2] == 0.0);                              // skipped

  // Backward of the first query: grad_value lands on token 5 only.
  std::vector<double> grad_out = {1.0, 0.0, 0.0};
  std::vector<double> grad_value(6, -1.0), grad_loc(6, -1.0), grad_attn(3, -1.0);
  TensorView g(grad_out.data(), {1, 3, 1}, DType::Float64);
  TensorView gv(grad_value.data(), {1, 6, 1, 1}, DType::Float64);
  TensorView gl(grad_loc.data(), {1, 3, 1, 1, 1, 2}, DType::Float64);
  TensorView ga(grad_attn.data(), {1, 3, 1, 1, 1}, DType::Float64);
  msdacore::ms_deform_attn_backward(v, ss, lsi, l, a, g, gv, gl, ga);
  CHECK_NEAR(grad_value[5], 2.0, 1e-12);
  CHECK(grad_value[0] == 0.0 && grad_value[4] == 0.0);
  CHECK_NEAR(grad_attn[0], 5.0, 1e-12);
  CHECK(grad_attn[1] == 0.0 && grad_attn[2] == 0.0);  // grad_output is zero there
  // At pixel (1, 2) the cell is the last column: right corners are padding, so
  // dB/dw = -v(1,2) = -5 and dB/dh = -v(1,2) = -5 (one-sided).
  CHECK_NEAR(grad_loc[0], 2.0 * 3.0 * -5.0, 1e-12);
  CHECK_NEAR(grad_loc[1], 2.0 * 2.0 * -5.0, 1e-12);
}

void test_errors() {
  using msdacore::DType;
  using msdacore::TensorView;
  std::vector<float> value(6), loc(12), attn(6), out(3);
  std::vector<int32_t> shapes = {2, 3}, starts = {0};
  TensorView v(value.data(), {1, 6, 1, 1}, DType::Float32);
  TensorView ss(shapes.data(), {1, 2}, DType::Int32);
  TensorView lsi(starts.data(), {1}, DType::Int32);
  TensorView l(loc.data(), {1, 3, 1, 1, 2}, DType::Float32);  // rank 5: wrong
  TensorView a(attn.data(), {1, 3, 1, 1, 2}, DType::Float32);
  TensorView o(out.data(), {1, 3, 1}, DType::Float32);
  std::string message;
  try {
    msdacore::ms_deform_attn_forward(v, ss, lsi, l, a, o);
  } catch (const std::invalid_argument& e) {  // ShapeError derives from it
    message = e.what();
  }
  CHECK(
      message ==
      "sampling_locations must have shape (N, Lq, M, L, P, 2) = (1, 3, 1, 1, 2, 2), "
      "got (1, 3, 1, 1, 2)");
  bool dtype_error = false;
  TensorView v64(value.data(), {1, 3, 1, 1}, DType::Float64);
  try {
    msdacore::check_inputs(v64, ss, lsi, l, a);
  } catch (const msdacore::DTypeError&) {
    dtype_error = true;
  }
  CHECK(dtype_error);
  bool thread_error = false;
  try {
    msdacore::set_num_threads(0);
  } catch (const msdacore::Error&) {
    thread_error = true;
  }
  CHECK(thread_error);
}

}  // namespace

int main() {
  test_pixel_coords();
  test_skip_rule();
  test_corners();
  test_derivatives_match_finite_differences();
  test_op_known_values();
  test_errors();
  return report("all bilinear and op checks passed");
}
