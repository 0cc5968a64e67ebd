// Reference GEMM: the test oracle. y[m, j] = sum_i x[m, i] * W[j, i] (+ bias[j]), summed in
// double over the exact float values of the inputs and rounded once into y's dtype. It is
// deliberately plain; the only concession to speed is converting W to double once at creation.
//
// Int8 path (W8A8): int8 x int8 -> int32, no bias. Products are summed exactly in int64 and each
// sum is checked to fit int32 (BackendError otherwise). |x*w| <= 2^14, so k <= 2^17 - 1 can
// never overflow; larger k is checked per output.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "tpl/error.h"
#include "tpl/gemm.h"

namespace tpl {
namespace {

const Where kWhere{"reference_gemm"};

bool is_float(DType t) {
  return t == DType::kF32 || t == DType::kBF16 || t == DType::kF16;
}

bool is_int8_desc(const GemmDesc& d) {
  return d.act == DType::kI8 && d.weight == DType::kI8 && d.out == DType::kI32;
}

// Copies row r of a host view into `out` as doubles (exact: every f32/bf16/f16 is a double).
void row_to_double(const TensorView& v, std::int64_t r, double* out) {
  const std::int64_t cols = v.cols();
  switch (v.dtype()) {
    case DType::kF32: {
      const auto* p = static_cast<const float*>(v.at(r, 0));
      for (std::int64_t c = 0; c < cols; ++c) out[c] = p[c];
      return;
    }
    case DType::kBF16: {
      const auto* p = static_cast<const std::uint16_t*>(v.at(r, 0));
      for (std::int64_t c = 0; c < cols; ++c) out[c] = bf16_bits_to_f32(p[c]);
      return;
    }
    default:
      for (std::int64_t c = 0; c < cols; ++c) out[c] = get_f32(v, r, c);
      return;
  }
}

// f32 nearest to v with round-to-odd: truncate toward zero, then set the last bit if inexact.
// Rounding that (24 bits) to bf16 (8 bits) equals rounding v to bf16 directly, so the bf16
// result is rounded once, not twice.
float to_f32_round_odd(double v) {
  float f = static_cast<float>(v);
  if (!std::isfinite(v) || static_cast<double>(f) == v) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.f);
  std::uint32_t u;
  std::memcpy(&u, &f, 4);
  u |= 1u;
  std::memcpy(&f, &u, 4);
  return f;
}

void store_rounded(const TensorView& y, std::int64_t r, std::int64_t c, double v) {
  void* p = y.at(r, c);
  switch (y.dtype()) {
    case DType::kF32:
      *static_cast<float*>(p) = static_cast<float>(v);
      return;
    case DType::kBF16:
      *static_cast<std::uint16_t*>(p) = f32_to_bf16_bits(to_f32_round_odd(v));
      return;
    case DType::kF16: {
      const _Float16 h = static_cast<_Float16>(v);  // GCC converts double -> half directly
      std::memcpy(p, &h, 2);
      return;
    }
    default:
      TPL_THROW(Unsupported, kWhere, "output dtype ", dtype_name(y.dtype()));
  }
}

class ReferenceGemm final : public Gemm {
 public:
  ReferenceGemm(const GemmDesc& desc, TensorView weight, TensorView bias) : desc_(desc) {
    TPL_CHECK(desc.k > 0 && desc.n > 0, kWhere, "k and n must be positive, got k=", desc.k,
              " n=", desc.n);
    int8_ = is_int8_desc(desc);
    const bool floats = is_float(desc.act) && is_float(desc.weight) && is_float(desc.out);
    TPL_CHECK_T(int8_ || floats, Unsupported, kWhere, "dtypes act=", dtype_name(desc.act),
                " weight=", dtype_name(desc.weight), " out=", dtype_name(desc.out),
                " (supported: any mix of f32/bf16/f16, or int8 x int8 -> int32)");
    TPL_CHECK(weight.device() == Device::kHost, kWhere, "weight must be a host tensor");
    TPL_CHECK(weight.rows() == desc.n && weight.cols() == desc.k && weight.dtype() == desc.weight,
              kWhere, "weight must be ", dtype_name(desc.weight), "[n=", desc.n, ", k=", desc.k,
              "], got ", weight.describe());
    if (int8_) {
      TPL_CHECK(bias.empty(), kWhere, "int8 x int8 -> int32 GEMM takes no bias, got ",
                bias.describe(), " (W8A8's quant_bias is added by the caller's epilogue)");
      // Stored transposed, [k, n], as int32 so the inner loop needs no widening.
      wt_i32_.resize(static_cast<std::size_t>(desc.k * desc.n));
      for (std::int64_t j = 0; j < desc.n; ++j) {
        const auto* wr = static_cast<const std::int8_t*>(weight.at(j, 0));
        for (std::int64_t i = 0; i < desc.k; ++i) wt_i32_[i * desc.n + j] = wr[i];
      }
      return;
    }
    // Stored transposed, [k, n], so that run() sweeps contiguous rows of W^T.
    wt_.resize(static_cast<std::size_t>(desc.k * desc.n));
    std::vector<double> row(static_cast<std::size_t>(desc.k));
    for (std::int64_t j = 0; j < desc.n; ++j) {
      row_to_double(weight, j, row.data());
      for (std::int64_t i = 0; i < desc.k; ++i) wt_[i * desc.n + j] = row[i];
    }
    if (!bias.empty()) {
      TPL_CHECK(bias.device() == Device::kHost, kWhere, "bias must be a host tensor");
      TPL_CHECK(bias.rows() == 1 && bias.cols() == desc.n && is_float(bias.dtype()), kWhere,
                "bias must be a float [1, n=", desc.n, "], got ", bias.describe());
      bias_.resize(static_cast<std::size_t>(desc.n));
      row_to_double(bias, 0, bias_.data());
    }
  }

  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return "reference"; }
  bool has_bias() const override { return !bias_.empty(); }

