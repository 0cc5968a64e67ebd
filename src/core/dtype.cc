#include "tpl/dtype.h"

#include "tpl/error.h"

namespace tpl {

std::size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32:
    case DType::kI32:
      return 4;
    case DType::kBF16:
    case DType::kF16:
      return 2;
    case DType::kI8:
      return 1;
  }
  return 0;
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32:
      return "f32";
    case DType::kBF16:
      return "bf16";
    case DType::kF16:
      return "f16";
    case DType::kI8:
      return "int8";
    case DType::kI32:
      return "int32";
  }
  return "?";
}

DType parse_dtype(const std::string& s) {
  if (s == "f32" || s == "float32") return DType::kF32;
  if (s == "bf16" || s == "bfloat16") return DType::kBF16;
  if (s == "f16" || s == "float16") return DType::kF16;
  if (s == "int8" || s == "i8") return DType::kI8;
  if (s == "int32" || s == "i32") return DType::kI32;
  TPL_THROW(InvalidArgument, Where{"parse_dtype"}, "unknown dtype '", s,
            "' (expected f32, bf16, f16, int8 or int32)");
}

void convert_from_f32(const float* src, void* dst, DType dst_type, std::size_t n) {
  auto* d = static_cast<std::uint16_t*>(dst);
  switch (dst_type) {
    case DType::kBF16:
      for (std::size_t i = 0; i < n; ++i) d[i] = f32_to_bf16_bits(src[i]);
      return;
    case DType::kF16:
      for (std::size_t i = 0; i < n; ++i) d[i] = f32_to_f16_bits(src[i]);
      return;
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    default:
      TPL_THROW(InvalidArgument, Where{"convert_from_f32"}, "cannot convert to ",
                dtype_name(dst_type));
  }
}

void convert_to_f32(const void* src, DType src_type, float* dst, std::size_t n) {
  const auto* s = static_cast<const std::uint16_t*>(src);
  switch (src_type) {
    case DType::kBF16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = bf16_bits_to_f32(s[i]);
      return;
    case DType::kF16:
      for (std::size_t i = 0; i < n; ++i) dst[i] = f16_bits_to_f32(s[i]);
      return;
    case DType::kF32:
      std::memcpy(dst, src, n * 4);
      return;
    default:
      TPL_THROW(InvalidArgument, Where{"convert_to_f32"}, "cannot convert from ",
                dtype_name(src_type));
  }
}

}  // namespace tpl
