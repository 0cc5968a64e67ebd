// Element types and conversions. bf16 and f16 are stored as raw 16-bit patterns; conversions
// from f32 round to nearest, ties to even, and keep NaN a NaN.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>

namespace tpl {

enum class DType { kF32, kBF16, kF16, kI8, kI32 };

std::size_t dtype_size(DType t);
const char* dtype_name(DType t);
// Parses "f32", "bf16", "f16", "int8", "int32"; throws InvalidArgument otherwise.
DType parse_dtype(const std::string& s);
inline std::ostream& operator<<(std::ostream& os, DType t) {
  return os << dtype_name(t);
}

struct bf16_t {
  std::uint16_t bits;
};
struct f16_t {
  std::uint16_t bits;
};

inline std::uint16_t f32_to_bf16_bits(float f) {
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
  const std::uint32_t lsb = (u >> 16) & 1u;
  u += 0x7fffu + lsb;  // round to nearest even
  return static_cast<std::uint16_t>(u >> 16);
}
inline float bf16_bits_to_f32(std::uint16_t b) {
  const std::uint32_t u = static_cast<std::uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline float round_to_bf16(float f) {
  return bf16_bits_to_f32(f32_to_bf16_bits(f));
}

// IEEE binary16 through the compiler's _Float16 (GCC >= 12 on x86-64), which rounds to
// nearest even.
inline std::uint16_t f32_to_f16_bits(float f) {
  _Float16 h = static_cast<_Float16>(f);
  std::uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
inline float f16_bits_to_f32(std::uint16_t b) {
  _Float16 h;
  std::memcpy(&h, &b, 2);
  return static_cast<float>(h);
}

// Bulk conversions between f32 and a 16-bit float type (kBF16 or kF16).
void convert_from_f32(const float* src, void* dst, DType dst_type, std::size_t n);
void convert_to_f32(const void* src, DType src_type, float* dst, std::size_t n);

}  // namespace tpl
