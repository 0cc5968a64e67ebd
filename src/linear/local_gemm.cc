#include <cmath>

#include "tpl/error.h"
#include "tpl/linear_op.h"
#include "tpl/quant.h"

namespace tpl {

Tensor LocalGemm::quantize(TensorView x) const {
  TPL_CHECK(quant != nullptr, (Where{"LocalGemm"}), "quantize on a layer that is not W8A8");
  if (x.dtype() == DType::kI8) return Tensor::copy_of(x);
  return tpl::quantize(x, quant->input_scale, quant->input_offset);
}

Tensor LocalGemm::run(TensorView x, bool bias_here) const {
  Tensor y(out_dtype, x.rows(), out_features);
  run_into(x, y, bias_here);
  return y;
}

void LocalGemm::run_into(TensorView x, TensorView y, bool bias_here) const {
  if (!quant) {
    gemm->run(x, y, bias_here && !skip_bias_add && !bias.empty());
    return;
  }
  Tensor q;
  TensorView qv = x;
  if (x.dtype() != DType::kI8) {
    q = tpl::quantize(x, quant->input_scale, quant->input_offset);
    qv = q.view();
  }
  Tensor acc(DType::kI32, x.rows(), out_features);
  gemm->run(qv, acc, false);
  // Dequantization epilogue: (acc + quant_bias) · deq_scale, rounded once into y's dtype.
  const auto* qb = quant->quant_bias.ptr<std::int32_t>();
  const auto* deq = quant->deq_scale.ptr<float>();
  for (std::int64_t r = 0; r < acc.rows(); ++r) {
    const auto* a = static_cast<const std::int32_t*>(acc.view().at(r, 0));
    if (y.dtype() == DType::kF32) {
      auto* out = static_cast<float*>(y.at(r, 0));
      for (std::int64_t c = 0; c < out_features; ++c)
        out[c] = static_cast<float>(a[c] + (bias_here ? qb[c] : 0)) * deq[c];
    } else {
      for (std::int64_t c = 0; c < out_features; ++c)
        set_f32(y, r, c, static_cast<float>(a[c] + (bias_here ? qb[c] : 0)) * deq[c]);
    }
  }
}

void LocalGemm::add_bias_terms(TensorView y) const {
  if (quant) {
    // The seed's fused W8A8 path (§6.9 d): quant_bias · deq_scale on every rank.
    const auto* qb = quant->quant_bias.ptr<std::int32_t>();
    const auto* deq = quant->deq_scale.ptr<float>();
    for (std::int64_t r = 0; r < y.rows(); ++r)
      for (std::int64_t c = 0; c < y.cols(); ++c)
        set_f32(y, r, c, get_f32(y, r, c) + static_cast<float>(qb[c]) * deq[c]);
    return;
  }
  if (!skip_bias_add && !bias.empty()) add_row_bias(y, bias);
}

}  // namespace tpl
