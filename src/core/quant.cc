#include "tpl/quant.h"

#include <algorithm>
#include <cmath>

#include "tpl/error.h"

namespace tpl {

namespace {
const Where kWhere{"w8a8"};
}

std::int8_t quantize_value(float x, float inv_scale, std::int32_t offset) {
  // The offset is added before rounding, as the formula says: with an odd offset a tie of
  // x / scale would otherwise round to the other neighbour.
  const float v = std::nearbyint(x * inv_scale + static_cast<float>(offset));
  return static_cast<std::int8_t>(std::clamp(v, -128.f, 127.f));
}

void quantize_into(TensorView x, TensorView q, float input_scale, std::int32_t input_offset) {
  TPL_CHECK(q.dtype() == DType::kI8 && q.rows() == x.rows() && q.cols() == x.cols(), kWhere,
            "quantize ", x.describe(), " into ", q.describe());
  TPL_CHECK_GT(input_scale, 0.f, kWhere, "input_scale must be positive");
  // Multiply by the reciprocal, as the seed's kernel does (§5.4).
  const float inv = 1.f / input_scale;
  for (std::int64_t r = 0; r < x.rows(); ++r) {
    auto* out = static_cast<std::int8_t*>(q.at(r, 0));
    if (x.dtype() == DType::kF32) {
      const auto* in = static_cast<const float*>(x.at(r, 0));
      for (std::int64_t c = 0; c < x.cols(); ++c) out[c] = quantize_value(in[c], inv, input_offset);
    } else {
      for (std::int64_t c = 0; c < x.cols(); ++c)
        out[c] = quantize_value(get_f32(x, r, c), inv, input_offset);
    }
  }
}

Tensor quantize(TensorView x, float input_scale, std::int32_t input_offset) {
  Tensor q(DType::kI8, x.rows(), x.cols());
  quantize_into(x, q, input_scale, input_offset);
  return q;
}

ActivationQuant calibrate_activation(TensorView samples) {
  float lo = 0.f, hi = 0.f;
  for (std::int64_t r = 0; r < samples.rows(); ++r)
    for (std::int64_t c = 0; c < samples.cols(); ++c) {
      const float v = get_f32(samples, r, c);
      lo = std::min(lo, v);
      hi = std::max(hi, v);
    }
  ActivationQuant a;
  a.scale = hi > lo ? (hi - lo) / 255.f : 1.f;
  // x = (q - offset)·scale with q in [-128, 127]: lo maps to -128.
  a.offset =
      static_cast<std::int32_t>(std::clamp(std::nearbyint(-128.f - lo / a.scale), -128.f, 127.f));
  return a;
}

W8A8Params make_w8a8_params(TensorView weight, TensorView bias, ActivationQuant act) {
  TPL_CHECK_GT(act.scale, 0.f, kWhere, "activation scale must be positive");
  TPL_CHECK(act.offset >= -128 && act.offset <= 127, kWhere, "offset ", act.offset, " not int8");
  const std::int64_t out = weight.rows(), in = weight.cols();
  TPL_CHECK(bias.empty() || (bias.rows() == 1 && bias.cols() == out), kWhere, "bias shape");
  W8A8Params p;
  p.weight = Tensor(DType::kI8, out, in);
  p.deq_scale = Tensor(DType::kF32, 1, out);
  p.quant_bias = Tensor(DType::kI32, 1, out);
  p.input_scale = act.scale;
  p.input_offset = act.offset;
  for (std::int64_t c = 0; c < out; ++c) {
    float amax = 0.f;
    for (std::int64_t k = 0; k < in; ++k) amax = std::max(amax, std::fabs(get_f32(weight, c, k)));
    const float ws = amax > 0 ? amax / 127.f : 1.f;
    std::int64_t wsum = 0;
    auto* wq = static_cast<std::int8_t*>(p.weight.view().at(c, 0));
    for (std::int64_t k = 0; k < in; ++k) {
      wq[k] = quantize_value(get_f32(weight, c, k), 1.f / ws, 0);
      wsum += wq[k];
    }
    const float deq = act.scale * ws;
    p.deq_scale.ptr<float>()[c] = deq;
    const double b = bias.empty() ? 0.0 : get_f32(bias, 0, c);
    p.quant_bias.ptr<std::int32_t>()[c] =
        static_cast<std::int32_t>(std::nearbyint(b / deq) - static_cast<double>(act.offset) * wsum);
  }
  return p;
}

void w8a8_reference(TensorView q, const W8A8Params& p, bool add_quant_bias, TensorView y) {
  TPL_CHECK(q.dtype() == DType::kI8 && q.cols() == p.weight.cols() && y.rows() == q.rows() &&
                y.cols() == p.weight.rows(),
            kWhere, "reference shapes q ", q.describe(), " W ", p.weight.view().describe(), " y ",
            y.describe());
  for (std::int64_t n = 0; n < q.rows(); ++n) {
    const auto* qr = static_cast<const std::int8_t*>(q.at(n, 0));
    for (std::int64_t c = 0; c < p.weight.rows(); ++c) {
      const auto* wr = static_cast<const std::int8_t*>(p.weight.view().at(c, 0));
      std::int64_t acc = 0;
      for (std::int64_t k = 0; k < q.cols(); ++k) acc += static_cast<std::int64_t>(qr[k]) * wr[k];
      if (add_quant_bias) acc += p.quant_bias.ptr<std::int32_t>()[c];
      set_f32(y, n, c, static_cast<float>(acc) * p.deq_scale.ptr<float>()[c]);
    }
  }
}

}  // namespace tpl
