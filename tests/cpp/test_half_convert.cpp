// C++ unit test of the host half-type conversions (cpp/src/half_convert.hpp, branch free
// so that they vectorize) against plain case-by-case conversions written here: all 65536
// float16 and bfloat16 values widened, and narrowing of floats of every exponent (zeros,
// subnormals, the half subnormal and normal ranges, overflow, infinities, NaNs), each
// exponent with mantissas at and around every rounding tie.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>

#include "check.hpp"
#include "half_convert.hpp"

namespace {

using namespace msdacore::cpu;

float from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
uint32_t to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// binary16 -> float32, case by case.
uint32_t reference_half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h >> 15) << 31;
  const int exponent = (h >> 10) & 0x1f;
  const uint32_t mantissa = h & 0x3ff;
  if (exponent == 0x1f) return sign | 0x7f800000u | (mantissa << 13);
  if (exponent == 0) {
    const float magnitude = std::ldexp(static_cast<float>(mantissa), -24);  // exact
    return sign | to_bits(magnitude);
  }
  return sign | (static_cast<uint32_t>(exponent - 15 + 127) << 23) | (mantissa << 13);
}

// float32 -> binary16 by exact arithmetic in double: round |f| / 2^-24 (subnormal range)
// or the 11-bit significand to nearest even.
uint16_t reference_float_to_half(float f) {
  const uint16_t sign = std::signbit(f) ? 0x8000 : 0;
  if (std::isnan(f)) return sign | 0x7e00;
  const double a = std::fabs(static_cast<double>(f));
  if (a >= 65520.0) return sign | 0x7c00;  // rounds to infinity (incl. inf)
  int e;
  std::frexp(a, &e);                                              // a = m * 2^e, m in [0.5, 1)
  const int unit_exp = e - 11 < -24 ? -24 : e - 11;               // weight of the last kept bit
  const double units = std::nearbyint(std::ldexp(a, -unit_exp));  // ties to even
  const double value = std::ldexp(units, unit_exp);
  if (value == 0) return sign;
  int ve;
  std::frexp(value, &ve);
  if (ve - 1 < -14) return sign | static_cast<uint16_t>(std::ldexp(value, 24));  // subnormal
  const uint32_t exponent = static_cast<uint32_t>(ve - 1 + 15);
  const uint32_t mantissa = static_cast<uint32_t>(std::ldexp(value, -(ve - 1) + 10)) & 0x3ff;
  return sign | static_cast<uint16_t>((exponent << 10) | mantissa);
}

uint16_t reference_float_to_bfloat16(float f) {
  const uint32_t u = to_bits(f);
  if (std::isnan(f)) return static_cast<uint16_t>((u >> 16) | 0x40);
  const uint32_t lower = u & 0xffff, upper = u >> 16;
  const bool up = lower > 0x8000 || (lower == 0x8000 && (upper & 1));
  return static_cast<uint16_t>(upper + (up ? 1 : 0));
}

void test_widening() {
  for (uint32_t h = 0; h < 65536; ++h) {
    CHECK(
        to_bits(half_to_float(static_cast<uint16_t>(h))) ==
        reference_half_to_float(static_cast<uint16_t>(h)));
    CHECK(to_bits(bfloat16_to_float(static_cast<uint16_t>(h))) == h << 16);
  }
}

void check_narrowing(uint32_t bits) {
  const float f = from_bits(bits);
  CHECK(float_to_half(f) == reference_float_to_half(f));
  CHECK(float_to_bfloat16(f) == reference_float_to_bfloat16(f));
}

void test_narrowing() {
  std::mt19937 rng(5);
  for (uint32_t sign = 0; sign < 2; ++sign) {
    for (uint32_t exponent = 0; exponent < 256; ++exponent) {
      const uint32_t base = (sign << 31) | (exponent << 23);
      // Mantissas at and around the half and bfloat16 rounding points.
      for (uint32_t m :
           {0u, 1u, 0xfffu, 0x1000u, 0x1001u, 0x1fffu, 0x2000u, 0x3000u, 0x7fffu, 0x8000u, 0x8001u,
            0x18000u, 0x7fffffu, 0x7ff000u, 0x400000u, 0x3ff000u}) {
        check_narrowing(base | m);
      }
      for (int i = 0; i < 2000; ++i) check_narrowing(base | (rng() & 0x7fffffu));
    }
  }
}

}  // namespace

int main() {
  test_widening();
  test_narrowing();
  return report("half_convert: widening and narrowing as the reference conversions");
}
