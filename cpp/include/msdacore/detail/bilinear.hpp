// msdacore/detail/bilinear.hpp: the bilinear sample of docs/conventions.md, its corner weights and
// its derivatives, in one place for every backend. Host+device inline functions: the
// CPU kernels and the CUDA kernels include this header and compute the same math.
//
// A sample at normalized (x, y) on a level of H x W pixels:
//   pixel coordinates  h = y*H - 0.5, w = x*W - 0.5   (align_corners=False)
//                      h = y*(H-1),   w = x*(W-1)     (align_corners=True)
//   skipped unless     -1 < h < H and -1 < w < W      (NaN / Inf are skipped too)
//   corners k = 0..3   (h0, w0), (h0, w0+1), (h0+1, w0), (h0+1, w0+1), h0 = floor(h)
//   B        = sum_k weight[k] * v_k        (v_k = 0 for a corner outside the level)
//   dB/dw    = sum_k d_dw[k]   * v_k,  dB/dh = sum_k d_dh[k] * v_k
// Discrete mode (discrete_corners) reads one pixel, i = clamp(floor(y*H + 0.5), 0, H-1),
// j = clamp(floor(x*W + 0.5), 0, W-1), as corner 0 with weight 1 and no derivative.
#pragma once

#include <cstdint>

// On the host the functions have internal linkage (static): the CPU kernels are compiled
// once per instruction set (generic, AVX2), and each build must keep its own copy.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define MSDACORE_HD __host__ __device__ __forceinline__
#else
#define MSDACORE_HD static inline
#endif

