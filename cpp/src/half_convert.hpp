// Internal: float16 and bfloat16 to and from float32 on the host, bit-exact and
// independent of compiler support for half types: widening is exact, narrowing rounds to
// nearest, ties to even, with overflow to infinity and NaN kept NaN (as NumPy, torch and
// the CUDA intrinsics do).
#pragma once

#include <cstdint>
#include <cstring>

namespace msdacore {
namespace cpu {

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Every conversion below is branch free (each case computed, the right one selected), so
// that the loops over arrays in cpu_widen.cpp vectorize; tests/cpp/test_half_convert.cpp
// checks them against plain case-by-case conversions (all 65536 halves, and floats of
// every exponent).

// IEEE binary16 -> float32 (exact).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t shifted = static_cast<uint32_t>(h & 0x7fffu) << 13;  // exponent, mantissa
  const uint32_t exponent = shifted & 0x0f800000u;
  // Normal: rebias the exponent. Inf/NaN: exponent all ones, mantissa (payload) kept.
  const uint32_t normal = shifted + ((127u - 15u) << 23);
  const uint32_t special = normal + ((128u - 16u) << 23);
  // Zero and subnormal: the mantissa as a float32 with the smallest normal half exponent,
  // minus that exponent's 1.0: exact (the difference is representable).
  const float sub = bits_to_float(normal + (1u << 23)) - bits_to_float(113u << 23);
  const uint32_t magnitude = exponent == 0x0f800000u ? special
                             : exponent == 0         ? float_to_bits(sub)
                                                     : normal;
  return bits_to_float(magnitude | sign);
}

// float32 -> IEEE binary16, round to nearest even; overflow to infinity, NaN to the
// quiet NaN 0x7e00 (sign kept).
inline uint16_t float_to_half(float f) {
  uint32_t x = float_to_bits(f);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  // |f| >= 65536, inf or NaN.
  const uint32_t big = x > (255u << 23) ? 0x7e00u : 0x7c00u;
  // Below 2^-14, subnormal or zero: adding 0.5 (2^-1) aligns the half's subnormal unit
  // (2^-24) with the float's last mantissa bit; the float addition rounds to nearest even.
  const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
  const uint32_t small = float_to_bits(bits_to_float(x) + bits_to_float(magic)) - magic;
  // Normal: round the 13 dropped bits (a carry past bit 30 gives infinity).
  const uint32_t normal = (x + ((15u - 127u) << 23) + 0xfffu + ((x >> 13) & 1u)) >> 13;
  const uint32_t out = x >= (127u + 16u) << 23 ? big : x < (127u - 14u) << 23 ? small : normal;
  return static_cast<uint16_t>(out | (sign >> 16));
}

// bfloat16 -> float32 (exact).
inline float bfloat16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_to_bits(f);
  const uint32_t nan = (u >> 16) | 0x40u;
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

}  // namespace cpu
}  // namespace msdacore
