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

// IEEE binary16 -> float32 (exact).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0x1fu) return bits_to_float(sign | 0x7f800000u | (mantissa << 13));  // inf/NaN
  if (exponent == 0) {
    if (mantissa == 0) return bits_to_float(sign);  // +-0
    exponent = 127 - 15 + 1;                        // subnormal: normalise
    while ((mantissa & 0x400u) == 0) {
      mantissa <<= 1;
      --exponent;
    }
    return bits_to_float(sign | (exponent << 23) | ((mantissa & 0x3ffu) << 13));
  }
  return bits_to_float(sign | ((exponent + 127 - 15) << 23) | (mantissa << 13));
}

// float32 -> IEEE binary16, round to nearest even.
inline uint16_t float_to_half(float f) {
  uint32_t x = float_to_bits(f);
  const uint32_t sign = x & 0x80000000u;
  x ^= sign;
  uint32_t out;
  if (x >= (127u + 16u) << 23) {                    // |f| >= 65536, inf or NaN
    out = x > (255u << 23) ? 0x7e00u : 0x7c00u;
  } else if (x < (127u - 14u) << 23) {              // below 2^-14: subnormal or zero
    // Adding 0.5 (2^-1) aligns the half's subnormal unit (2^-24) with the float's last
    // mantissa bit; the float addition rounds to nearest even.
    const uint32_t magic = ((127u - 15u) + (23u - 10u) + 1u) << 23;
    out = float_to_bits(bits_to_float(x) + bits_to_float(magic)) - magic;
  } else {                                          // normal: round the 13 dropped bits
    const uint32_t odd = (x >> 13) & 1u;
    x += ((15u - 127u) << 23) + 0xfffu + odd;
    out = x >> 13;                                  // a carry past 30 gives infinity
  }
  return static_cast<uint16_t>(out | (sign >> 16));
}

// bfloat16 -> float32 (exact).
inline float bfloat16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

// float32 -> bfloat16, round to nearest even; NaN stays a (quiet) NaN.
inline uint16_t float_to_bfloat16(float f) {
  const uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

}  // namespace cpu
}  // namespace msdacore
