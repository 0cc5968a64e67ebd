#include "tpl/tensor.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "tpl/error.h"

namespace tpl {

namespace {
const Where kWhere{"tensor"};
}

TensorView::TensorView(void* data, DType dtype, std::int64_t rows, std::int64_t cols,
                       std::int64_t stride, Device device)
    : data_(data),
      dtype_(dtype),
      rows_(rows),
      cols_(cols),
      stride_(stride < 0 ? cols : stride),
      device_(device) {
  TPL_CHECK_GE(rows, 0, kWhere);
  TPL_CHECK_GE(cols, 0, kWhere);
  TPL_CHECK_GE(stride_, cols, kWhere, "row stride must cover the columns");
  TPL_CHECK(data != nullptr || rows * cols == 0, kWhere, "null data for a non-empty view");
}

void* TensorView::at(std::int64_t r, std::int64_t c) const {
  return static_cast<char*>(data_) + static_cast<std::size_t>(r * stride_ + c) * dtype_size(dtype_);
}

std::string TensorView::describe() const {
  return std::string(dtype_name(dtype_)) + "[" + std::to_string(rows_) + ", " +
         std::to_string(cols_) + "]";
}

TensorView TensorView::row_slice(std::int64_t begin, std::int64_t count) const {
  TPL_CHECK(begin >= 0 && count >= 0 && begin + count <= rows_, kWhere, "rows [", begin, ", ",
            begin + count, ") out of ", describe());
  return TensorView(count == 0 ? data_ : at(begin, 0), dtype_, count, cols_, stride_, device_);
}

TensorView TensorView::col_slice(std::int64_t begin, std::int64_t count) const {
  TPL_CHECK(begin >= 0 && count >= 0 && begin + count <= cols_, kWhere, "cols [", begin, ", ",
            begin + count, ") out of ", describe());
  return TensorView(rows_ == 0 ? data_ : at(0, begin), dtype_, rows_, count, stride_, device_);
}

TensorView TensorView::reshape(std::int64_t rows, std::int64_t cols) const {
  TPL_CHECK(contiguous(), kWhere, "reshape needs a contiguous view, got stride ", stride_, " for ",
            describe());
  TPL_CHECK_EQ(rows * cols, numel(), kWhere, "reshape of ", describe());
  return TensorView(data_, dtype_, rows, cols, cols, device_);
}

Tensor::Tensor(TensorView view, std::function<void(void*)> release)
    : buf_(view.data(), std::move(release)), view_(view) {}

Tensor::Tensor(DType dtype, std::int64_t rows, std::int64_t cols) {
  TPL_CHECK(rows >= 0 && cols >= 0, kWhere, "negative shape [", rows, ", ", cols, "]");
  std::size_t bytes = static_cast<std::size_t>(rows * cols) * dtype_size(dtype);
  std::size_t alloc = (bytes + 63) / 64 * 64;
  if (alloc == 0) alloc = 64;
  void* p = std::aligned_alloc(64, alloc);
  if (!p) TPL_THROW(OutOfMemory, kWhere, "out of host memory allocating ", bytes, " bytes");
  std::memset(p, 0, alloc);
  buf_ = std::unique_ptr<void, std::function<void(void*)>>(p, [](void* q) { std::free(q); });
  view_ = TensorView(p, dtype, rows, cols);
}

Tensor Tensor::from_f32(const std::vector<float>& values, std::int64_t rows, std::int64_t cols,
                        DType dtype) {
  TPL_CHECK_EQ(static_cast<std::int64_t>(values.size()), rows * cols, kWhere);
  Tensor t(dtype, rows, cols);
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t c = 0; c < cols; ++c) set_f32(t.view(), r, c, values[r * cols + c]);
  return t;
}

Tensor Tensor::copy_of(const TensorView& v) {
  Tensor t(v.dtype(), v.rows(), v.cols());
  copy_into(v, t.view());
  return t;
}

float get_f32(const TensorView& v, std::int64_t r, std::int64_t c) {
  const void* p = v.at(r, c);
  switch (v.dtype()) {
    case DType::kF32:
      return *static_cast<const float*>(p);
    case DType::kBF16:
      return bf16_bits_to_f32(*static_cast<const std::uint16_t*>(p));
    case DType::kF16:
      return f16_bits_to_f32(*static_cast<const std::uint16_t*>(p));
    case DType::kI8:
      return *static_cast<const std::int8_t*>(p);
    case DType::kI32:
      return static_cast<float>(*static_cast<const std::int32_t*>(p));
  }
  return 0.f;
}

void set_f32(const TensorView& v, std::int64_t r, std::int64_t c, float value) {
  void* p = v.at(r, c);
  switch (v.dtype()) {
    case DType::kF32:
      *static_cast<float*>(p) = value;
      return;
    case DType::kBF16:
      *static_cast<std::uint16_t*>(p) = f32_to_bf16_bits(value);
      return;
    case DType::kF16:
      *static_cast<std::uint16_t*>(p) = f32_to_f16_bits(value);
      return;
    case DType::kI8:
      *static_cast<std::int8_t*>(p) = static_cast<std::int8_t>(value);
      return;
    case DType::kI32:
      *static_cast<std::int32_t*>(p) = static_cast<std::int32_t>(value);
      return;
  }
}

