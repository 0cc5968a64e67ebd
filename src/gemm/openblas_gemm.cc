#include "gemm/openblas_gemm.h"

#include <cblas.h>

#include <climits>
#include <cstdint>

#include "tpl/error.h"

namespace tpl {
namespace {

const Where kWhere{"openblas_gemm"};
// The weight is held transposed, as a row-major [k, n] matrix, so that y = x W runs as
// sgemm(NoTrans, NoTrans). With the [n, k] layout (NoTrans, Trans) OpenBLAS transposes each
// weight panel while it packs it; at decode sizes that packing is the whole cost. Zen3, one
// thread, K = N = 4096, weights past the L3: M = 16 streams the weight at 4.7 GB/s against 2.6,
// M = 4 at 6.8 against 3.2; at M >= 256 the two layouts are equal within noise.
// At M = 1 sgemv(Trans) reads the weight at 15 GB/s, sgemm at 6.6; from M = 2 on, one sgemm is
// as fast as M sgemv passes or faster.
constexpr std::int64_t kGemvMaxRows = 1;

class OpenBlasGemm final : public Gemm {
 public:
  OpenBlasGemm(const GemmDesc& desc, TensorView weight, TensorView bias, int threads)
      : desc_(desc), threads_(threads < 1 ? 1 : threads) {
    TPL_CHECK(desc.k > 0 && desc.n > 0, kWhere, "k and n must be positive, got k=", desc.k,
              " n=", desc.n);
    TPL_CHECK_T(desc.act == DType::kF32 && desc.weight == DType::kF32 && desc.out == DType::kF32,
                Unsupported, kWhere, "dtypes act=", dtype_name(desc.act),
                " weight=", dtype_name(desc.weight), " out=", dtype_name(desc.out),
                " (OpenBLAS serves f32 x f32 -> f32 only)");
    TPL_CHECK_T(desc.k < INT_MAX && desc.n < INT_MAX, Unsupported, kWhere,
                "k and n must fit OpenBLAS's 32-bit blasint, got k=", desc.k, " n=", desc.n);
    TPL_CHECK(weight.device() == Device::kHost, kWhere, "weight must be a host tensor");
    TPL_CHECK(weight.rows() == desc.n && weight.cols() == desc.k && weight.dtype() == DType::kF32,
              kWhere, "weight must be f32[n=", desc.n, ", k=", desc.k, "], got ",
              weight.describe());
    TPL_CHECK_T(weight.stride() < INT_MAX, Unsupported, kWhere,
                "the weight's row stride must fit OpenBLAS's 32-bit blasint, got ",
                weight.stride());
    weight_kn_ = Tensor(DType::kF32, desc.k, desc.n);
    cblas_somatcopy(CblasRowMajor, CblasTrans, static_cast<blasint>(desc.n),
                    static_cast<blasint>(desc.k), 1.f, weight.ptr<const float>(),
                    static_cast<blasint>(weight.stride()), weight_kn_.ptr<float>(),
                    static_cast<blasint>(desc.n));
    if (!bias.empty()) {
      TPL_CHECK(bias.device() == Device::kHost, kWhere, "bias must be a host tensor");
      TPL_CHECK(bias.rows() == 1 && bias.cols() == desc.n &&
                    (bias.dtype() == DType::kF32 || bias.dtype() == DType::kBF16 ||
                     bias.dtype() == DType::kF16),
                kWhere, "bias must be a float [1, n=", desc.n, "], got ", bias.describe());
      bias_ = Tensor(DType::kF32, 1, desc.n);
      convert_into(bias, bias_);
    }
  }

  const GemmDesc& desc() const override { return desc_; }
  std::string name() const override { return "openblas"; }
  bool has_bias() const override { return bias_.numel() > 0; }

  void run(TensorView x, TensorView y, bool with_bias) override {
    check_gemm_run(*this, x, y, with_bias, Device::kHost, "openblas_gemm");
    const std::int64_t m = x.rows();
    if (m == 0) return;
    TPL_CHECK_T(m < INT_MAX && x.stride() < INT_MAX && y.stride() < INT_MAX, Unsupported, kWhere,
                "M and row strides must fit OpenBLAS's 32-bit blasint, got M=", m);
    if (openblas_get_num_threads() != threads_) openblas_set_num_threads(threads_);
    const auto n = static_cast<blasint>(desc_.n);
    const auto k = static_cast<blasint>(desc_.k);
    if (m <= kGemvMaxRows) {
      for (std::int64_t r = 0; r < m; ++r)
        cblas_sgemv(CblasRowMajor, CblasTrans, k, n, 1.f, weight_kn_.ptr<const float>(), n,
                    static_cast<const float*>(x.at(r, 0)), 1, 0.f, static_cast<float*>(y.at(r, 0)),
                    1);
    } else {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, static_cast<blasint>(m), n, k, 1.f,
                  x.ptr<const float>(), static_cast<blasint>(x.stride()),
                  weight_kn_.ptr<const float>(), n, 0.f, y.ptr<float>(),
                  static_cast<blasint>(y.stride()));
    }
    if (with_bias) add_row_bias(y, bias_);
  }

 private:
  GemmDesc desc_;
  int threads_;
  Tensor weight_kn_;  // dense f32 [k, n]: the weight transposed
  Tensor bias_;       // f32 [1, n], empty without a bias
};

}  // namespace

std::unique_ptr<Gemm> make_openblas_gemm(const GemmDesc& desc, TensorView weight, TensorView bias,
                                         int threads) {
  return std::make_unique<OpenBlasGemm>(desc, weight, bias, threads);
}

std::string openblas_description() {
  std::string s;
  const char* config = openblas_get_config();
  const char* core = openblas_get_corename();
  s += config ? config : "?";
  s += ", core ";
  s += core ? core : "?";
  return s;
}

}  // namespace tpl
