// The CPU runtime: every step runs on the calling thread and is done on return.
#include "tpl/error.h"
#include "tpl/quant.h"
#include "tpl/runtime.h"

namespace tpl {

namespace {

void check_host(const TensorView& v, const char* what) {
  TPL_CHECK(v.device() == Device::kHost || v.empty(), (Where{"host runtime"}), what,
            " must be a host tensor, got a device ", v.describe());
}

class HostRuntime final : public Runtime {
 public:
  Device device() const override { return Device::kHost; }
  std::string name() const override { return "host"; }
  Tensor empty(DType dtype, std::int64_t rows, std::int64_t cols) override {
    return Tensor(dtype, rows, cols);
  }
  void copy(TensorView src, TensorView dst) override {
    check_host(src, "copy source");
    check_host(dst, "copy destination");
    copy_into(src, dst);
  }
  void fill_zero(TensorView v) override {
    check_host(v, "fill_zero's tensor");
    tpl::fill_zero(v);
  }
  void add_row_bias(TensorView y, TensorView bias) override {
    check_host(y, "y");
    check_host(bias, "bias");
    tpl::add_row_bias(y, bias);
  }
  void quantize(TensorView x, TensorView q, float scale, std::int32_t offset) override {
    check_host(x, "x");
    check_host(q, "q");
    quantize_into(x, q, scale, offset);
  }
  void w8a8_dequantize(TensorView acc, TensorView quant_bias, TensorView deq_scale,
                       bool add_quant_bias, TensorView y) override {
    const Where w{"host w8a8_dequantize"};
    check_host(acc, "acc");
    check_host(y, "y");
    TPL_CHECK(acc.dtype() == DType::kI32 && y.rows() == acc.rows() && y.cols() == acc.cols(), w,
              "acc ", acc.describe(), " y ", y.describe());
    check_vectors(quant_bias, deq_scale, acc.cols(), add_quant_bias, w);
    check_host(deq_scale, "deq_scale");
    const auto* qb = add_quant_bias ? quant_bias.ptr<std::int32_t>() : nullptr;
    const auto* deq = deq_scale.ptr<float>();
    for (std::int64_t r = 0; r < acc.rows(); ++r) {
      const auto* a = static_cast<const std::int32_t*>(acc.at(r, 0));
      if (y.dtype() == DType::kF32) {
        auto* out = static_cast<float*>(y.at(r, 0));
        for (std::int64_t c = 0; c < acc.cols(); ++c)
          out[c] = static_cast<float>(a[c] + (qb ? qb[c] : 0)) * deq[c];
      } else {
        for (std::int64_t c = 0; c < acc.cols(); ++c)
          set_f32(y, r, c, static_cast<float>(a[c] + (qb ? qb[c] : 0)) * deq[c]);
      }
    }
  }
  void add_dequantized_bias(TensorView y, TensorView quant_bias, TensorView deq_scale) override {
    const Where w{"host add_dequantized_bias"};
    check_host(y, "y");
    check_vectors(quant_bias, deq_scale, y.cols(), true, w);
    const auto* qb = quant_bias.ptr<std::int32_t>();
    const auto* deq = deq_scale.ptr<float>();
    for (std::int64_t r = 0; r < y.rows(); ++r)
      for (std::int64_t c = 0; c < y.cols(); ++c)
        set_f32(y, r, c, get_f32(y, r, c) + static_cast<float>(qb[c]) * deq[c]);
  }
  void synchronize() override {}

 private:
  static void check_vectors(const TensorView& quant_bias, const TensorView& deq_scale,
                            std::int64_t n, bool with_bias, const Where& w) {
    TPL_CHECK(deq_scale.dtype() == DType::kF32 && deq_scale.rows() == 1 && deq_scale.cols() == n, w,
              "deq_scale must be f32 [1, ", n, "], got ", deq_scale.describe());
    TPL_CHECK(!with_bias || (quant_bias.dtype() == DType::kI32 && quant_bias.rows() == 1 &&
                             quant_bias.cols() == n),
              w, "quant_bias must be int32 [1, ", n, "], got ", quant_bias.describe());
  }
};

}  // namespace

Tensor Runtime::zeros(DType dtype, std::int64_t rows, std::int64_t cols) {
  Tensor t = empty(dtype, rows, cols);
  fill_zero(t);
  return t;
}

Tensor Runtime::copy_of(TensorView v) {
  Tensor t = empty(v.dtype(), v.rows(), v.cols());
  copy(v, t);
  return t;
}

Tensor Runtime::to_host(TensorView v) {
  Tensor t(v.dtype(), v.rows(), v.cols());
  copy(v, t);
  synchronize();
  return t;
}

std::unique_ptr<Runtime> make_host_runtime() {
  return std::make_unique<HostRuntime>();
}

Runtime& host_runtime() {
  static HostRuntime instance;  // stateless
  return instance;
}

}  // namespace tpl