  void run(TensorView x, TensorView y, bool with_bias) override {
    const std::int64_t k = desc_.k, n = desc_.n;
    check_gemm_run(*this, x, y, with_bias, Device::kHost, "reference_gemm");
    if (int8_) return run_int8(x, y);
    std::vector<double> xr(static_cast<std::size_t>(k)), acc(static_cast<std::size_t>(n));
    for (std::int64_t m = 0; m < x.rows(); ++m) {
      row_to_double(x, m, xr.data());
      // acc[j] = sum over i in order 0..k-1 of x[m, i] * W[j, i]; the n sums are independent,
      // which keeps the loop free of a serial dependency chain.
      std::fill(acc.begin(), acc.end(), 0.0);
      for (std::int64_t i = 0; i < k; ++i) {
        const double xi = xr[i];
        const double* wi = &wt_[i * n];
        for (std::int64_t j = 0; j < n; ++j) acc[j] += xi * wi[j];
      }
      for (std::int64_t j = 0; j < n; ++j)
        store_rounded(y, m, j, with_bias ? acc[j] + bias_[j] : acc[j]);
    }
  }

 private:
  // acc[j] = sum_i x[m, i] * W[j, i] in int64 (exact for any k < 2^49), then range-checked.
  void run_int8(const TensorView& x, const TensorView& y) const {
    const std::int64_t k = desc_.k, n = desc_.n;
    std::vector<std::int64_t> acc(static_cast<std::size_t>(n));
    for (std::int64_t m = 0; m < x.rows(); ++m) {
      const auto* xr = static_cast<const std::int8_t*>(x.at(m, 0));
      std::fill(acc.begin(), acc.end(), 0);
      for (std::int64_t i = 0; i < k; ++i) {
        const std::int64_t xi = xr[i];
        const std::int32_t* wi = &wt_i32_[i * n];
        for (std::int64_t j = 0; j < n; ++j) acc[j] += xi * wi[j];
      }
      auto* out = static_cast<std::int32_t*>(y.at(m, 0));
      for (std::int64_t j = 0; j < n; ++j) {
        TPL_CHECK_T(acc[j] >= std::numeric_limits<std::int32_t>::min() &&
                        acc[j] <= std::numeric_limits<std::int32_t>::max(),
                    BackendError, kWhere, "int32 overflow: y[", m, ", ", j, "] = ", acc[j],
                    " (k=", k, ")");
        out[j] = static_cast<std::int32_t>(acc[j]);
      }
    }
  }

  GemmDesc desc_;
  bool int8_ = false;                 // int8 x int8 -> int32
  std::vector<std::int32_t> wt_i32_;  // int8 path: W transposed, [k, n]
  std::vector<double> wt_;            // W transposed: [k, n], row-major
  std::vector<double> bias_;          // [n], empty when there is no bias
};

}  // namespace

std::unique_ptr<Gemm> make_reference_gemm(const GemmDesc& desc, TensorView weight,
                                          TensorView bias) {
  return std::make_unique<ReferenceGemm>(desc, weight, bias);
}

}  // namespace tpl
