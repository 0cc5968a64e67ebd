// bf16 GEMM computed in f32, for CPUs where no native bf16 kernel exists (oneDNN 2.6 has none
// below AVX-512). bf16 -> f32 is exact, so the products are the ones a native bf16 kernel with
// f32 accumulation forms; only the order of the f32 sums may differ.
#pragma once

#include <functional>
#include <memory>

#include "tpl/gemm.h"

namespace tpl {

using GemmFactory =
    std::function<std::unique_ptr<Gemm>(const GemmDesc&, TensorView weight, TensorView bias)>;

// desc: bf16 x bf16 -> bf16 or f32. The weight is widened once into an f32 copy held by the
// inner f32 GEMM that `make_f32` plans (so the weight costs 4 bytes per element, twice its bf16
// size). Each run widens x into an f32 scratch, runs the inner GEMM (bias added in f32 there)
// and, for a bf16 output, rounds the f32 result to nearest even once. name() is
// "bf16_via_f32:<inner name>".
std::unique_ptr<Gemm> make_bf16_via_f32_gemm(const GemmDesc& desc, TensorView weight,
                                             TensorView bias, const GemmFactory& make_f32);

}  // namespace tpl
