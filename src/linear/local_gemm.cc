#include "tpl/error.h"
#include "tpl/linear_op.h"

namespace tpl {

Tensor LocalGemm::quantize(TensorView x) const {
  TPL_CHECK(quant != nullptr, (Where{"LocalGemm"}), "quantize on a layer that is not W8A8");
  Runtime& r = runtime();
  if (x.dtype() == DType::kI8) return r.copy_of(x);
  Tensor q = r.empty(DType::kI8, x.rows(), x.cols());
  r.quantize(x, q, quant->input_scale, quant->input_offset);
  return q;
}

Tensor LocalGemm::run(TensorView x, bool bias_here) const {
  Tensor y = runtime().empty(out_dtype, x.rows(), out_features);
  run_into(x, y, bias_here);
  return y;
}

void LocalGemm::run_into(TensorView x, TensorView y, bool bias_here) const {
  if (!quant) {
    gemm->run(x, y, bias_here && !skip_bias_add && !bias.empty());
    return;
  }
  Runtime& r = runtime();
  Tensor q;
  TensorView qv = x;
  if (x.dtype() != DType::kI8) {
    q = quantize(x);
    qv = q.view();
  }
  Tensor acc = r.empty(DType::kI32, x.rows(), out_features);
  gemm->run(qv, acc, false);
  // Dequantization epilogue: (acc + quant_bias) · deq_scale, rounded once into y's dtype.
  r.w8a8_dequantize(acc, quant->quant_bias, quant->deq_scale, bias_here, y);
}

void LocalGemm::add_bias_terms(TensorView y) const {
  if (quant) {
    // The seed's fused W8A8 path (§6.9 d): quant_bias · deq_scale on every rank.
    runtime().add_dequantized_bias(y, quant->quant_bias, quant->deq_scale);
    return;
  }
  if (!skip_bias_add && !bias.empty()) runtime().add_row_bias(y, bias);
}

}  // namespace tpl
