// W8A8 static quantization (seed-spec §8): int8 weights per output channel, int8 activations
// per tensor with an offset, int32 accumulation.
//
//   quantize:  q = saturate_int8(round_half_even(x / input_scale + input_offset))
//   GEMM:      y[n, c] = (Σ_k q[n, k]·W[c, k] + quant_bias[c]) · deq_scale[c]
//
// Rounding is round-half-to-even (std::nearbyint in the default rounding mode); the NPU's mode
// is undocumented (seed §16 item 22), so we pick the IEEE default and test it.
// quant_bias carries the activation zero-point correction (−offset·Σ_k W[c, k]) and the folded
// float bias; it is added by exactly one rank per reduction (the reducing group's rank 0), or by
// every rank where no reduction follows.
#pragma once

#include <cstdint>

#include "tpl/tensor.h"

namespace tpl {

struct W8A8Params {
  Tensor weight;      // int8 [out, in]
  Tensor deq_scale;   // f32 [1, out] = input_scale · weight_scale[c]
  Tensor quant_bias;  // int32 [1, out]
  float input_scale = 1.f;
  std::int32_t input_offset = 0;  // in [-128, 127]
};

std::int8_t quantize_value(float x, float inv_scale, std::int32_t offset);
// x (any float dtype) -> int8 of the same shape.
void quantize_into(TensorView x, TensorView q, float input_scale, std::int32_t input_offset);
Tensor quantize(TensorView x, float input_scale, std::int32_t input_offset);

// Per-tensor asymmetric activation parameters covering [min, max] of the samples (min <= 0 <=
// max is enforced so zero is representable).
struct ActivationQuant {
  float scale = 1.f;
  std::int32_t offset = 0;
};
ActivationQuant calibrate_activation(TensorView samples);

// Builds W8A8 parameters from a float weight [out, in] and optional float bias [1, out]:
// per-channel symmetric weights (scale = max|W[c,:]| / 127), deq_scale = act.scale·w_scale,
// quant_bias = round(bias / deq_scale) − act.offset·Σ_k Wq[c, k].
W8A8Params make_w8a8_params(TensorView weight, TensorView bias, ActivationQuant act);

// Exact integer reference: y[n, c] = (Σ q·W + quant_bias[c]·add_quant_bias) · deq_scale[c],
// accumulated in int64, written in y's float dtype.
void w8a8_reference(TensorView q, const W8A8Params& p, bool add_quant_bias, TensorView y);

}  // namespace tpl
