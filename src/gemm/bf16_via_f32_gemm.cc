#include "gemm/bf16_via_f32_gemm.h"

#include <cstdint>
#include <string>

#include "tpl/error.h"

namespace tpl {
namespace {

const Where kWhere{"bf16_via_f32_gemm"};

// Dense [rows, cols] window of a scratch tensor, grown (never shrunk) on demand.
TensorView scratch(Tensor& t, std::int64_t rows, std::int64_t cols) {
  if (t.rows() < rows || t.cols() != cols) t = Tensor(DType::kF32, rows, cols);
  return t.view().row_slice(0, rows);
}

class Bf16ViaF32Gemm final : public Gemm {
 public:
  Bf16ViaF32Gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                 const GemmFactory& make_f32)
      : desc_(desc) {
    TPL_CHECK_T(desc.act == DType::kBF16 && desc.weight == DType::kBF16 &&
                    (desc.out == DType::kBF16 || desc.out == DType::kF32),
                Unsupported, kWhere, "dtypes act=", dtype_name(desc.act),
                " weight=", dtype_name(desc.weight), " out=", dtype_name(desc.out),
                " (serves bf16 x bf16 -> bf16 or f32)");
    TPL_CHECK(weight.device() == Device::kHost, kWhere, "weight must be a host tensor");
    TPL_CHECK(weight.rows() == desc.n && weight.cols() == desc.k && weight.dtype() == DType::kBF16,
              kWhere, "weight must be bf16[n=", desc.n, ", k=", desc.k, "], got ",
              weight.describe());
    GemmDesc inner = desc;
    inner.act = inner.weight = inner.out = DType::kF32;
    Tensor w32(DType::kF32, desc.n, desc.k);  // freed once the inner GEMM holds its copy
    convert_into(weight, w32);
    inner_ = make_f32(inner, w32, bias);
    TPL_CHECK_T(inner_ != nullptr, BackendError, kWhere, "no f32 GEMM for the f32 path");
  }

  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return "bf16_via_f32:" + inner_->name(); }
  bool has_bias() const override { return inner_->has_bias(); }

  void run(TensorView x, TensorView y, bool with_bias) override {
    check_gemm_run(*this, x, y, with_bias, Device::kHost, "bf16_via_f32_gemm");
    const std::int64_t m = x.rows();
    if (m == 0) return;
    const TensorView x32 = scratch(x32_, m, desc_.k);
    convert_into(x, x32);
    if (desc_.out == DType::kF32) return inner_->run(x32, y, with_bias);
    const TensorView y32 = scratch(y32_, m, desc_.n);
    inner_->run(x32, y32, with_bias);
    convert_into(y32, y);  // round to nearest even, once
  }

 private:
  GemmDesc desc_;
  std::unique_ptr<Gemm> inner_;
  Tensor x32_, y32_;
};

}  // namespace

std::unique_ptr<Gemm> make_bf16_via_f32_gemm(const GemmDesc& desc, TensorView weight,
                                             TensorView bias, const GemmFactory& make_f32) {
  return std::make_unique<Bf16ViaF32Gemm>(desc, weight, bias, make_f32);
}

}  // namespace tpl
