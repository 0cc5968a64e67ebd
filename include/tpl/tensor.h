// Tensors. Activations and weights are 2-D, [rows, cols] = [tokens, features] for activations
// and [out, in] for weights (PyTorch's Linear layout). Vectors (bias, scales) are [1, n].
//
// TensorView is a non-owning window: pointer, dtype, shape and a row stride (in elements,
// >= cols; columns are always contiguous). It is cheap to copy and pass by value. It does not
// keep memory alive: the owner (a Tensor, a caller's buffer) must outlive every view of it.
// Views are not synchronised; concurrent writers to one view are the caller's problem.
//
// Tensor owns 64-byte aligned memory on one device. Host is the only device the CPU build
// allocates; the CUDA backend adds device memory behind the same view type.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tpl/dtype.h"

namespace tpl {

enum class Device { kHost, kCuda };

class TensorView {
 public:
  TensorView() = default;
  // stride < 0 means contiguous (stride = cols). Throws InvalidArgument on negative sizes or a
  // stride smaller than cols.
  TensorView(void* data, DType dtype, std::int64_t rows, std::int64_t cols,
             std::int64_t stride = -1, Device device = Device::kHost);

  void* data() const { return data_; }
  template <typename T>
  T* ptr() const {
    return static_cast<T*>(data_);
  }
  // Pointer to element (r, c).
  void* at(std::int64_t r, std::int64_t c) const;
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  std::int64_t rows() const { return rows_; }
  std::int64_t cols() const { return cols_; }
  std::int64_t stride() const { return stride_; }
  std::int64_t numel() const { return rows_ * cols_; }
  std::size_t nbytes() const { return static_cast<std::size_t>(numel()) * dtype_size(dtype_); }
  bool contiguous() const { return stride_ == cols_ || rows_ <= 1; }
  bool empty() const { return numel() == 0; }
  std::string describe() const;  // e.g. "bf16[7, 128]"

  // Rows [begin, begin+count) and columns [begin, begin+count); bounds are checked.
  TensorView row_slice(std::int64_t begin, std::int64_t count) const;
  TensorView col_slice(std::int64_t begin, std::int64_t count) const;
  // Same memory seen as [rows, cols]; needs a contiguous view and equal element count.
  TensorView reshape(std::int64_t rows, std::int64_t cols) const;

 private:
  void* data_ = nullptr;
  DType dtype_ = DType::kF32;
  std::int64_t rows_ = 0;
  std::int64_t cols_ = 0;
  std::int64_t stride_ = 0;
  Device device_ = Device::kHost;
};

class Tensor {
 public:
  Tensor() = default;
  // Zero-initialised host tensor.
  Tensor(DType dtype, std::int64_t rows, std::int64_t cols);
  // Takes ownership of the memory behind `view` (any device): `release(view.data())` runs
  // when the tensor is destroyed. Runtimes use this to hand out pooled device memory.
  Tensor(TensorView view, std::function<void(void*)> release);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;
  Tensor(const Tensor&) = delete;
  Tensor& operator=(const Tensor&) = delete;

  // Builds a tensor of `dtype` from row-major f32 values (rounding for 16-bit floats,
  // truncation-free casts for int types; values must fit).
  static Tensor from_f32(const std::vector<float>& values, std::int64_t rows, std::int64_t cols,
                         DType dtype = DType::kF32);
  // Deep copy of any host view into a new contiguous tensor.
  static Tensor copy_of(const TensorView& v);

  TensorView view() const { return view_; }
  operator TensorView() const { return view_; }  // NOLINT: views are the common currency
  Device device() const { return view_.device(); }
  void* data() const { return view_.data(); }
  template <typename T>
  T* ptr() const {
    return view_.ptr<T>();
  }
  DType dtype() const { return view_.dtype(); }
  std::int64_t rows() const { return view_.rows(); }
  std::int64_t cols() const { return view_.cols(); }
  std::int64_t numel() const { return view_.numel(); }
  std::size_t nbytes() const { return view_.nbytes(); }

 private:
  std::unique_ptr<void, std::function<void(void*)>> buf_;
  TensorView view_;
};

// Element-wise helpers on host views (any float dtype is read/written through f32).
std::vector<float> to_f32_vector(const TensorView& v);  // row-major, rows*cols values
float get_f32(const TensorView& v, std::int64_t r, std::int64_t c);
void set_f32(const TensorView& v, std::int64_t r, std::int64_t c, float value);
// Whether the memory spans of two host views intersect.
bool views_overlap(const TensorView& a, const TensorView& b);
// Copies src into dst; shapes and dtypes must match (strides may differ).
void copy_into(const TensorView& src, const TensorView& dst);
// dst (any float dtype) = src converted; shapes must match.
void convert_into(const TensorView& src, const TensorView& dst);
void fill_zero(const TensorView& v);
// dst += src element-wise (f32 math, result rounded to dst's dtype).
void add_into(const TensorView& src, const TensorView& dst);
// Adds a [1, cols] bias to every row of v.
void add_row_bias(const TensorView& v, const TensorView& bias);

}  // namespace tpl