std::vector<float> to_f32_vector(const TensorView& v) {
  std::vector<float> out(static_cast<std::size_t>(v.numel()));
  for (std::int64_t r = 0; r < v.rows(); ++r)
    for (std::int64_t c = 0; c < v.cols(); ++c) out[r * v.cols() + c] = get_f32(v, r, c);
  return out;
}

bool views_overlap(const TensorView& a, const TensorView& b) {
  if (a.empty() || b.empty()) return false;
  const auto* a0 = static_cast<const char*>(a.data());
  const auto* a1 = static_cast<const char*>(a.at(a.rows() - 1, a.cols()));
  const auto* b0 = static_cast<const char*>(b.data());
  const auto* b1 = static_cast<const char*>(b.at(b.rows() - 1, b.cols()));
  return a0 < b1 && b0 < a1;
}

void copy_into(const TensorView& src, const TensorView& dst) {
  TPL_CHECK(src.rows() == dst.rows() && src.cols() == dst.cols() && src.dtype() == dst.dtype(),
            kWhere, "copy ", src.describe(), " into ", dst.describe());
  const std::size_t row_bytes = static_cast<std::size_t>(src.cols()) * dtype_size(src.dtype());
  if (src.contiguous() && dst.contiguous()) {
    if (src.nbytes() && src.data() != dst.data())
      std::memmove(dst.data(), src.data(), src.nbytes());
    return;
  }
  for (std::int64_t r = 0; r < src.rows(); ++r) std::memmove(dst.at(r, 0), src.at(r, 0), row_bytes);
}

void convert_into(const TensorView& src, const TensorView& dst) {
  TPL_CHECK(src.rows() == dst.rows() && src.cols() == dst.cols(), kWhere, "convert ",
            src.describe(), " into ", dst.describe());
  if (src.dtype() == dst.dtype()) return copy_into(src, dst);
  // bf16 <-> f32 row loops the compiler vectorises: the f32 paths of bf16 GEMMs convert every
  // activation through here.
  if (src.dtype() == DType::kBF16 && dst.dtype() == DType::kF32) {
    for (std::int64_t r = 0; r < src.rows(); ++r) {
      const auto* s = static_cast<const std::uint16_t*>(src.at(r, 0));
      auto* d = static_cast<float*>(dst.at(r, 0));
      for (std::int64_t c = 0; c < src.cols(); ++c) d[c] = bf16_bits_to_f32(s[c]);
    }
    return;
  }
  if (src.dtype() == DType::kF32 && dst.dtype() == DType::kBF16) {
    for (std::int64_t r = 0; r < src.rows(); ++r) {
      const auto* s = static_cast<const float*>(src.at(r, 0));
      auto* d = static_cast<std::uint16_t*>(dst.at(r, 0));
      for (std::int64_t c = 0; c < src.cols(); ++c) d[c] = f32_to_bf16_bits(s[c]);
    }
    return;
  }
  for (std::int64_t r = 0; r < src.rows(); ++r)
    for (std::int64_t c = 0; c < src.cols(); ++c) set_f32(dst, r, c, get_f32(src, r, c));
}

void fill_zero(const TensorView& v) {
  const std::size_t row_bytes = static_cast<std::size_t>(v.cols()) * dtype_size(v.dtype());
  for (std::int64_t r = 0; r < v.rows(); ++r) std::memset(v.at(r, 0), 0, row_bytes);
}

void add_into(const TensorView& src, const TensorView& dst) {
  TPL_CHECK(src.rows() == dst.rows() && src.cols() == dst.cols(), kWhere, "add ", src.describe(),
            " into ", dst.describe());
  if (src.dtype() == DType::kF32 && dst.dtype() == DType::kF32) {
    for (std::int64_t r = 0; r < src.rows(); ++r) {
      const float* s = static_cast<const float*>(src.at(r, 0));
      float* d = static_cast<float*>(dst.at(r, 0));
      for (std::int64_t c = 0; c < src.cols(); ++c) d[c] += s[c];
    }
    return;
  }
  for (std::int64_t r = 0; r < src.rows(); ++r)
    for (std::int64_t c = 0; c < src.cols(); ++c)
      set_f32(dst, r, c, get_f32(dst, r, c) + get_f32(src, r, c));
}

void add_row_bias(const TensorView& v, const TensorView& bias) {
  TPL_CHECK(bias.rows() == 1 && bias.cols() == v.cols(), kWhere, "bias ", bias.describe(), " for ",
            v.describe());
  for (std::int64_t r = 0; r < v.rows(); ++r) add_into(bias, v.row_slice(r, 1));
}

}  // namespace tpl