namespace msdacore {
namespace detail {

// The geometry of one level, computed once per level and call.
template <typename T>
struct Level {
  int64_t H, W;        // size in pixels
  T height, width;     // H and W as T: the upper skip bounds
  T scale_x, scale_y;  // sx = W, sy = H (align_corners: W - 1, H - 1)
  T shift;             // 0.5 (align_corners: 0)
};

template <typename T>
MSDACORE_HD Level<T> make_level(int64_t H, int64_t W, bool align_corners) {
  Level<T> lv;
  lv.H = H;
  lv.W = W;
  lv.height = static_cast<T>(H);
  lv.width = static_cast<T>(W);
  lv.scale_x = static_cast<T>(align_corners ? W - 1 : W);
  lv.scale_y = static_cast<T>(align_corners ? H - 1 : H);
  lv.shift = static_cast<T>(align_corners ? 0.0 : 0.5);
  return lv;
}

// Pixel coordinate of normalized `loc` along an axis with the given scale:
// loc*W - 0.5 (x) or loc*H - 0.5 (y); with align_corners loc*(W-1) - 0, where subtracting
// the zero changes nothing, so the result is the rounded product loc*(W-1) as docs/conventions.md
// writes.
template <typename T>
MSDACORE_HD T pixel_coord(T loc, T scale, T shift) {
  return loc * scale - shift;
}

// The four corners of one in-bounds sample.
template <typename T>
struct Corners {
  int64_t h0, w0;     // the cell: floor(h), floor(w) (either may be -1)
  int64_t offset[4];  // token offset within the level, i*W + j (0 where !inside)
  bool inside[4];     // corner lies in the level (else its value is the zero padding)
  T weight[4];        // bilinear weights hh*hw, hh*lw, lh*hw, lh*lw
  T d_dw[4];          // dB/dw coefficients -hh, hh, -lh, lh
  T d_dh[4];          // dB/dh coefficients -hw, -lw, hw, lw
  bool discrete;      // one pixel, no interpolation: the location gradients are zero
};

// True when the sample at pixel (h, w) lies inside the skip bounds of a level,
// i.e. -1 < h < H and -1 < w < W. False for NaN and infinite coordinates.
template <typename T>
MSDACORE_HD bool sample_in_range(T h, T w, T height, T width) {
  return h > static_cast<T>(-1) && h < height && w > static_cast<T>(-1) && w < width;
}

// The derivatives of the four corner weights (Corners::d_dw, d_dh) at fractional
// offsets (lh, lw) of a sample within its cell.
template <typename T>
MSDACORE_HD void set_corner_derivatives(T lh, T lw, Corners<T>* c) {
  const T hh = static_cast<T>(1) - lh;
  const T hw = static_cast<T>(1) - lw;
  c->d_dw[0] = -hh;
  c->d_dw[1] = hh;
  c->d_dw[2] = -lh;
  c->d_dw[3] = lh;
  c->d_dh[0] = -hw;
  c->d_dh[1] = -lw;
  c->d_dh[2] = hw;
  c->d_dh[3] = lw;
}

// Fills `c` for a sample at pixel (h, w) that passed sample_in_range.
template <typename T>
MSDACORE_HD void make_corners(T h, T w, int64_t H, int64_t W, Corners<T>* c) {
  // floor() of a value in (-1, size): truncation rounds toward zero, fix negatives.
  int64_t h0 = static_cast<int64_t>(h);
  if (static_cast<T>(h0) > h) h0 -= 1;
  int64_t w0 = static_cast<int64_t>(w);
  if (static_cast<T>(w0) > w) w0 -= 1;
  c->h0 = h0;
  c->w0 = w0;
  const T lh = h - static_cast<T>(h0);
  const T lw = w - static_cast<T>(w0);
  const T hh = static_cast<T>(1) - lh;
  const T hw = static_cast<T>(1) - lw;

  const bool top = h0 >= 0, bottom = h0 + 1 <= H - 1;
  const bool left = w0 >= 0, right = w0 + 1 <= W - 1;
  c->inside[0] = top && left;
  c->inside[1] = top && right;
  c->inside[2] = bottom && left;
  c->inside[3] = bottom && right;
  c->offset[0] = c->inside[0] ? h0 * W + w0 : 0;
  c->offset[1] = c->inside[1] ? h0 * W + w0 + 1 : 0;
  c->offset[2] = c->inside[2] ? (h0 + 1) * W + w0 : 0;
  c->offset[3] = c->inside[3] ? (h0 + 1) * W + w0 + 1 : 0;

  c->weight[0] = hh * hw;
  c->weight[1] = hh * lw;
  c->weight[2] = lh * hw;
  c->weight[3] = lh * lw;
  set_corner_derivatives(lh, lw, c);
  c->discrete = false;
}

// The corners of the sample at normalized (x, y) on level `lv`; false (and `c` untouched)
// when the sample is skipped.
template <typename T>
MSDACORE_HD bool sample_corners(const Level<T>& lv, T x, T y, Corners<T>* c) {
  const T h = pixel_coord(y, lv.scale_y, lv.shift);
  const T w = pixel_coord(x, lv.scale_x, lv.shift);
  if (!sample_in_range(h, w, lv.height, lv.width)) return false;
  make_corners(h, w, lv.H, lv.W, c);
  return true;
}

// The pixel index of a discrete-mode sample along an axis of `size` pixels, from
// t = loc*size + 0.5: clamp(floor(t), 0, size - 1), with t not NaN (+-inf clamp).
template <typename T>
MSDACORE_HD int64_t discrete_index(T t, T size_as_t, int64_t size) {
  if (!(t >= static_cast<T>(1))) return 0;  // floor(t) <= 0
  if (!(t < size_as_t)) return size - 1;    // floor(t) >= size (no int64 overflow)
  return static_cast<int64_t>(t);           // t in [1, size): truncation is floor
}

// The corners of a discrete-mode sample at normalized (x, y) on level `lv` (corner 0 the
// pixel, weight 1; the others unused); false (and `c` untouched) when a coordinate is
// NaN or infinite, which skips the sample.
template <typename T>
MSDACORE_HD bool discrete_corners(const Level<T>& lv, T x, T y, Corners<T>* c) {
  // Only a NaN or infinite coordinate skips: a finite one whose product overflows clamps.
  if (!(x - x == static_cast<T>(0)) || !(y - y == static_cast<T>(0))) return false;
  const T h = y * lv.height + static_cast<T>(0.5);
  const T w = x * lv.width + static_cast<T>(0.5);
  const int64_t i = discrete_index(h, lv.height, lv.H);
  const int64_t j = discrete_index(w, lv.width, lv.W);
  c->h0 = i;
  c->w0 = j;
  for (int k = 0; k < 4; ++k) {
    c->inside[k] = k == 0;
    c->offset[k] = k == 0 ? i * lv.W + j : 0;
    c->weight[k] = static_cast<T>(k == 0 ? 1 : 0);
    c->d_dw[k] = static_cast<T>(0);
    c->d_dh[k] = static_cast<T>(0);
  }
  c->discrete = true;
  return true;
}

// The corners of the sample at normalized (x, y) in either mode; false when skipped.
template <typename T>
MSDACORE_HD bool mode_corners(const Level<T>& lv, bool discrete, T x, T y, Corners<T>* c) {
  return discrete ? discrete_corners(lv, x, y, c) : sample_corners(lv, x, y, c);
}

// Gradients of one sample from the four dot products dots[k] = <g, v_k> (0 for corners
// outside the level), the attention weight A and the coordinate scales (sx, sy):
//   grad_attention = <g, B>, grad_x = A*sx*<g, dB/dw>, grad_y = A*sy*<g, dB/dh>.
template <typename T>
MSDACORE_HD void sample_gradients(
    const Corners<T>& c, const T dots[4], T A, T sx, T sy, T* grad_attention, T* grad_x,
    T* grad_y) {
  T gb = 0, gw = 0, gh = 0;
  for (int k = 0; k < 4; ++k) {
    gb += c.weight[k] * dots[k];
    gw += c.d_dw[k] * dots[k];
    gh += c.d_dh[k] * dots[k];
  }
  *grad_attention = gb;
  *grad_x = c.discrete ? static_cast<T>(0) : A * sx * gw;
  *grad_y = c.discrete ? static_cast<T>(0) : A * sy * gh;
}

}  // namespace detail
}  // namespace msdacore
